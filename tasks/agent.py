"""Agent runs: ``agentfleet.run`` (step 1) and ``agentfleet.agent.step`` (steps 2..n).

A step loads the run, calls the LLM, appends the answer, and then either finishes the run or
replaces itself with a flat chord: the model's tool calls on ``tools``, and the next step as
the body (one tool call is a chain instead: see :func:`fan_out`). ``Task.replace`` freezes
the body with the current task ID, so every step of a run carries the run ID and the last
one stores the final record as the run ID's Celery result; it also hands the run's place in
an enclosing chord (a batch) to that last step. Building the chord by hand with
``task_id=run_id`` would keep the ID but lose that membership.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from billiard.exceptions import SoftTimeLimitExceeded
from celery import Celery, Signature, Task, chain, chord, states
from celery.exceptions import Ignore, Retry

from agentfleet.tasks import (
    children,
    handoffs,
    keys,
    llm_cache,
    names,
    spend,
    tracing,
    waits,
    window,
)
from agentfleet.tasks.agents import registry as agents
from agentfleet.tasks.errors import (
    BudgetExceeded,
    OutputInvalid,
    PermanentProviderError,
    ProvidersUnavailable,
    RetryableProviderError,
    RolledBack,
    RunCancelled,
    RunFailed,
)
from agentfleet.tasks.intake import take_sent_run
from agentfleet.tasks.lifecycle import (
    entry_options,
    follow_up,
    pending_countdown,
    start_run,
    step_signature,
)
from agentfleet.tasks.llm import (
    CallOptions,
    Completion,
    ModelToolCall,
    RoutingError,
    Target,
    call_chain,
    resolve_chain,
)
from agentfleet.tasks.metrics import step_fields
from agentfleet.tasks.output import OutputSpec
from agentfleet.tasks.records import RunRecord
from agentfleet.tasks.settings import Settings
from agentfleet.tasks.states import RunStatus, StepOutcome
from agentfleet.tasks.store import Finished, StepAnswer, StepClaim, get_store
from agentfleet.tasks.streaming import TokenRelay
from agentfleet.tasks.toolcall import time_limits, tool_payload
from agentfleet.tasks.tools import registry
from agentfleet.tasks.views import run_view

log = logging.getLogger(__name__)


def tool_messages(tool_results: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Chord results as ``role: tool`` messages; errors are shown to the model, not raised."""
    messages = []
    for result in tool_results or []:
        if result.get("ok"):
            content = json.dumps(result.get("output"))
        else:
            error = result.get("error") or {}
            content = f"error ({error.get('code', 'tool_error')}): {error.get('message', '')}"
        messages.append(
            {"role": "tool", "tool_call_id": result.get("model_call_id", ""), "content": content}
        )
    return messages


def answer_last_message(
    messages: list[dict[str, Any]], tool_results: list[dict[str, Any]], gen: str
) -> bool:
    """Whether ``tool_results`` answer the tool calls of the transcript's last message, in order,
    and were run for its generation ``gen`` (a result without one predates generations).

    Results that do not were run for an answer that a crash of Redis rolled back: a step built
    on them would show the model results of calls it never made.
    """
    last = messages[-1] if messages else {}
    asked = last.get("tool_calls") or [] if last.get("role") == "assistant" else []
    ids = [c["id"] for c in asked] == [r.get("model_call_id") or "" for r in tool_results]
    return ids and all(r.get("gen", gen) == gen for r in tool_results)


def completion_from_transcript(messages: list[dict[str, Any]]) -> Completion:
    """The answer a step already stored, for a step redelivered after it was applied."""
    last = messages[-1]
    calls = [
        ModelToolCall(c["id"], c["function"]["name"], c["function"]["arguments"])
        for c in last.get("tool_calls") or []
    ]
    return Completion(content=last.get("content"), tool_calls=calls)


