"""``agentfleet``: the command line for the producer API.

Exit codes (docs/api.md, "Python client and CLI", lists them too): 0 done, and the run,
tool call or batch succeeded; 1 it finished without succeeding; 2 refused: the API answered
with an error, or the command line or a setting is invalid; 3 the API (for ``keys``, Redis)
cannot be reached; 4 ``--wait`` timed out; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentfleet.client import (
    ApiError,
    Client,
    Decision,
    ProtocolError,
    Run,
    RunFilters,
    Unreachable,
    WaitTimeout,
)
from agentfleet.producer.since import parse_since

if TYPE_CHECKING:  # the keys command alone needs them; the rest stays a thin HTTP client
    import redis

    from agentfleet.tasks.settings import Settings

EXIT_OK = 0
EXIT_NOT_SUCCEEDED = 1
EXIT_REFUSED = 2
EXIT_UNREACHABLE = 3
EXIT_TIMEOUT = 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


def _fail(code: int, message: str) -> int:
    """Print ``agentfleet: message`` as one line on stderr; return ``code``."""
    print(f"agentfleet: {' '.join(message.split())}", file=sys.stderr)
    return code


def _print_run(run: object, as_json: bool) -> None:
    data = run.model_dump() if hasattr(run, "model_dump") else run
    if as_json:
        print(json.dumps(data, indent=2))
        return
    assert isinstance(data, dict)
    progress, usage = data["progress"], data["usage"]
    print(f"run       {data['id']}")
    print(f"status    {data['status']}")
    print(
        f"progress  step {progress['step']}/{progress['max_steps']}, "
        f"tool calls {progress['tool_calls_done']}/{progress['tool_calls_total']}"
    )
    print(
        f"usage     {usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion "
        f"tokens in {usage['llm_calls']} LLM calls"
    )
    if data.get("agent"):
        print(f"agent     {data['agent']}")
    result = data.get("result")
    if result is not None:
        # A typed run's result is a JSON value: printed as JSON, not as Python.
        print(f"result    {result if isinstance(result, str) else json.dumps(result)}")
    elif data.get("result_text") is not None:
        print(f"answer    {data['result_text']}")
    if data.get("error"):
        print(f"error     {data['error']['code']}: {data['error']['message']}")
    waiting = data.get("waiting") or {}
    if data["status"] == "waiting":
        print(f"waiting   {waiting.get('reason')}: {waiting.get('detail')}")
        for call in waiting.get("pending") or []:
            what = call.get("question") or call.get("arguments")
            print(f"  {call['id']}  {call['kind']}  {call['name']}  {what}")


def _json_value(text: str) -> Any:
    """A ``--set`` value: JSON if it parses (``0.2``, ``true``, ``["a"]``), else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _run_input(args: argparse.Namespace) -> str | dict[str, Any]:
    """The run's input: the text, or with ``--input-json`` the JSON object it holds."""
    if not args.input_json:
        return str(args.input)
    value = json.loads(args.input)
    if not isinstance(value, dict):
        raise ValueError("--input-json takes a JSON object")
    return value


def _cmd_run(client: Client, args: argparse.Namespace) -> int:
    settings = {}
    for item in args.set or []:
        name, sep, value = item.partition("=")
        if not sep:
            return _fail(EXIT_REFUSED, f"--set takes NAME=VALUE, got {item!r}")
        settings[name] = _json_value(value)
    try:
        run_input = _run_input(args)
        schema = json.loads(Path(args.output_schema).read_text()) if args.output_schema else None
    except (OSError, ValueError) as exc:
        return _fail(EXIT_REFUSED, str(exc))
    accepted = client.create_run(
        run_input,
        agent=args.agent,
        model=args.model,
        providers=args.provider,
        tools=args.tool,
        max_steps=args.max_steps,
        model_settings=settings or None,
        output_schema=schema,
        stream=args.watch,
    )
    if args.watch:
        return _watch(client, accepted.id, args.json)
    if not args.wait:
        if args.json:
            print(accepted.model_dump_json(indent=2))
        else:
            print(f"{accepted.id}  queued  (agentfleet status {accepted.id})")
        return EXIT_OK
    run = client.wait(accepted.id, timeout=args.timeout)
    _print_run(run, args.json)
    return EXIT_OK if run.status == "succeeded" else EXIT_NOT_SUCCEEDED


