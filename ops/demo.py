"""The demo: bring up a whole fleet offline and watch real agent runs finish.

``python -m ops.demo`` starts Redis (``REDIS_URL`` if set, else a private ``redis-server``),
the LLM simulator (unless the user's settings name a provider), one worker per pool, the API
and Flower, with ``BROKER_URL`` as the broker if set (e.g. a RabbitMQ vhost); enqueues several
agent runs (one with parallel tool calls), a single tool call, a small batch, a streamed run, a
typed agent by name, a thread of two runs, an agent calling a sub-agent and a run waiting for
an approval, through the HTTP API; prints each result; stops
everything. ``--serve`` keeps the fleet up afterwards so you can poll and send more.

Every process gets the user's ``AGENTFLEET_*`` settings, except those naming what the demo
runs itself (its Redis as store, broker and result backend, its simulator, API and Flower
address): the demo prints which it overrode, and the URLs a ``send_task`` caller needs.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from kombu.utils.url import maybe_sanitize_url
from pydantic import ValidationError

from agentfleet.client import Client
from agentfleet.tasks.settings import Settings, unknown_variables
from ops.stack import REPO, Stack, StackError, user_settings

RUNS = {
    "plain answer": "Say hello to the fleet.",
    "parallel tools": (
        'call calculator {"expression": "(17 + 25) * 2"} '
        'call current_time {"timezone": "Europe/Paris"} '
        'call text_stats {"text": "agents at work in a fleet"}'
    ),
    "two tool rounds": '[[rounds:2]] call wait {"seconds": 0.3}',
    "json lookup": (
        'call json_extract {"document": "{\\"fleet\\": {\\"pools\\": [\\"agents\\", '
        '\\"tools\\", \\"batch\\"]}}", "path": "fleet.pools.1"}'
    ),
}


#: A batch: an agent run, a single prompt and a single tool call, finished as one.
BATCH: list[dict[str, Any]] = [
    {"input": 'call calculator {"expression": "2 ** 8"}'},
    {"type": "prompt", "input": "Summarise the fleet in one line."},
    {
        "type": "tool_call",
        "name": "transform_text",
        "arguments": {"text": "fleet", "operation": "upper"},
    },
]


def _line(label: str, text: str) -> None:
    print(f"  {label:<16}{text}")


def _demo_batch(client: Client) -> bool:
    """A small batch of a run, a prompt and a tool call, and one run's streamed events."""
    batch = client.wait_batch(client.create_batch(BATCH).id, timeout=120)
    print(f"batch of {batch.total}: {batch.status}, {batch.counts.succeeded} succeeded")
    _line("batch id", batch.id)
    streamed = client.create_run("Tell the fleet a short story.", stream=True)
    kinds = [event.type for event in client.events(streamed.id)]
    print(f"streamed run: {kinds[-1]}")
    _line("events", f"{len(kinds)}: {', '.join(dict.fromkeys(kinds))}")
    return batch.counts.succeeded == batch.total and kinds[-1] == "succeeded"


#: The demo's own agents (added to any the user's settings load).
DEMO_AGENTS = "ops.demo_agents"


def _demo_agents(client: Client) -> bool:
    """A typed agent run by name, and a thread of two runs (the second starts with the
    first's turn)."""
    triage = client.run("The export button crashes the app!", agent="support_triage")
    print(f"typed agent support_triage: {triage.status}")
    _line("run id", triage.id)
    _line("result", json.dumps(triage.result))
    thread = f"demo-{secrets.token_hex(4)}"
    first = client.run("My name is Ada.", thread_id=thread)
    second = client.run("What is my name?", thread_id=thread)
    history = client.get_thread(thread)
    print(f"thread of 2 runs: {first.status}, {second.status}")
    _line("thread id", thread)
    roles = ", ".join(m["role"] for m in history.messages)
    _line("history", f"{history.turns} turns: {roles}")
    return triage.status == first.status == second.status == "succeeded"