class StepRunner:
    """One step of one run, from claiming the run to dispatching what comes next."""

    def __init__(self, task: Task, settings: Settings, run_id: str, step: int) -> None:
        self.task, self.settings, self.run_id, self.step = task, settings, run_id, step
        self.store = get_store(settings)
        self.began = time.monotonic()

    def run(self, tool_results: list[dict[str, Any]] | None) -> dict[str, Any]:
        """The run's final record if this step ended it with success; :class:`RunFailed` if it
        ended it otherwise; ``Ignore`` or ``Retry`` if the run goes on."""
        claim = self.store.begin_step(self.run_id, self.step, self._worker())
        if claim.outcome != StepOutcome.OK:
            return self._not_ours(claim)
        try:
            return self._advance(claim, tool_results)
        except RolledBack as exc:
            self._ignore_rolled_back(exc)
        except RunCancelled:
            # Cancelled while the model was answering: the run is final already.
            self.store.drop_lease(self.run_id, claim.token)
            return self._final_view()
        except PermanentProviderError as exc:
            return self._fail(claim.token, exc.code, exc.message)
        except BudgetExceeded as exc:
            return self._over_budget(claim, exc)
        except ProvidersUnavailable as exc:
            return self._wait_for_providers(claim, exc)
        except (RetryableProviderError, SoftTimeLimitExceeded) as exc:
            return self._retry_later(claim, exc)
        except (Ignore, Retry, RunFailed):
            raise
        except BaseException:
            # Anything unexpected: give the step back so a redelivery can take it at once.
            self.store.release_step(self.run_id, self.step, claim.token)
            raise

    def _not_ours(self, claim: StepClaim) -> dict[str, Any]:
        if claim.outcome == StepOutcome.PENDING:
            # Published by the API, which has not accepted it yet: it does within moments,
            # or the record expires and a later look finds it missing.
            countdown = pending_countdown(claim.wait_s, self.task.request.retries)
            raise self.task.retry(countdown=countdown)
        if claim.outcome == StepOutcome.BUSY:
            # Another delivery of this run holds it: usually it finishes within moments, so
            # look again soon rather than sleeping out the whole lease.
            raise self.task.retry(countdown=min(claim.wait_s, 2.0) + random.uniform(0.1, 0.5))
        if claim.outcome == StepOutcome.POISONED:
            return self._fail(
                claim.token,
                "redelivery_limit",
                f"step {self.step} was delivered more than {self.settings.limits.max_redeliveries} "
                "times without finishing (workers lost while running it)",
            )
        if claim.outcome == StepOutcome.TERMINAL:
            # A final step delivered again, or any step of a cancelled run: answer with the
            # record, so the result is stored (and an enclosing batch chord counts the run)
            # even if the worker that finished the run died before Celery did either.
            return self._final_view()
        if claim.outcome == StepOutcome.ROLLED_BACK:
            self._ignore_rolled_back(RolledBack("the answer of the step before it is gone"))
        if claim.outcome == StepOutcome.WAITING:
            # Delivered again while the run waits for a person: the decision publishes it.
            raise Ignore()
        if claim.outcome == StepOutcome.THROTTLED:
            # Its tenant has no free slot: the run waits in the tenant's queue, and the run
            # that frees a slot publishes it again, in the same place in any batch chord.
            options = entry_options(self.task.request)
            if options:
                self.store.redis.hset(self.store.run_key(self.run_id), "entry", json.dumps(options))
            raise Ignore()
        # Already applied and dispatched, or the run is gone: nothing left to do.
        raise Ignore()

    def _final_view(self) -> dict[str, Any]:
        record = self.store.get_run(self.run_id)
        if record is None:
            raise Ignore()
        return self._concluded(record)

    def _concluded(self, record: RunRecord) -> dict[str, Any]:
        """How the task that ends the run ends (:func:`concluded`); a child run's end is its
        parent's tool result, stored and returned to the parent's fan-out, never an error."""
        if record.parent_id:
            return children.report(self.store, record)
        return concluded(record)

    def _worker(self) -> str:
        return str(self.task.request.hostname or "")

    def _followed(self, finished: Finished) -> dict[str, Any]:
        """Start what the run's end freed; end the task as the run ended (:func:`concluded`)."""
        follow_up(self.task.app, self.store, self.run_id, finished)
        return self._concluded(finished.record)

    def _advance(
        self, claim: StepClaim, tool_results: list[dict[str, Any]] | None
    ) -> dict[str, Any]:
        run, transcript = claim.run, claim.messages
        assert run is not None  # a claim that holds the lease has the record
        # A step that dispatches tool calls drops its lease before publishing them: with fast
        # tools the next step can start before this task returns, and must not find the run
        # held. If this worker dies before the publish, the redelivered step finds its answer
        # applied and publishes again. The run's last step dispatches no tool calls: no step
        # would read their results.
        last_step = self.step >= run.max_steps
        # The generation of the answer this step builds on, and of its own
        # (agentfleet.tasks.scripts).
        after = run.gen(self.step - 1)
        gen = run.gen(self.step)
        if run.applied_step >= self.step:
            completion = completion_from_transcript(transcript)  # redelivered after applying
            dispatching = bool(completion.tool_calls) and not last_step
            if dispatching:
                self.store.drop_lease(self.run_id, claim.token)
        elif not answer_last_message(transcript, tool_results or [], after):
            self.store.release_step(self.run_id, self.step, claim.token, due=time.time())
            raise RolledBack("its tool results answer an answer that is gone")
        elif self.step > run.max_steps:
            # Published by a release that dispatched the last step's tool calls: none is left.
            return self._fail(claim.token, **_out_of_steps(run))
        elif missing := [n for n in run.tools if n not in registry] + [
            n for n in (*run.subagents, *run.handoffs) if n not in agents
        ]:
            # Never offer the model fewer tools than the run was accepted with.
            return self._fail(
                claim.token,
                "tools_unavailable",
                f"worker {self._worker()} lacks tools or agents the run was accepted with: "
                f"{', '.join(missing)} (see GET /v1/tools)",
            )
        else:
            # After a handoff, the new agent's instructions follow the tool results.
            new_messages = tool_messages(tool_results) + handoffs.instructions_after(run, self.step)
            answered = self._answer(run, transcript + new_messages)
            completion, target = answered.completion, answered.target
            dispatching = bool(completion.tool_calls) and not last_step
            answer = StepAnswer(
                [*new_messages, *answered.repairs, completion.assistant_message()],
                answered.prompt_tokens,
                answered.completion_tokens,
                len(completion.tool_calls) if dispatching else 0,
                target,
                step_fields(time.monotonic() - self.began, target),
                self._worker(),
                asked=len(completion.tool_calls),
                after=after,
                llm_calls=answered.calls,
                cached_tokens=answered.cached_tokens,
                cost=answered.cost,
                cache_hits=answered.cache_hits,
                spend=self._spend(run, answered),
            )
            if not dispatching:
                # The run's last step: its answer and its end in one round trip.
                finished = self.store.apply_and_finish_step(
                    self.run_id, self.step, claim.token, answer, **self._ending(completion, run)
                )
                if finished is None:
                    raise RunCancelled(self.run_id)
                return self._followed(finished)
            if pending := waits.pending_calls(run, self.step, completion.tool_calls):
                self._wait_for_people(claim, run, answer, pending)
            # The answer applied and the lease dropped, in one script.
            if self.store.apply_step(self.run_id, self.step, claim.token, answer) < 0:
                raise RunCancelled(self.run_id)
            gen = claim.token
        if dispatching:
            self._dispatch_tools(claim, run, completion.tool_calls, gen)
        ending = self._ending(completion, run)
        return self._followed(  # redelivered after the answer that ended the run was applied
            self.store.finish_step(self.run_id, self.step, claim.token, gen=gen, **ending)
        )

    def _wait_for_people(
        self, claim: StepClaim, run: RunRecord, answer: StepAnswer, pending: list[dict[str, Any]]
    ) -> NoReturn:
        """Apply the answer and make the run wait for a person to decide ``pending`` calls
        (:mod:`agentfleet.tasks.waits`): the task ends; the decision publishes the step again."""
        waiting, deadline = waits.waiting_field(run, self.step, pending)
        if options := entry_options(self.task.request):
            # Kept first, so that the step published after the decision keeps the run's place
            # in an enclosing batch chord.
            self.store.redis.hset(self.store.run_key(self.run_id), "entry", json.dumps(options))
        applied, kick = self.store.wait_step(
            self.run_id, self.step, claim.token, answer, waiting, deadline
        )
        if applied < 0:
            raise RunCancelled(self.run_id)
        for kicked in kick.split():
            start_run(self.task.app, self.store, kicked)  # the tenant slot it gave up
        tracing.event(
            "agentfleet.wait",
            {"reason": waiting["reason"], "detail": waiting["detail"]},
            prefix="agentfleet.wait.",
        )
        waits.waiting_callback(self.task.app, run)
        log.info("run %s step %d waits for a person: %s", self.run_id, self.step, waiting["detail"])
        raise Ignore()

    def _ignore_rolled_back(self, exc: RolledBack) -> NoReturn:
        """End a step that found what it builds on rolled back by a crash of Redis. The step
        was given back with the run due now: the watchdog sends what the record says is next."""
        log.warning("run %s step %d: %s (a crash of Redis); ignored", self.run_id, self.step, exc)
        raise Ignore()

    def _answer(self, run: RunRecord, messages: list[dict[str, Any]]) -> Answered:
        """The model's answer to ``messages``; for a typed run, repaired: an answer that does
        not match the output schema is sent back with what is wrong, up to the run's repairs,
        within the step's time. The last answer is kept either way (:meth:`_ending` judges it)."""
        spec = output_spec(run)
        options = CallOptions(model_settings(run, messages), spec)
        messages, summarized = self._fit(run, messages)
        answered = Answered.first(*self._call_llm(run, messages, options, summarized))
        answered.usages[:0] = summarized
        completion = answered.completion
        if spec is None:
            return answered
        for _ in range(self._repairs(run)):
            if completion.tool_calls or not self._time_for_another_call(run):
                break
            try:
                spec.check(completion.content)
                break
            except OutputInvalid as exc:
                answered.repairs += [
                    completion.assistant_message(),
                    spec.repair_message(exc.message),
                ]
            call = self._call_llm(run, messages + answered.repairs, options, answered.usages)
            answered.add(*call)
            completion = answered.completion
        return answered

    def _fit(
        self, run: RunRecord, messages: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[spend.Usage]]:
        """``messages`` within the run's context budget (:mod:`agentfleet.tasks.window`), and the
        usage of the call summarizing what was left out, if the run asks for summaries. What was
        left out is an event of the run (``context_trimmed``) and counted on its record."""
        budget = run.context_budget or self.settings.runs.default_context_budget
        if not budget:
            return messages, []
        index = run.input_index
        if index is None:
            index = next((i for i, m in enumerate(messages) if m.get("role") == "user"), 0)
        model = run.chain[0].model if run.chain else ""
        reserve = window.summary_reserve(budget) if run.context_summary else 0
        fitted = window.fit(messages, budget - reserve, index, window.counter_for(model))
        if not fitted.trimmed:
            return messages, []
        report: dict[str, Any] = {"step": self.step, **fitted.report()}
        used: list[spend.Usage] = []
        fitted_messages = fitted.messages
        if reserve and fitted.left_out:
            summary, used = self._summary(run, fitted.left_out, reserve)
            fitted_messages = window.with_summary(fitted.messages, summary, len(fitted.left_out))
            report["summarized_messages"] = len(fitted.left_out)
        self.store.event(self.run_id, "context_trimmed", report)
        self.store.redis.hincrby(self.store.run_key(self.run_id), "context_dropped", fitted.dropped)
        return fitted_messages, used

    def _summary(
        self, run: RunRecord, left_out: list[dict[str, Any]], max_tokens: int
    ) -> tuple[str, list[spend.Usage]]:
        """A summary of ``left_out``: the run's last one if it covers them all, else one made
        from it and the messages it does not cover (one LLM call, within the run's budgets)."""
        fields = run.fields
        previous, covered = fields.get("summary"), int(fields.get("summary_of") or 0)
        if previous is not None and covered == len(left_out):
            return previous, []
        if previous is None or covered > len(left_out):
            previous, covered = None, 0
        request = window.summary_request(left_out[covered:], previous, max_tokens)
        chain = list(run.chain)
        if model := self.settings.runs.context_summary_model:
            try:
                chain = resolve_chain(self.settings, model)
            except RoutingError as exc:
                log.warning(
                    "context_summary_model %r: %s; the run's own model summarizes", model, exc
                )
        options = CallOptions({"max_tokens": max_tokens})
        completion, _, used = self._provider_call(run, request, options, [], chain=chain, tools=[])
        summary = (completion.content or "").strip()
        self.store.redis.hset(
            self.store.run_key(self.run_id),
            mapping={"summary": summary, "summary_of": len(left_out)},
        )
        return summary, [used]

    def _repairs(self, run: RunRecord) -> int:
        agent = agents.get(run.agent) if run.agent in agents else None
        if agent is not None and agent.output_repairs is not None:
            return agent.output_repairs
        return self.settings.runs.max_output_repairs

    def _time_for_another_call(self, run: RunRecord) -> bool:
        """Whether one more call to the run's first provider fits in the step's soft limit."""
        providers = {p.name: p for p in self.settings.llm.provider_list}
        first = providers.get(run.chain[0].provider) if run.chain else None
        needed = first.timeout + first.connect_timeout if first else 0.0
        return time.monotonic() + needed <= self.began + self.settings.limits.step_soft_time_limit

    def _call_llm(
        self,
        run: RunRecord,
        messages: list[dict[str, Any]],
        options: CallOptions,
        spent: list[spend.Usage],
    ) -> tuple[Completion, Target, spend.Usage]:
        """The answer to ``messages``: from the response cache for a run with a ``cache_ttl``
        (:mod:`agentfleet.tasks.llm_cache`), else from a provider; ``spent``: the step's calls
        so far."""
        if not run.cache_ttl:
            return self._provider_call(run, messages, options, spent)
        schemas = run_schemas(run)
        key = llm_cache.digest(run.chain, messages, schemas, options)
        made: list[spend.Usage] = []

        def call() -> tuple[Completion, Target]:
            completion, target, used = self._provider_call(run, messages, options, spent)
            made.append(used)
            return completion, target

        # An identical call in flight is waited for as long as one call may take.
        wait_s = max(self.began + self.settings.limits.step_soft_time_limit - time.monotonic(), 0.0)
        found = self.store.llm_cache.answer(run.tenant, key, run.cache_ttl, wait_s, call)
        if not found.hit:
            return found.completion, found.target, made[0]
        # No LLM call span: the answer is the cache's.
        tracing.event("agentfleet.llm_cache_hit", {"gen_ai.request.model": found.target.model})
        if run.stream and found.completion.content:
            relay = TokenRelay(self.store, self.run_id, self.step)
            relay.delta(found.completion.content)
            relay.flush()
        return found.completion, found.target, spend.Usage.cache_hit(found.target)

    def _provider_call(
        self,
        run: RunRecord,
        messages: list[dict[str, Any]],
        options: CallOptions,
        spent: list[spend.Usage],
        chain: list[Target] | None = None,
        tools: list[str] | None = None,
    ) -> tuple[Completion, Target, spend.Usage]:
        """One LLM call within the run's and its tenant's budgets (:mod:`agentfleet.tasks.spend`);
        :class:`BudgetExceeded` if a budget refuses it. ``chain`` and ``tools``: the run's
        unless given (a summary's call has its own)."""
        if tools is None:
            schemas = run_schemas(run)
        else:
            schemas = [registry.get(n).openai_schema for n in tools]
        chain = list(run.chain) if chain is None else chain
        held = self._reserve(run, chain, messages, schemas, options, spent)
        stream = run.stream and tools is None
        relay = TokenRelay(self.store, self.run_id, self.step) if stream else None
        # The threads pool enforces no time limit: the chain walk keeps the step within its
        # soft limit, so a step never outlives the time the visibility timeout allows it.
        deadline = self.began + self.settings.limits.step_soft_time_limit
        used = None
        try:
            completion, target = call_chain(
                self.settings,
                chain,
                messages,
                schemas,
                on_delta=relay.delta if relay else None,
                deadline=deadline,
                options=options,
            )
            c = completion
            cost = spend.call_cost(
                self.settings, target, c.prompt_tokens, c.completion_tokens, c.cached_tokens
            )
            used = spend.Usage(target, c.prompt_tokens, c.completion_tokens, c.cached_tokens, cost)
        finally:
            if held is not None:
                self.store.budgets.settle(held, used)
        if relay:
            relay.flush()
        assert used is not None  # set when the call returned
        return completion, target, used

    def _reserve(
        self,
        run: RunRecord,
        chain: list[Target],
        messages: list[dict[str, Any]],
        schemas: list[dict[str, Any]],
        options: CallOptions,
        spent: list[spend.Usage],
    ) -> spend.Reservation | None:
        """Check the run's budget and hold the call's estimate against its tenant's; the
        reservation to settle (None: the tenant has no budget)."""
        tenant_budget = self.settings.tenants.tenant_budget(run.tenant)
        budget = self._budget_of(run)
        if budget.max_total_tokens is None and budget.max_cost is None and tenant_budget is None:
            return None
        max_tokens = options.settings.get("max_tokens")
        est = spend.estimate(self.settings, chain, messages, schemas, max_tokens)
        spent_tokens = sum(u.prompt + u.completion for u in spent)
        refusal = spend.run_refusal(budget, spent_tokens, sum(u.cost for u in spent), est)
        if refusal is not None:
            raise BudgetExceeded(refusal)
        if tenant_budget is None:
            return None
        return self.store.budgets.reserve(run.tenant, tenant_budget, est)

    def _budget_of(self, run: RunRecord) -> RunRecord:
        """The record whose budget a call of ``run`` spends: the run's own, or, in a tree whose
        top run has a token or cost budget, the top run's with the usage of the whole tree
        (a run's budget covers its sub-agent runs)."""
        own = run.max_total_tokens is not None or run.max_cost is not None
        if run.root_id == run.id and not own:
            return run
        top = run if run.root_id == run.id else self.store.get_run(run.root_id)
        if top is None or (top.max_total_tokens is None and top.max_cost is None):
            return run
        below = children.descendants(self.store, top.id)
        return dataclasses.replace(top, usage=children.tree_usage(top, below)) if below else top

    def _spend(self, run: RunRecord, answered: Answered) -> list[dict[str, Any]] | None:
        """The tenant's spend of the step's calls, counted as the answer is applied; None when
        each call was settled against the tenant's budget already."""
        if self.settings.tenants.tenant_budget(run.tenant) is not None:
            return None
        now = time.time()
        return [u.spend(self.settings, run.tenant, now) for u in answered.by_target()]

    def _over_budget(self, claim: StepClaim, exc: BudgetExceeded) -> dict[str, Any]:
        """End a run whose budget refused its next call; or, for a run that waits for its
        tenant's budget (``budget_policy: wait``), give the step back until the budget resets.
        The watchdog sends it again then: no worker and no message waits meanwhile."""
        run = claim.run
        assert run is not None
        if exc.resets_at is None or run.budget_policy != "wait":
            return self._fail(claim.token, exc.code, exc.message)
        # Spread the runs that waited over a minute, so they do not all start at midnight.
        due = exc.resets_at + random.uniform(0.0, 60.0)
        waiting = {
            "reason": "budget",
            "detail": exc.message,
            "retry_at": datetime.fromtimestamp(due, UTC).isoformat(timespec="milliseconds"),
        }
        self.store.set_waiting(self.run_id, waiting)
        tracing.event("agentfleet.wait", waiting, prefix="agentfleet.wait.")
        self.store.release_step(self.run_id, self.step, claim.token, due=due)
        log.info("run %s step %d waits for its tenant's budget: %s", self.run_id, self.step, exc)
        raise Ignore()

    def _ending(self, completion: Completion, run: RunRecord) -> dict[str, Any]:
        """The final state of a run whose step dispatches nothing: succeeded with the model's
        answer; failed if the model still asked for tools in the run's last step, or if the
        answer of a typed run does not match its schema (the answer kept as its text)."""
        if completion.tool_calls:
            return {"status": RunStatus.FAILED, "error": _out_of_steps(run)}
        text = completion.content or ""
        spec = output_spec(run)
        if spec is not None:
            try:
                spec.check(text)
            except OutputInvalid as exc:
                repairs = self._repairs(run)
                message = f"{exc.message} (after {repairs} repair round{'s' * (repairs != 1)})"
                error = {"code": OutputInvalid.code, "message": message}
                return {"status": RunStatus.FAILED, "result": text, "error": error}
        return {"status": RunStatus.SUCCEEDED, "result": text}

    def _wait_for_providers(self, claim: StepClaim, exc: ProvidersUnavailable) -> dict[str, Any]:
        """Every provider is open, held or limited: come back when the first one may be.

        Not an error: it does not spend the retry budget, and the run shows what it waits
        for. Only a wait longer than ``max_provider_wait`` fails the run.
        """
        countdown = min(
            max(exc.wait_s, 0.2) + random.uniform(0.1, 1.0), self.settings.llm.max_retry_countdown
        )
        retry_at = datetime.now(UTC) + timedelta(seconds=countdown)
        waiting = {
            "reason": "providers_unavailable",
            "detail": exc.message,
            "retry_at": retry_at.isoformat(timespec="milliseconds"),
        }
        since = self.store.set_waiting(self.run_id, waiting)
        tracing.event("agentfleet.wait", waiting, prefix="agentfleet.wait.")
        waited = time.time() - since
        if waited > self.settings.llm.max_provider_wait:
            return self._fail(
                claim.token,
                exc.code,
                f"no provider could take the call for {waited:.0f}s: {exc.message}",
            )
        self.store.release_step(self.run_id, self.step, claim.token, after=countdown)
        raise self.task.retry(countdown=countdown)

    def _retry_later(self, claim: StepClaim, exc: BaseException) -> dict[str, Any]:
        attempts = int(self.store.redis.hincrby(self.store.run_key(self.run_id), "llm_retries", 1))
        if attempts > self.settings.llm.llm_max_retries:
            cause = exc.message if isinstance(exc, RetryableProviderError) else "step timed out"
            return self._fail(
                claim.token,
                "provider_retries_exhausted",
                f"gave up after {attempts - 1} retries: {cause}",
            )
        backoff = self.settings.llm.retry_backoff_base * 2 ** (attempts - 1)
        asked = exc.retry_after if isinstance(exc, RetryableProviderError) else None
        countdown = min(max(backoff, asked or 0.0), self.settings.llm.max_retry_countdown)
        countdown *= random.uniform(1.0, 1.25)  # jitter: retries of many runs do not align
        log.warning("run %s step %d: %s; retry in %.1fs", self.run_id, self.step, exc, countdown)
        retry = {"countdown_s": countdown, "attempt": attempts}
        tracing.event("agentfleet.retry", retry, prefix="agentfleet.retry.")
        self.store.event(self.run_id, "llm_retry", {"step": self.step, **retry, "error": str(exc)})
        self.store.release_step(self.run_id, self.step, claim.token, after=countdown)
        raise self.task.retry(countdown=countdown)

    def _dispatch_tools(
        self, claim: StepClaim, run: RunRecord, calls: list[ModelToolCall], gen: str | None
    ) -> None:
        """Replace this step with its tool calls, asked in the answer of generation ``gen``,
        and the next step."""
        app = self.task.app
        header = tool_signatures(app, self.settings, self.run_id, self.step, run, calls, gen)
        if run.handoffs:
            handoffs.take(self.store, run, self.step, calls, gen)
        spawned: list[int] = []
        if run.subagents:
            # A sub-agent call is a child run: its entry message takes the call's place.
            spawn = children.start_children(self.store, self.settings, run, self.step, calls, gen)
            spawned = spawn.started
            for index in spawn.started:
                header[index] = app.signature(names.RUN, task_id=header[index].options["task_id"])
        body = step_signature(app, self.run_id, self.step + 1)
        try:
            self.task.replace(fan_out(app, self.run_id, header, body))
        except Ignore:
            # Replaced: the tool calls are published, and the run's place in any enclosing
            # chord went with them. Mark the step dispatched, then end as ignored: the run's
            # end is recorded by the step that ends it, also if it was cancelled meanwhile.
            # A step with children frees the run's tenant slot while they run.
            finished = self.store.finish_step(
                self.run_id, self.step, claim.token, gen=gen, release=bool(spawned)
            )
            follow_up(app, self.store, self.run_id, finished)
            raise

    def _fail(self, token: str, code: str, message: str) -> dict[str, Any]:
        """End the run failed (:class:`RunFailed`), unless it ended otherwise first."""
        log.warning("run %s failed at step %d: %s", self.run_id, self.step, message)
        error = {"code": code, "message": message}
        return self._followed(
            self.store.finish_step(
                self.run_id, self.step, token, status=RunStatus.FAILED, error=error
            )
        )


