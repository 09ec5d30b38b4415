"""What task events, Flower and logs may show of our tasks' arguments and results."""

from __future__ import annotations

import inspect
import json
import logging
from typing import Any

import pytest
from celery import Celery

from agentfleet.tasks import names
from agentfleet.tasks.settings import Settings
from agentfleet.tasks.toolcall import tool_payload
from agentfleet.workers.factory import create_app
from agentfleet.workers.fixes.redact import describe, redact_log_record, summarize_result
from agentfleet.workers.taskargs import PARAMS, run_id_of

PROMPT = "Summarise ticket T-1234 for Alice: her card 4111 1111 1111 1111 was declined"
API_KEY = "sk-live-0123456789abcdefABCDEF"
RUN_ID = "6f1c2b8e-0d7a-4c1e-9d4b-2a0f3e5c7b91"


@pytest.fixture(scope="module")
def app() -> Celery:
    return create_app(Settings())


def test_params_match_the_registered_task_signatures(app: Celery) -> None:
    public = {v for k, v in vars(names).items() if k.isupper() and isinstance(v, str)}
    assert set(PARAMS) == public
    for name, params in PARAMS.items():
        assert tuple(inspect.signature(app.tasks[name].run).parameters) == params, name


def _message(app: Celery, name: str, args: tuple[object, ...], kwargs: dict[str, object]) -> Any:
    # The message our app would publish, with the task-sent event Celery builds with it.
    return app.amqp.create_task_message(
        "t-1", name, args, kwargs, create_sent_event=True, argsrepr="leaky", kwargsrepr="leaky"
    )


def test_run_request_is_shown_by_size_only(app: Celery) -> None:
    request = {"input": PROMPT, "metadata": {"key": API_KEY}, "max_steps": 4}
    message = _message(app, names.RUN, (), {"request": request})
    shown = json.dumps([message.headers, message.sent_event])
    assert PROMPT not in shown
    assert API_KEY not in shown
    assert "leaky" not in shown
    assert message.headers["kwargsrepr"].startswith("{request=<RunRequest ")
    assert message.sent_event["kwargs"] == message.headers["kwargsrepr"]
    assert message.headers["argsrepr"] == "{}"


def test_step_shows_run_and_step_not_tool_results(app: Celery) -> None:
    results = [{"ok": True, "output": PROMPT}, {"ok": False, "error": {"message": API_KEY}}]
    message = _message(app, names.AGENT_STEP, (results, RUN_ID, 2), {})
    assert message.headers["argsrepr"] == f"{{tool_results=<2 results>, run_id={RUN_ID}, step=2}}"
    assert message.sent_event["args"] == message.headers["argsrepr"]


def test_tool_call_shows_ids_and_tool_name_not_arguments(app: Celery) -> None:
    payload = tool_payload(
        f"{RUN_ID}-1-0",
        "lookup",
        json.dumps({"token": API_KEY, "q": PROMPT}),
        run_id=RUN_ID,
        step=1,
        model_call_id="call_abc",
        allowed=["lookup"],
    )
    argsrepr, kwargsrepr = describe(names.TOOL_CALL, (payload,), None) or ("", "")
    assert API_KEY not in argsrepr
    assert PROMPT not in argsrepr
    for visible in (f"id={RUN_ID}-1-0", "name=lookup", f"run_id={RUN_ID}", "step=1"):
        assert visible in argsrepr
    assert "arguments=<" in argsrepr
    assert "allowed=<1 tools>" in argsrepr
    assert kwargsrepr == "{}"


def test_tool_call_sent_by_name_shows_ids_not_arguments() -> None:
    request = {"id": "call-1", "name": "lookup", "arguments": {"token": API_KEY}}
    _, kwargsrepr = describe(names.TOOL_CALL, (), {"request": request}) or ("", "")
    assert kwargsrepr == "{request={id=call-1, name=lookup, arguments=<dict 43 B>}}"


def test_text_in_an_id_field_is_not_shown() -> None:
    argsrepr, _ = describe(names.TOOLS_FAILED, (PROMPT,), None) or ("", "")
    assert argsrepr == f"{{run_id=<{len(PROMPT)} chars>}}"


def test_other_tasks_keep_celerys_reprs(app: Celery) -> None:
    assert describe("celery.chord_unlock", ("x",), {}) is None
    message = _message(app, "celery.chord_unlock", ("x",), {})
    assert message.headers["argsrepr"] == "leaky"


def test_run_id_of_each_task() -> None:
    assert run_id_of(names.RUN, RUN_ID, (), {"request": None}) == RUN_ID
    assert run_id_of(names.AGENT_STEP, RUN_ID, ([], "r-2", 3), {}) == "r-2"
    assert run_id_of(names.RESUME, "x", ("r-3", 1, {}), {}) == "r-3"
    assert run_id_of(names.TOOLS_FAILED, "x", ("r-4",), {}) == "r-4"
    assert run_id_of(names.TOOL_CALL, "c", (tool_payload("c", "t", {}, run_id="r-5"),), {}) == (
        "r-5"
    )
    assert run_id_of(names.TOOL_CALL, "c", (tool_payload("c", "t", {}),), {}) is None
    sent = {"request": tool_payload("c", "t", {}, run_id="r-6")}
    assert run_id_of(names.TOOL_CALL, "c", (), sent) == "r-6"
    assert run_id_of("celery.chord_unlock", "x", (), {}) is None


def test_result_events_and_log_lines_show_the_size_only() -> None:
    shown = repr({"result": f"Echo: {PROMPT}"})
    assert summarize_result(shown) == f"<result {len(shown.encode())} B>"
    record = logging.LogRecord(
        "celery.app.trace",
        logging.INFO,
        __file__,
        1,
        "Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s",
        None,
        None,
    )
    record.args = {"name": names.RUN, "id": RUN_ID, "runtime": 0.1, "return_value": shown}
    redact_log_record(record)
    message = record.getMessage()
    assert PROMPT not in message
    assert message.endswith(f"succeeded in 0.1s: <result {len(shown.encode())} B>")