#: The tickets the demo's support_lead hands to support_triage, one child run each.
TICKETS = ["The export button crashes the app!", "How do I invite a colleague?"]


def _demo_people_and_children(client: Client) -> bool:
    """An agent calling a sub-agent (child runs), and a tool call a person approves."""
    calls = " ".join(f"call support_triage {json.dumps({'input': t})}" for t in TICKETS)
    lead = client.get_run(client.run(calls, agent="support_lead").id)
    usage = lead.tree_usage or lead.usage
    print(f"agent with sub-agents support_lead: {lead.status}")
    _line("run id", lead.id)
    _line("child runs", f"{len(lead.children or [])}: {', '.join(lead.children or [])}")
    _line("tree usage", f"{usage.total_tokens} tokens in {usage.llm_calls} LLM calls")
    prompt = 'call transform_text {"text": "refund order A-17", "operation": "upper"}'
    waiting = client.create_run(prompt, approval_required=["transform_text"])
    run = client.wait(waiting.id, timeout=60, until_waiting=True)
    pending = run.waiting.pending if run.waiting and run.waiting.pending else []
    print(f"run waiting for approval: {run.status} ({len(pending)} call)")
    _line("run id", run.id)
    for call in pending:
        _line("pending", f"{call.name} {call.arguments}")
        client.approve(run.id, call.id, message="approved by the demo")
    done = client.wait(run.id, timeout=60)
    _line("after approval", f"{done.status}: {done.result}")
    return lead.status == done.status == "succeeded" and len(lead.children or []) == 2


def run_demo(client: Client, api_url: str, api_key: str) -> bool:
    accepted = {name: client.create_run(prompt) for name, prompt in RUNS.items()}
    tool_call = client.create_tool_call("calculator", {"expression": "2 ** 10"})
    print(f"enqueued {len(accepted)} agent runs and 1 tool call; waiting for them ...\n")
    ok = True
    for name, acc in accepted.items():
        run = client.wait(acc.id, timeout=120)
        ok &= run.status == "succeeded"
        print(f"{name}: {run.status}")
        _line("run id", run.id)
        _line(
            "steps",
            f"{run.progress.step}/{run.progress.max_steps}, tool calls "
            f"{run.progress.tool_calls_done}/{run.progress.tool_calls_total}",
        )
        _line("usage", f"{run.usage.total_tokens} tokens in {run.usage.llm_calls} LLM calls")
        _line("result", str(run.result if run.error is None else run.error.message))
    call = client.wait_tool_call(tool_call.id, timeout=60)
    ok &= call.status == "succeeded"
    print(f"single tool call: {call.status}")
    _line("call id", call.id)
    _line("result", str(call.result))
    ok &= _demo_batch(client)
    ok &= _demo_agents(client)
    ok &= _demo_people_and_children(client)
    first = next(iter(accepted.values())).id
    print("\npoll a run by ID (while the fleet is up: `make serve` keeps it running):")
    print(f"  export AGENTFLEET_API_URL={api_url} AGENTFLEET_API_KEY={api_key}")
    print(f'  curl -H "Authorization: Bearer $AGENTFLEET_API_KEY" {api_url}/v1/runs/{first}')
    print(f"  agentfleet status {first}")
    print(f"  agentfleet watch {first}")
    return ok


def start_flower(stack: Stack, settings: Settings) -> str:
    """Flower for the demo fleet (basic auth, a fresh password unless one is configured)."""
    configured = settings.flower.flower_basic_auth
    auth = configured.get_secret_value() if configured else f"admin:{secrets.token_urlsafe(9)}"
    port = (
        settings.flower.flower_port if "flower_port" in settings.flower.model_fields_set else None
    )
    url = stack.start_flower(port=port, basic_auth=auth)
    shown = "from AGENTFLEET_FLOWER_BASIC_AUTH" if configured else auth.replace(":", " / ", 1)
    return f"Flower {url}  (basic auth: {shown})"