def concluded(record: RunRecord) -> dict[str, Any]:
    """How the task that ends a run ends: its record as the result if it succeeded, else
    :class:`RunFailed` with the record, so that its Celery state and its task event tell the
    truth (``FAILURE``) and ``AsyncResult(run_id).get()`` returns either way."""
    view = run_view(record)
    if view["status"] == RunStatus.SUCCEEDED.value:
        return view
    raise RunFailed.of(view)


@dataclass
class Answered:
    """A step's answer: the model's last completion, the repair rounds before it (each invalid
    answer and the message sending it back), and the usage of every call it took."""

    completion: Completion
    target: Target
    repairs: list[dict[str, Any]] = field(default_factory=list)
    usages: list[spend.Usage] = field(default_factory=list)

    @classmethod
    def first(cls, completion: Completion, target: Target, used: spend.Usage) -> Answered:
        return cls(completion, target, usages=[used])

    def add(self, completion: Completion, target: Target, used: spend.Usage) -> None:
        """The answer of one more call replaces the last."""
        self.completion, self.target = completion, target
        self.usages.append(used)

    @property
    def calls(self) -> int:
        return len(self.usages)

    @property
    def prompt_tokens(self) -> int:
        return sum(u.prompt for u in self.usages)

    @property
    def completion_tokens(self) -> int:
        return sum(u.completion for u in self.usages)

    @property
    def cached_tokens(self) -> int:
        return sum(u.cached for u in self.usages)

    @property
    def cost(self) -> float:
        return sum(u.cost for u in self.usages)

    @property
    def cache_hits(self) -> int:
        return sum(1 for u in self.usages if u.hit)

    def by_target(self) -> list[spend.Usage]:
        """The calls' usage summed per provider and model (a repair may fall back)."""
        summed: dict[Target, spend.Usage] = {}
        for u in self.usages:
            s = summed.get(u.target)
            summed[u.target] = u if s is None else s + u
        return list(summed.values())


