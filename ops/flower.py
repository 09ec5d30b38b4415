"""Start Flower for the fleet with agentfleet's settings: ``python -m ops.flower``.

It runs ``celery -A agentfleet.workers flower`` (so the same app, broker and transport options as
the workers) with the ``AGENTFLEET_FLOWER_*`` settings:

- ``AGENTFLEET_FLOWER_BASIC_AUTH`` (``user:password``, comma-separated for more users) is
  handed over in Flower's environment, not on its command line where ``ps`` shows it.
  Without it Flower's UI is open to anyone who can reach it, so this launcher refuses to
  listen anywhere but on loopback without it.
- ``AGENTFLEET_FLOWER_READ_ONLY`` turns on Flower's read-only mode (Flower 2.1+): the
  control endpoints (worker shutdown, pool restart/grow/shrink/autoscale, queue consumers,
  task revoke/abort/terminate/rate-limit/timeout, task apply/async-apply/send-task) answer
  403 and the UI hides their buttons. An older Flower without it is refused rather than
  started writable.

Task arguments and results reach Flower already summarized (``workers/fixes/redact.py``).
Extra arguments are passed to Flower as they are (``python -m ops.flower --max_tasks=5000``).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from collections.abc import Sequence

from agentfleet.tasks.settings import Settings, get_settings

#: Flower's own environment variables, read by ``celery flower`` (flower/command.py).
ENV_BASIC_AUTH = "FLOWER_BASIC_AUTH"
ENV_READ_ONLY = "FLOWER_READ_ONLY"


class FlowerConfigError(RuntimeError):
    """The settings do not allow starting Flower safely."""


def _is_loopback(address: str) -> bool:
    # "" (tornado's "every interface") is not loopback.
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def supports_read_only() -> bool:
    """Whether the installed Flower has its read-only mode (added in 2.1.0)."""
    from flower.options import options

    return "read_only" in options


def command(
    settings: Settings, extra: Sequence[str] = (), python: str = sys.executable
) -> tuple[list[str], dict[str, str]]:
    """The argv and the environment additions that start Flower for ``settings``."""
    if settings.flower.flower_basic_auth is None and not _is_loopback(
        settings.flower.flower_address
    ):
        raise FlowerConfigError(
            f"refusing to serve Flower on {settings.flower.flower_address!r} without "
            "AGENTFLEET_FLOWER_BASIC_AUTH (user:password): its UI can revoke tasks and "
            "shut workers down"
        )
    if settings.flower.flower_read_only and not supports_read_only():
        raise FlowerConfigError(
            "AGENTFLEET_FLOWER_READ_ONLY needs Flower 2.1 or later (its --read_only option)"
        )
    argv = [
        python,
        "-m",
        "celery",
        "-A",
        "agentfleet.workers",
        "flower",
        f"--port={settings.flower.flower_port}",
        f"--address={settings.flower.flower_address}",
    ]
    if settings.flower.flower_purge_offline_workers:
        # Autoscaled workers come and go; without this Flower lists every one forever.
        argv.append(f"--purge_offline_workers={settings.flower.flower_purge_offline_workers}")
    env = {ENV_READ_ONLY: "true" if settings.flower.flower_read_only else "false"}
    if settings.flower.flower_basic_auth is not None:
        env[ENV_BASIC_AUTH] = settings.flower.flower_basic_auth.get_secret_value()
    return [*argv, *extra], env


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ops.flower",
        description="Start Flower for the fleet with the AGENTFLEET_FLOWER_* settings.",
    )
    parser.add_argument("--print", action="store_true", help="print the command, do not run it")
    args, extra = parser.parse_known_args(argv)
    try:
        cmd, env = command(get_settings(), extra)
    except FlowerConfigError as exc:
        print(f"flower: {exc}", file=sys.stderr)
        return 2
    if args.print:
        print(" ".join(cmd))
        return 0
    # Flower reads FLOWER_* itself; anything set in our environment is overridden by the
    # settings, which are the one source of truth.
    os.execve(cmd[0], cmd, {**os.environ, **env})  # noqa: S606 (our own argv, no shell)


if __name__ == "__main__":
    sys.exit(main())