def connection_lines(settings: Settings) -> list[str]:
    """Where the fleet's Redis is, and the broker and result backend a ``send_task`` caller
    needs (passwords masked)."""
    roles = "run store, broker and result backend"
    if settings.celery.broker_url:
        roles = "run store and result backend"
    broker, backend = maybe_sanitize_url(settings.broker), maybe_sanitize_url(settings.backend)
    return [
        f"Redis {maybe_sanitize_url(settings.redis.redis_url)}  ({roles})",
        f'send_task: Celery(broker="{broker}", backend="{backend}")',
    ]


def settings_lines(stack: Stack, settings: Settings) -> list[str]:
    """Which LLM the runs use; which of the user's settings pass through, which it overrode."""
    lines = []
    if not settings.llm.uses_simulator:
        chain = ", ".join(f"{p.name} {p.base_url}" for p in settings.llm.provider_list)
        lines.append(f"LLM providers from your settings: {chain}")
    passed = sorted(set(stack.user_env) - stack.overridden)
    if passed:
        lines.append(f"your settings pass through: {', '.join(passed)}")
    if stack.overridden:
        lines.append(f"the demo overrides: {', '.join(sorted(stack.overridden))}")
    return lines


def bring_up(stack: Stack, settings: Settings, workdir: Path) -> None:
    """Bring the demo fleet up and say where everything is."""
    simulator = settings.llm.uses_simulator
    print(
        f"starting redis, {'the LLM simulator, ' if simulator else ''}"
        "workers (agents, tools, batch), API, Flower ..."
    )
    started = time.monotonic()
    stack.start_fleet(simulator=simulator)
    nodes = stack.wait_workers(stack.celery_app(), 3)
    print(f"fleet up in {time.monotonic() - started:.1f}s: workers {', '.join(sorted(nodes))}")
    print(f"API {stack.api_url}  (OpenAPI: {stack.api_url}/docs)  logs: {workdir}")
    print(f"run explorer {stack.api_url}/ui  (sign in with the API key printed below)")
    print(start_flower(stack, settings))
    fleet = stack.settings()
    print("\n".join([*connection_lines(fleet), *settings_lines(stack, fleet)]) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.demo", description=__doc__)
    parser.add_argument("--serve", action="store_true", help="keep the fleet up afterwards")
    parser.add_argument("--workdir", type=Path, default=REPO / ".agentfleet")
    args = parser.parse_args(argv)
    user_env = user_settings(os.environ)
    agent_modules = [user_env.get("AGENTFLEET_AGENT_MODULES", ""), DEMO_AGENTS]
    stack = Stack(
        args.workdir,
        redis_url=os.environ.get("REDIS_URL"),
        broker_url=os.environ.get("BROKER_URL"),
        user_env=user_env,
        env_overrides={"AGENTFLEET_AGENT_MODULES": ",".join(filter(None, agent_modules))},
    ).__enter__()
    try:
        settings = stack.settings()
        for variable in unknown_variables(stack.user_env, settings):
            print(f"warning: {variable.message()}", file=sys.stderr)
        bring_up(stack, settings, args.workdir)
        with Client(stack.api_url, api_key=stack.api_key) as client:
            ok = run_demo(client, stack.api_url, stack.api_key)
        print("\nall runs succeeded" if ok else "\nSOME RUNS DID NOT SUCCEED")
        if args.serve:
            print(
                f"\nfleet is up; export AGENTFLEET_API_URL={stack.api_url} "
                f"AGENTFLEET_API_KEY={stack.api_key} AGENTFLEET_REDIS_URL={stack.redis_url}; "
                "Ctrl-C stops it"
            )
            while all(p.alive() for p in stack.procs):
                time.sleep(1)
        return 0 if ok else 1
    except ValidationError as exc:
        print(f"demo: your AGENTFLEET_* settings are invalid: {exc}", file=sys.stderr)
        return 2
    except StackError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