#: ``tool_choice`` values that force a tool call: they hold until the model has called one.
_FREE_CHOICES = frozenset({"auto", "none"})


def model_settings(run: RunRecord, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's model settings for a call with ``messages``. A ``tool_choice`` that forces a
    tool call (``required``, or a named function) applies until the model has called a tool:
    kept after that, every step would call a tool and the run could never answer."""
    settings = dict(run.model_settings)
    choice = settings.get("tool_choice")
    forced = choice is not None and choice not in _FREE_CHOICES
    if forced and any(m.get("role") == "tool" for m in messages):
        settings.pop("tool_choice")
    return settings


def run_schemas(run: RunRecord) -> list[dict[str, Any]]:
    """The ``tools=[...]`` a run's LLM calls offer: its tools, its sub-agents, its handoffs."""
    tools = [registry.get(n).openai_schema for n in run.tools]
    return tools + children.schemas(run) + handoffs.schemas(run)


def output_spec(run: RunRecord) -> OutputSpec | None:
    """The run's output schema; with the agent's pydantic type when this worker has the agent
    and the schema is still the one the run was accepted with."""
    if run.output_schema is None:
        return None
    agent = agents.get(run.agent) if run.agent in agents else None
    if agent is not None and agent.output is not None and agent.output.schema == run.output_schema:
        return agent.output
    return OutputSpec(run.agent or "output", run.output_schema)


def _out_of_steps(run: RunRecord) -> dict[str, str]:
    max_steps = run.max_steps
    message = f"the run used its {max_steps} steps and the model still asked for tools"
    return {"code": "max_steps_exceeded", "message": message}


def tool_signatures(
    app: Celery,
    settings: Settings,
    run_id: str,
    step: int,
    run: RunRecord,
    calls: list[ModelToolCall],
    gen: str | None = None,
) -> list[Signature]:
    """One ``agentfleet.tool.call`` per tool call the model made in ``step``, in its answer of
    generation ``gen``."""
    allowed = list(run.tools)
    signatures = []
    for index, call in enumerate(calls):
        call_id = keys.tool_call_id(run_id, step, index)
        soft, hard = time_limits(call.name, settings)
        payload = tool_payload(
            call_id,
            call.name,
            # A call a reviewer approved runs with the arguments they gave, if they edited them.
            waits.edited_arguments(run, call_id, call.arguments),
            run_id=run_id,
            step=step,
            model_call_id=call.id,
            allowed=allowed,
            gen=gen,
        )
        signatures.append(
            app.signature(
                names.TOOL_CALL,
                args=(payload,),
                task_id=call_id,
                soft_time_limit=soft,
                time_limit=hard,
                # The chord joins on its own keys, and the run store keeps the result (the
                # run, GET /v1/tool-calls and a redelivery read it there): Celery's own copy
                # under the call's ID would be a read, a write and a publish more per call.
                ignore_result=True,
            )
        )
    return signatures


def fan_out(app: Celery, run_id: str, calls: list[Signature], next_step: Signature) -> Signature:
    """A step's tool calls, with the next step after them.

    Several calls are a flat chord: they run in parallel, and the next step gets their results
    in the order the model asked for them. One call is a chain, as Celery itself unrolls a
    group of one: the call hands its result to the next step directly, without a chord's join
    (on the tools worker, five Redis round trips, three of them scripts; on the agents worker,
    the chord's size). The call gets the errback a chord gives its body, so a call killed at its
    hard time limit fails the run the same way.
    """
    if len(calls) == 1:
        (call,) = calls
        # Immutable: Celery calls an errback with the failed task's ID, here the call's.
        call.on_error(app.signature(names.TOOLS_FAILED, args=(run_id,), immutable=True))
        return chain(call, next_step)
    return chord(calls, next_step)


def register(app: Celery, settings: Settings) -> None:
    """Register the run entry task and the step task on ``app``."""
    limits = {
        "soft_time_limit": settings.limits.step_soft_time_limit,
        "time_limit": settings.limits.step_time_limit,
        "max_retries": None,  # retry budgets are kept per run (llm_retries), not per message
        # How a run that did not succeed ends: logged at INFO without a traceback, not an error
        # of the worker, while its state and task event still say FAILURE.
        "throws": (RunFailed,),
    }

    @app.task(name=names.RUN, bind=True, shared=False, **limits)
    def run(self: Task, request: dict[str, Any] | None = None) -> dict[str, Any]:
        """Start a run whose ID is this task's ID.

        From the API, ``request`` is None: the run record was written before enqueueing.
        From ``send_task``, ``request`` is a :class:`~agentfleet.tasks.models.RunRequest` as JSON.
        """
        run_id = str(self.request.id)
        if request is not None:
            take_sent_run(get_store(settings), run_id, request, self.app)
        return StepRunner(self, settings, run_id, 1).run(None)

    # Steps 2..n carry the run ID as their task ID too (Task.replace), whose STARTED state
    # step 1 stored already; the run record says what is running.
    @app.task(name=names.AGENT_STEP, bind=True, shared=False, track_started=False, **limits)
    def step(
        self: Task,
        tool_results: list[dict[str, Any]] | dict[str, Any] | None,
        run_id: str,
        step: int,
    ) -> dict[str, Any]:
        """Step ``step`` of ``run_id``, with the previous step's tool results (a chord's list,
        or the one result a chain hands over: see :func:`fan_out`)."""
        if isinstance(tool_results, dict):
            tool_results = [tool_results]
        return StepRunner(self, settings, run_id, step).run(tool_results)

    @app.task(name=names.RESUME, bind=True, shared=False)
    def resume(self: Task, run_id: str, step: int, body: dict[str, Any]) -> None:
        """Recovery check for a tool chord whose dispatching worker died."""
        _resume_after_lost_chord(self.app, settings, run_id, step, body)

    @app.task(name=names.TOOLS_FAILED, bind=True, shared=False)
    def tools_failed(self: Task, run_id: str) -> None:
        """Errback of a step's tool calls: a tool chord's body, whose task ID is the run ID,
        or a single call (:func:`fan_out`), whose errback names the run."""
        _fail_after_lost_tools(self.app, settings, run_id)


def _fail_after_lost_tools(app: Celery, settings: Settings, run_id: str) -> None:
    """Fail a run whose tool calls errored (a tool call killed at its hard time limit).

    A chord can also error with every tool result stored: Celery's join is not retried,
    so a Redis outage in the instant the last tool finished fails it. Then the run goes on
    with the stored results instead.
    """
    store = get_store(settings)
    run = store.get_run(run_id)
    step = run.dispatched_step if run else 0
    count = run.tool_calls(step) if run else 0
    # The failure the call that died stored under its own ID (no failure but a run's end is
    # stored under the run's: workers/fixes/result_backend.py).
    calls = [app.AsyncResult(keys.tool_call_id(run_id, step, i)) for i in range(count)]
    cause = next((c.result for c in calls if c.state == states.FAILURE), "no failure stored")
    if run is not None and not run.terminal:
        results = store.tool_results([keys.tool_call_id(run_id, step, i) for i in range(count)])
        if count and results is not None and not run.delivered(step + 1):
            log.warning(
                "run %s: its tool calls errored, every result stored (%s); resuming", run_id, cause
            )
            step_signature(app, run_id, step + 1).set(task_id=run_id).apply_async((results,))
            return
    finished = store.finish_step(
        run_id,
        0,  # moves no step marker and holds no lease: only the final status changes
        "",
        status=RunStatus.FAILED,
        error={"code": "tool_call_lost", "message": f"a tool call did not return: {cause}"},
    )
    follow_up(app, store, run_id, finished)
    log.warning("run %s failed: its tool calls errored: %s", run_id, cause)
    if finished.final:
        # No step of the run is left to record its end under the run ID: send one that does.
        start_run(app, store, run_id)


def _resume_after_lost_chord(
    app: Celery, settings: Settings, run_id: str, step: int, body: dict[str, Any]
) -> None:
    """Publish step ``step + 1`` if every tool of ``step`` is done and it never started."""
    store = get_store(settings)
    run = store.get_run(run_id)
    if run is None or run.terminal:
        return
    if run.dispatched_step != step or run.delivered(step + 1):
        return  # the run moved on: the chord did fire
    count = run.tool_calls(step)
    results = store.tool_results([keys.tool_call_id(run_id, step, i) for i in range(count)])
    if not results:
        return  # tools still running: the last one to finish completes the chord
    log.warning("run %s: the tool chord of step %d never fired; resuming it", run_id, step)
    # The chord body as Celery would have sent it (same task ID, errback, and the run's
    # place in any enclosing chord); a duplicate of a step is a no-op.
    app.signature(body).apply_async((results,))