def _watch(client: Client, run_id: str, as_json: bool) -> int:
    """Follow a run's events live: one line per event with the run's progress so far, and
    streamed tokens as they come."""
    status = "running"
    tokens = False
    progress = _Progress()
    for event in client.events(run_id):
        progress.update(event.type, event.data)
        if as_json:
            print(json.dumps({"id": event.id, "type": event.type, "data": event.data}), flush=True)
        elif event.type == "token":
            print(event.data.get("text", ""), end="", flush=True)
            tokens = True
        else:
            if tokens:
                print()
                tokens = False
            line = f"{progress.bar()}  {event.type:<18} {_describe(event.type, event.data)}"
            print(line.rstrip(), flush=True)
        if event.type in ("succeeded", "failed", "cancelled"):
            status = event.type
    return EXIT_OK if status == "succeeded" else EXIT_NOT_SUCCEEDED


class _Progress:
    """Step of max, tool calls done of asked, tokens: what the events so far add up to."""

    def __init__(self) -> None:
        self.step = self.max_steps = self.tools_done = self.tools_total = self.tokens = 0

    def update(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "queued":
            self.max_steps = int(data.get("max_steps") or 0)
        elif kind == "llm_call_started":
            self.step = int(data.get("step") or 0)
        elif kind == "llm_call_finished":
            self.tools_total += int(data.get("tool_calls") or 0)
            self.tokens += int(data.get("prompt_tokens") or 0)
            self.tokens += int(data.get("completion_tokens") or 0)
        elif kind == "tool_call_finished":
            self.tools_done += 1

    def bar(self) -> str:
        return (
            f"[step {self.step}/{self.max_steps} | tools {self.tools_done}/{self.tools_total} | "
            f"{self.tokens} tokens]"
        )


def _describe(kind: str, data: dict[str, object]) -> str:
    if kind == "llm_call_finished":
        return (
            f"step {data.get('step')}: {data.get('provider')} answered, "
            f"{data.get('prompt_tokens')}+{data.get('completion_tokens')} tokens, "
            f"{data.get('tool_calls')} tool calls"
        )
    if kind in ("tool_call_started", "tool_call_finished"):
        ok = "" if kind == "tool_call_started" else (" ok" if data.get("ok") else " error")
        return f"step {data.get('step')}: {data.get('name')} ({data.get('id')}){ok}"
    shown = {k: v for k, v in data.items() if k != "run_id"}
    return ", ".join(f"{k}={v}" for k, v in shown.items())


def _cmd_watch(client: Client, args: argparse.Namespace) -> int:
    return _watch(client, args.id, args.json)


def _cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    _print_run(client.cancel(args.id), args.json)
    return EXIT_OK


def _cmd_batch(client: Client, args: argparse.Namespace) -> int:
    if args.action == "submit":
        accepted = client.create_batch_from_jsonl(args.target)
        print(f"{accepted.id}  queued  (agentfleet batch status {accepted.id})")
        if not args.wait:
            return EXIT_OK
        batch = client.wait_batch(accepted.id, timeout=args.timeout)
    elif args.action == "cancel":
        batch = client.cancel_batch(args.target)
    else:
        batch = client.get_batch(args.target, limit=0 if not args.json else 100)
    if args.json:
        print(batch.model_dump_json(indent=2))
    else:
        counts = batch.counts
        print(
            f"batch {batch.id}  {batch.status}  {batch.completed}/{batch.total} done: "
            f"{counts.succeeded} succeeded, {counts.failed} failed, {counts.cancelled} cancelled"
        )
    return EXIT_OK if batch.counts.failed == 0 else EXIT_NOT_SUCCEEDED


def _cmd_keys(_: Client | None, args: argparse.Namespace) -> int:
    import redis

    from agentfleet.tasks.redisconn import get_redis
    from agentfleet.tasks.settings import get_settings

    try:
        settings = get_settings()
    except ValueError as exc:  # pydantic's ValidationError and pydantic-settings' SettingsError
        return _fail(EXIT_REFUSED, _settings_problem(exc))
    try:
        connection = get_redis(settings)
    except ValueError as exc:
        return _fail(EXIT_REFUSED, f"invalid setting AGENTFLEET_REDIS_URL: {exc}")
    try:
        return _keys(connection, settings, args)
    except redis.RedisError as exc:
        return _fail(EXIT_UNREACHABLE, f"cannot reach Redis: {exc}")
    except ValueError as exc:  # a tenant name that is not allowed
        return _fail(EXIT_REFUSED, str(exc))


def _keys(connection: redis.Redis, settings: Settings, args: argparse.Namespace) -> int:
    from agentfleet.producer.auth import create_key, list_keys, revoke_key

    if args.action == "create":
        print(create_key(connection, settings, args.tenant))
        print(f"(tenant {args.tenant}; shown once, stored hashed)", file=sys.stderr)
    elif args.action == "revoke":
        if not args.key:
            return _fail(EXIT_REFUSED, "keys revoke needs --key")
        if not revoke_key(connection, settings, args.key):
            return _fail(EXIT_REFUSED, "no such key")
    else:
        for digest, tenant in sorted(list_keys(connection, settings).items()):
            print(f"{digest}  {tenant}")
    return EXIT_OK


def _settings_problem(exc: ValueError) -> str:
    """A settings error in one line that names the variables."""
    from pydantic import ValidationError

    from agentfleet.tasks.settings import GROUPS

    if not isinstance(exc, ValidationError):
        return f"invalid settings: {exc}"
    problems = []
    for error in exc.errors():
        # A field's location starts with its group, which its variable does not name.
        loc = error["loc"][1:] if error["loc"][:1] and error["loc"][0] in GROUPS else error["loc"]
        if not loc:  # a rule across settings (e.g. the time-limit arithmetic)
            problems.append(f"invalid settings: {error['msg']}")
            continue
        field, *rest = loc
        name = f"AGENTFLEET_{str(field).upper()}" + "".join(f"[{part}]" for part in rest)
        problems.append(f"invalid setting {name}: {error['msg']}")
    return "; ".join(problems)


def _since(text: str) -> datetime:
    """``30m``, ``1h``, ``7d`` ago, or an ISO 8601 time."""
    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_runs(client: Client, args: argparse.Namespace) -> int:
    filters: RunFilters = {}
    for name in ("status", "agent", "thread_id", "error_code"):
        if getattr(args, name):
            filters[name] = getattr(args, name)
    if args.since:
        filters["created_after"] = args.since
    if args.meta:
        filters["metadata"] = dict(pair.partition("=")[::2] for pair in args.meta)
    runs: list[Run] = []
    cursor: str | None = None
    while len(runs) < args.limit:
        page = client.list_runs(limit=min(args.limit - len(runs), 100), cursor=cursor, **filters)
        runs += page.runs
        cursor = page.next_cursor
        if cursor is None:
            break
    if args.json:
        print(json.dumps([r.model_dump(mode="json") for r in runs], indent=2))
        return EXIT_OK
    for r in runs:
        error = f"  {r.error.code}" if r.error else ""
        who = r.agent or r.model or ""
        print(f"{r.id}  {r.created_at or '':<29}  {r.status:<9}  {who}{error}")
    return EXIT_OK


def _cmd_pending(client: Client, args: argparse.Namespace) -> int:
    runs = client.pending(args.limit)
    if args.json:
        print(json.dumps([r.model_dump(mode="json") for r in runs], indent=2))
        return EXIT_OK
    for r in runs:
        waiting = r.waiting
        print(f"{r.id}  {r.created_at or '':<29}  {r.agent or r.model or ''}")
        for call in (waiting.pending or []) if waiting else []:
            what = f"asks: {call.question}" if call.kind == "input" else call.arguments
            until = f"  (until {waiting.timeout_at})" if waiting and waiting.timeout_at else ""
            decided = f"  [{call.decision}]" if call.decision else ""
            print(f"  {call.id}  {call.kind:<8}  {call.name}  {what}{until}{decided}")
    return EXIT_OK


def _undecided(client: Client, run_id: str, kind: str) -> list[str]:
    """The IDs of the run's calls of ``kind`` still waiting for a decision."""
    waiting = client.get_run(run_id).waiting
    pending = waiting.pending or [] if waiting else []
    return [c.id for c in pending if c.kind == kind and c.decision is None]


def _cmd_decide(client: Client, args: argparse.Namespace) -> int:
    approve = args.command == "approve"
    call_ids = args.call_ids or _undecided(client, args.id, "approval")
    if args.arguments is not None and (not approve or len(call_ids) != 1):
        return _fail(EXIT_REFUSED, "--arguments edits one approved call: name its CALL_ID")
    decisions: list[Decision] = []
    for call_id in call_ids:
        decision = Decision(call_id=call_id, approve=approve)
        if args.arguments is not None:
            decision["arguments"] = args.arguments
        if args.message:
            decision["message"] = args.message
        decisions.append(decision)
    if not decisions:
        return _fail(EXIT_REFUSED, f"run {args.id} waits for no approval")
    _print_run(client.decide(args.id, decisions), args.json)
    return EXIT_OK


def _cmd_answer(client: Client, args: argparse.Namespace) -> int:
    _print_run(client.answer(args.id, args.text, call_id=args.call_id), args.json)
    return EXIT_OK


def _json_object(text: str) -> dict[str, Any]:
    value = _json_value(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _cmd_status(client: Client, args: argparse.Namespace) -> int:
    _print_run(client.get_run(args.id), args.json)
    return EXIT_OK


def _cmd_tools(client: Client, args: argparse.Namespace) -> int:
    tools = client.tools()
    if args.json:
        print(json.dumps([t.model_dump() for t in tools], indent=2))
        return EXIT_OK
    width = max((len(t.name) for t in tools), default=0)
    for t in tools:
        params = ", ".join(t.parameters.get("properties", {}))
        summary = (t.description.splitlines() or [""])[0]
        print(f"{t.name:<{width}}  ({params})  {summary}")
        for mismatch in t.mismatches:
            print(f"{'':<{width}}  ! {mismatch}")
    return EXIT_OK


def _cmd_agents(client: Client, args: argparse.Namespace) -> int:
    agents = client.agents()
    if args.json:
        print(json.dumps([a.model_dump() for a in agents], indent=2))
        return EXIT_OK
    width = max((len(a.name) for a in agents), default=0)
    for a in agents:
        output = "typed" if a.output_schema else "text"
        tools = ", ".join(a.tools) if a.tools is not None else "every tool"
        print(f"{a.name:<{width}}  {output:<5}  tools: {tools or 'none'}  {a.description}".rstrip())
        for mismatch in a.mismatches:
            print(f"{'':<{width}}  ! {mismatch}")
    return EXIT_OK


def _cmd_providers(client: Client, args: argparse.Namespace) -> int:
    providers = client.providers()
    if args.json:
        print(json.dumps([p.model_dump() for p in providers], indent=2))
        return EXIT_OK
    print(
        f"{'provider':<12}{'state':<11}{'failures':<10}{'half-open in':<14}{'held':<8}"
        f"{'rpm fill':<10}tpm fill"
    )
    for p in providers:
        rpm = f"{p.rpm.fill:.0%}" if p.rpm else "-"
        tpm = f"{p.tpm.fill:.0%}" if p.tpm else "-"
        half_open = f"{p.seconds_to_half_open:.1f}s" if p.state == "open" else "-"
        held = f"{p.held_for_seconds:.1f}s" if p.held_for_seconds else "-"
        print(
            f"{p.name:<12}{p.state:<11}{f'{p.failures}/{p.fail_max}':<10}{half_open:<14}"
            f"{held:<8}{rpm:<10}{tpm}"
        )
    return EXIT_OK


def _cmd_tool_call(client: Client, args: argparse.Namespace) -> int:
    accepted = client.create_tool_call(args.name, json.loads(args.arguments), call_id=args.id)
    call = client.wait_tool_call(accepted.id, timeout=args.timeout)
    print(call.model_dump_json(indent=2))
    return EXIT_OK if call.status == "succeeded" else EXIT_NOT_SUCCEEDED


def _global_options() -> argparse.ArgumentParser:
    """``--api``, ``--api-key`` and ``--json``, taken before or after the subcommand.

    No defaults here (the main parser sets them): a subcommand's defaults would overwrite
    what was given before it.
    """
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--api", default=argparse.SUPPRESS, help="API URL (default: $AGENTFLEET_API_URL or :8000)"
    )
    options.add_argument(
        "--api-key", default=argparse.SUPPRESS, help="API key (default: $AGENTFLEET_API_KEY)"
    )
    options.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON"
    )
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentfleet",
        description="Enqueue LLM agent runs and tool calls, and follow them.",
        epilog="exit codes: 0 succeeded, 1 finished without succeeding, 2 refused (the API "
        "said no, or bad arguments or settings), 3 cannot reach the API (or Redis), "
        "4 timed out, 130 interrupted",
        parents=[_global_options()],
    )
    parser.set_defaults(api=None, api_key=None, json=False)
    sub = parser.add_subparsers(dest="command", required=True)
    common = [_global_options()]

    run = sub.add_parser("run", parents=common, help="enqueue an agent run")
    run.add_argument("input", help="the prompt (with --input-json: a JSON object)")
    run.add_argument("--agent", help="run this declared agent (agentfleet agents)")
    run.add_argument(
        "--input-json", action="store_true", help="the input is a JSON object (an agent's)"
    )
    run.add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        help="a model setting, e.g. temperature=0.2 (repeatable)",
    )
    run.add_argument("--output-schema", metavar="FILE", help="a JSON schema the answer must match")
    run.add_argument("--wait", action="store_true", help="wait for the result")
    run.add_argument("--model", help="model, provider:model, or an alias")
    run.add_argument("--provider", action="append", help="provider chain, in order (repeatable)")
    run.add_argument("--tool", action="append", help="allow this tool (repeatable)")
    run.add_argument("--max-steps", type=int)
    run.add_argument("--timeout", type=float, default=300.0, help="seconds to wait")
    run.add_argument("--watch", action="store_true", help="stream the run's events live")
    run.set_defaults(func=_cmd_run)

    watch = sub.add_parser("watch", parents=common, help="follow a run's events live")
    watch.add_argument("id")
    watch.set_defaults(func=_cmd_watch)

    cancel = sub.add_parser("cancel", parents=common, help="cancel a run")
    cancel.add_argument("id")
    cancel.set_defaults(func=_cmd_cancel)

    batch = sub.add_parser(
        "batch", parents=common, help="submit a batch from JSONL, or show or cancel one"
    )
    batch.add_argument("action", choices=("submit", "status", "cancel"))
    batch.add_argument("target", help="a JSONL file (submit) or a batch ID")
    batch.add_argument("--wait", action="store_true", help="wait until every item is final")
    batch.add_argument("--timeout", type=float, default=3600.0)
    batch.set_defaults(func=_cmd_batch)

    keys = sub.add_parser("keys", parents=common, help="manage API keys (talks to Redis directly)")
    keys.add_argument("action", choices=("create", "list", "revoke"))
    keys.add_argument("--tenant", default="default", help="tenant of a new key")
    keys.add_argument("--key", help="the key (or its SHA-256) to revoke")
    keys.set_defaults(func=_cmd_keys, offline=True)

    runs = sub.add_parser("runs", parents=common, help="list runs, newest first")
    runs.add_argument(
        "--status", choices=("queued", "running", "waiting", "succeeded", "failed", "cancelled")
    )
    runs.add_argument("--agent")
    runs.add_argument("--thread", dest="thread_id")
    runs.add_argument("--error", dest="error_code", help="an error code, e.g. budget_exceeded")
    runs.add_argument("--since", type=_since, help="created since: 30m, 1h, 7d, or a time")
    runs.add_argument("--meta", action="append", metavar="KEY=VALUE", help="(repeatable)")
    runs.add_argument("--limit", type=int, default=20, help="runs to list (default 20)")
    runs.set_defaults(func=_cmd_runs)

    pending = sub.add_parser("pending", parents=common, help="list runs waiting for a person")
    pending.add_argument("--limit", type=int, default=100)
    pending.set_defaults(func=_cmd_pending)
    for verb, text in (("approve", "approve"), ("deny", "deny")):
        decide = sub.add_parser(
            verb, parents=common, help=f"{text} tool calls a run waits for (default: all)"
        )
        decide.add_argument("id", metavar="RUN_ID")
        decide.add_argument("call_ids", metavar="CALL_ID", nargs="*")
        decide.add_argument("--message", help="shown to the model with the decision")
        if verb == "approve":
            decide.add_argument(
                "--arguments", type=_json_object, help="run the call with this JSON object"
            )
        decide.set_defaults(func=_cmd_decide, arguments=None)
    answer = sub.add_parser("answer", parents=common, help="answer a question a run asked")
    answer.add_argument("id", metavar="RUN_ID")
    answer.add_argument("text")
    answer.add_argument("--call-id", help="which question, if the run asked several")
    answer.set_defaults(func=_cmd_answer)

    status = sub.add_parser("status", parents=common, help="show a run")
    status.add_argument("id")
    status.set_defaults(func=_cmd_status)

    tools = sub.add_parser("tools", parents=common, help="list the registered tools")
    tools.set_defaults(func=_cmd_tools)

    agents = sub.add_parser("agents", parents=common, help="list the declared agents")
    agents.set_defaults(func=_cmd_agents)

    providers = sub.add_parser(
        "providers", parents=common, help="breaker and rate-limit state per provider"
    )
    providers.set_defaults(func=_cmd_providers)

    call = sub.add_parser("tool-call", parents=common, help="run one tool and wait for its result")
    call.add_argument("name")
    call.add_argument("arguments", nargs="?", default="{}", help="JSON object")
    call.add_argument("--id", help="idempotency ID: the same ID runs the tool once")
    call.add_argument("--timeout", type=float, default=120.0)
    call.set_defaults(func=_cmd_tool_call)
    return parser


