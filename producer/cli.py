"""``agentfleet``: the command line for the producer API."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import httpx

from producer.client import ApiError, Client


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
    if data.get("result") is not None:
        print(f"result    {data['result']}")
    if data.get("error"):
        print(f"error     {data['error']['code']}: {data['error']['message']}")


def _cmd_run(client: Client, args: argparse.Namespace) -> int:
    accepted = client.create_run(
        args.input,
        model=args.model,
        providers=args.provider,
        tools=args.tool,
        max_steps=args.max_steps,
    )
    if not args.wait:
        if args.json:
            print(accepted.model_dump_json(indent=2))
        else:
            print(f"{accepted.id}  queued  (agentfleet status {accepted.id})")
        return 0
    run = client.wait(accepted.id, timeout=args.timeout)
    _print_run(run, args.json)
    return 0 if run.status == "succeeded" else 1


def _cmd_status(client: Client, args: argparse.Namespace) -> int:
    _print_run(client.get_run(args.id), args.json)
    return 0


def _cmd_tools(client: Client, args: argparse.Namespace) -> int:
    tools = client.tools()
    if args.json:
        print(json.dumps([t.model_dump() for t in tools], indent=2))
        return 0
    width = max((len(t.name) for t in tools), default=0)
    for t in tools:
        params = ", ".join(t.parameters.get("properties", {}))
        print(f"{t.name:<{width}}  ({params})  {t.description.splitlines()[0]}")
    return 0


def _cmd_providers(client: Client, args: argparse.Namespace) -> int:
    providers = client.providers()
    if args.json:
        print(json.dumps([p.model_dump() for p in providers], indent=2))
        return 0
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
    return 0


def _cmd_tool_call(client: Client, args: argparse.Namespace) -> int:
    accepted = client.create_tool_call(args.name, json.loads(args.arguments), call_id=args.id)
    call = client.wait_tool_call(accepted.id, timeout=args.timeout)
    print(call.model_dump_json(indent=2))
    return 0 if call.status == "succeeded" else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentfleet", description="Enqueue LLM agent runs and tool calls, and follow them."
    )
    parser.add_argument("--api", help="API URL (default: $AGENTFLEET_API_URL or :8000)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="enqueue an agent run")
    run.add_argument("input", help="the prompt")
    run.add_argument("--wait", action="store_true", help="wait for the result")
    run.add_argument("--model", help="model, provider:model, or an alias")
    run.add_argument("--provider", action="append", help="provider chain, in order (repeatable)")
    run.add_argument("--tool", action="append", help="allow this tool (repeatable)")
    run.add_argument("--max-steps", type=int)
    run.add_argument("--timeout", type=float, default=300.0, help="seconds to wait")
    run.set_defaults(func=_cmd_run)

    status = sub.add_parser("status", help="show a run")
    status.add_argument("id")
    status.set_defaults(func=_cmd_status)

    tools = sub.add_parser("tools", help="list the registered tools")
    tools.set_defaults(func=_cmd_tools)

    providers = sub.add_parser("providers", help="breaker and rate-limit state per provider")
    providers.set_defaults(func=_cmd_providers)

    call = sub.add_parser("tool-call", help="run one tool and wait for its result")
    call.add_argument("name")
    call.add_argument("arguments", nargs="?", default="{}", help="JSON object")
    call.add_argument("--id", help="idempotency ID: the same ID runs the tool once")
    call.add_argument("--timeout", type=float, default=120.0)
    call.set_defaults(func=_cmd_tool_call)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with Client(args.api) as client:
            code: int = args.func(client, args)
            return code
    except ApiError as exc:
        print(f"agentfleet: {exc}", file=sys.stderr)
        return 2
    except httpx.HTTPError as exc:
        print(f"agentfleet: cannot reach the API: {exc}", file=sys.stderr)
        return 3
    except TimeoutError as exc:
        print(f"agentfleet: {exc}", file=sys.stderr)
        return 4


if __name__ == "__main__":
    sys.exit(main())