def _warn_unknown_variables() -> None:
    """Name each unknown ``AGENTFLEET_*`` variable (a typo) on stderr; the command still runs."""
    from pydantic import ValidationError

    from agentfleet.tasks.settings import get_settings, unknown_variables

    try:
        settings: Settings | None = get_settings()
    except (ValidationError, OSError):  # OSError: an unreadable providers file
        settings = None  # the commands that need settings say what is wrong with them
    for variable in unknown_variables(os.environ, settings):
        print(f"agentfleet: warning: {variable.message()}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    args = build_parser().parse_args(argv)
    _warn_unknown_variables()
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        return _fail(EXIT_INTERRUPTED, "interrupted")
    except ApiError as exc:
        return _fail(EXIT_REFUSED, str(exc))
    except Unreachable as exc:
        return _fail(EXIT_UNREACHABLE, f"cannot reach the API: {exc}")
    except ProtocolError as exc:  # something else answers at that URL
        return _fail(EXIT_UNREACHABLE, f"not the agentfleet API: {exc}")
    except WaitTimeout as exc:
        return _fail(EXIT_TIMEOUT, str(exc))


def _dispatch(args: argparse.Namespace) -> int:
    if getattr(args, "offline", False):
        code: int = args.func(None, args)
        return code
    with Client(args.api, api_key=args.api_key) as client:
        code = args.func(client, args)
        return code


if __name__ == "__main__":
    sys.exit(main())
