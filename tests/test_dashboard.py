"""The Grafana dashboard (``ops/grafana/agentfleet.json``) and the alert rules
(``ops/prometheus/alerts.yml``) ask only for what the fleet serves.

Every query is parsed as PromQL (Grafana's variables replaced first), and every metric and
label it names is checked against ``GET /metrics`` of the suite's real fleet after a real run.
Names are compared with the samples' names, which carry the suffix a family's type adds
(``_total`` for a counter; ``_bucket``, ``_sum``, ``_count`` for a histogram), as Prometheus
stores them: a query on a counter's bare family name fails, as it would find nothing. The
dashboard's structure is checked as Grafana lays it out, its Markdown description
(``ops/prometheus/dashboard.md``) must be the one ``python -m ops.dashboard`` makes, and the
thresholds it draws must be the alerts' thresholds.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import promql_parser
import pytest
import yaml
from grafana_foundation_sdk.cog import plugins as grafana_plugins
from grafana_foundation_sdk.cog.encoder import JSONEncoder as GrafanaEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard as GrafanaDashboard
from prometheus_client.parser import text_string_to_metric_families

from ops import dashboard as doc
from ops.stack import REPO
from tests.conftest import Fleet

ALERTS = REPO / "ops" / "prometheus" / "alerts.yml"
GRID_COLUMNS = 24
#: What Grafana puts for its built-in variables; any value that parses as a duration will do.
BUILTINS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
#: ``$name``, ``${name}``, ``${name:format}`` and the old ``[[name]]``.
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
ALERT_LABEL = re.compile(r"\$labels\.(\w+)")
LABEL_VALUES = re.compile(r"^label_values\((.+),\s*(\w+)\)$")
#: Functions whose argument must be a counter (or a histogram's series, which are counters).
COUNTER_FUNCTIONS = frozenset({"rate", "irate", "increase"})
COMPARISONS = frozenset({">", ">=", "<", "<=", "==", "!="})
#: The panel that draws each alert's threshold (its comparison's number is one of the panel's
#: threshold steps): change one, and this test asks for the other.
#: Keys Grafana writes that its schema does not list: a query variable's ``definition`` (the
#: query as the variable editor shows it).
UNLISTED_KEYS = frozenset({"definition"})
ALERT_PANELS = {
    "AgentfleetProviderBreakerOpen": "Breaker state per provider",
    "AgentfleetQueueBacklogGrowing": "Messages waiting per queue",
    "AgentfleetFailedRunRatioHigh": "Failed-run ratio",
    "AgentfleetRunLatencyP95High": "Run latency p50 / p95 / p99",
}


@dataclass(frozen=True)
class Served:
    """What one ``/metrics`` answer exposes: each sample name's labels and family type."""

    labels: dict[str, frozenset[str]]
    types: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> Served:
        labels: dict[str, set[str]] = {}
        types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels.setdefault(sample.name, set()).update(sample.labels)
                types[sample.name] = family.type
        return cls({n: frozenset(v) for n, v in labels.items()}, types)


@dataclass
class Uses:
    """What a query names: metrics, the labels of each selector, grouping labels, and the
    metrics given to rate()/increase()."""

    metrics: set[str] = field(default_factory=set)
    matchers: list[tuple[str, str]] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)
    rated: set[str] = field(default_factory=set)
    comparisons: list[float] = field(default_factory=list)


def uses_of(expression: str) -> Uses:
    """Walk the parsed syntax tree of ``expression`` (a ValueError if it is no PromQL)."""
    found = Uses()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.metrics.add(node.name)
            matchers = node.matchers
            for matcher in itertools.chain(matchers.matchers, *(matchers.or_matchers or ())):
                if matcher.name != "__name__":
                    found.matchers.append((node.name, matcher.name))
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            found.grouping.update(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            if node.modifier.matching is not None:
                found.grouping.update(node.modifier.matching.labels)
            found.grouping.update(node.modifier.group_labels or ())
        if (
            isinstance(node, promql_parser.BinaryExpr)
            and str(node.op) in COMPARISONS
            and isinstance(node.rhs, promql_parser.NumberLiteral)
        ):
            found.comparisons.append(float(node.rhs.val))
        if isinstance(node, promql_parser.Call) and node.func.name in COUNTER_FUNCTIONS:
            argument = node.args[0]
            if isinstance(argument, promql_parser.MatrixSelector):
                found.rated.add(argument.vector_selector.name)

    promql_parser.walk(promql_parser.parse(expression), pre_visit=visit)
    return found


def check_query(
    expression: str, served: Served, where: str, shown_labels: Iterable[str] = ()
) -> None:
    """Fail unless ``expression`` parses and names only served metrics and their labels;
    ``shown_labels`` (a legend's, an annotation's) must be labels of those metrics too."""
    try:
        uses = uses_of(expression)
    except ValueError as exc:
        pytest.fail(f"{where}: not PromQL ({exc}): {expression}")
    assert uses.metrics, f"{where}: selects no metric: {expression}"
    unknown = sorted(uses.metrics - served.labels.keys())
    assert not unknown, f"{where}: {unknown} not served by /metrics: {expression}"
    for metric, label in uses.matchers:
        assert label in served.labels[metric], f"{where}: {metric} has no label {label!r}"
    known = set().union(*(served.labels[m] for m in uses.metrics))
    named = uses.grouping | set(shown_labels)
    assert named <= known, f"{where}: labels {sorted(named - known)} are on none of {uses.metrics}"
    for metric in uses.rated:
        assert served.types[metric] in ("counter", "histogram"), (
            f"{where}: rate()/increase() over {metric}, a {served.types[metric]}"
        )


def substitute(expression: str, declared: set[str]) -> str:
    """``expression`` as Grafana sends it with every multi-value variable at All."""

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name in BUILTINS:
            return BUILTINS[name]
        assert name in declared, f"${name} is no variable of the dashboard: {expression}"
        return ".*"  # the allValue of the dashboard's variables

    return VARIABLE.sub(value, expression)


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels inside collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def graphs(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in all_panels(dashboard) if p["type"] != "row"]


def variables(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return list(dashboard["templating"]["list"])


def check_dashboard_queries(dashboard: dict[str, Any], served: Served) -> None:
    declared = {v["name"] for v in variables(dashboard)}
    for variable in variables(dashboard):
        if variable["type"] != "query":
            continue
        query = variable["query"]
        query = query["query"] if isinstance(query, dict) else query
        found = LABEL_VALUES.match(query)
        assert found, f"variable {variable['name']}: expected label_values(metric, label): {query}"
        selector, label = found.groups()
        where = f"variable {variable['name']}"
        check_query(substitute(selector, declared), served, where, [label])
    for panel in graphs(dashboard):
        for target in panel["targets"]:
            legend = LEGEND_LABEL.findall(target.get("legendFormat", ""))
            where = f"panel {panel['title']!r} query {target['refId']}"
            check_query(substitute(target["expr"], declared), served, where, legend)


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return doc.load()


@pytest.fixture(scope="module")
def served(fleet: Fleet) -> Served:
    # A finished run with a cache_ttl, so the per-model, per-tenant and LLM cache series exist
    # (a counter is exposed from its first count on).
    tag = f"dashboard-{uuid.uuid4().hex[:10]}"
    run = fleet.client.run(f"[[tag:{tag}]] hi", tools=[], cache_ttl=60, timeout=60)
    assert run.status == "succeeded", run
    response = fleet.http.get("/metrics")
    assert response.status_code == 200, response.text
    return Served.parse(response.text)


# --- queries against the served metrics --------------------------------------------------
def test_dashboard_queries_use_only_served_metrics(
    dashboard: dict[str, Any], served: Served
) -> None:
    check_dashboard_queries(dashboard, served)


def test_a_misspelled_metric_or_label_fails_the_check(
    dashboard: dict[str, Any], served: Served
) -> None:
    broken = copy.deepcopy(dashboard)
    target = graphs(broken)[0]["targets"][0]
    assert "agentfleet_runs_enqueued_total" in target["expr"]
    target["expr"] = target["expr"].replace("runs_enqueued_total", "runs_enquued_total")
    with pytest.raises(AssertionError, match="agentfleet_runs_enquued_total"):
        check_dashboard_queries(broken, served)
    # A counter's family name (what the HELP line names) is no series Prometheus stores.
    target["expr"] = target["expr"].replace("runs_enquued_total", "runs_enqueued")
    with pytest.raises(AssertionError, match="not served"):
        check_dashboard_queries(broken, served)
    target["expr"] = 'max by (tenant) (rate(agentfleet_runs_enqueued_total{status="x"}[5m]))'
    with pytest.raises(AssertionError, match="has no label 'status'"):
        check_dashboard_queries(broken, served)
    target["expr"] = "max by (tenant) (rate(agentfleet_runs_enqueued_total[5m]))"
    with pytest.raises(AssertionError, match=r"\['tenant'\] are on none"):
        check_dashboard_queries(broken, served)
    target["expr"] = "rate(agentfleet_runs_in_flight[5m])"
    with pytest.raises(AssertionError, match="a gauge"):
        check_dashboard_queries(broken, served)


def test_alert_rules_use_only_served_metrics(served: Served) -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= {
        "AgentfleetProviderBreakerOpen",
        "AgentfleetQueueBacklogGrowing",
        "AgentfleetFailedRunRatioHigh",
        "AgentfleetRunsStalled",
        "AgentfleetRunLatencyP95High",
    }
    for rule in rules:
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["for"], rule["alert"]
        shown = ALERT_LABEL.findall(" ".join(rule["annotations"].values()))
        check_query(rule["expr"], served, f"alert {rule['alert']}", shown)


# --- the dashboard as Grafana reads it ---------------------------------------------------
def test_dashboard_is_well_formed(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"]
    assert dashboard["title"]
    # 36: the schema in which panels name their data source by {type, uid}.
    assert isinstance(dashboard["schemaVersion"], int)
    assert dashboard["schemaVersion"] >= 36
    panels = list(all_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {sorted(ids)}"
    assert dashboard["panels"][0]["type"] == "row", "every panel belongs to a row"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in "hwxy"), panel["title"]
        assert min(grid["w"], grid["h"]) >= 1, panel["title"]
        assert min(grid["x"], grid["y"]) >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= GRID_COLUMNS, f"{panel['title']!r} is wider than the grid"
        if panel["type"] == "row":
            assert (grid["w"], grid["h"], grid["x"]) == (GRID_COLUMNS, 1, 0), panel["title"]
        for x, y in itertools.product(
            range(grid["x"], grid["x"] + grid["w"]), range(grid["y"], grid["y"] + grid["h"])
        ):
            other = cells.setdefault((x, y), panel["title"])
            assert other == panel["title"], f"{panel['title']!r} overlaps {other!r}"


def test_every_panel_has_queries_a_unit_and_a_description(dashboard: dict[str, Any]) -> None:
    for panel in graphs(dashboard):
        title = panel["title"]
        assert panel["type"] in doc.PANEL_KINDS, f"{title!r}: type {panel['type']!r}"
        assert panel.get("description"), f"{title!r} has no description"
        assert panel["fieldConfig"]["defaults"]["unit"] in doc.UNITS, f"{title!r}: unit"
        targets = panel["targets"]
        assert targets, f"{title!r} has no query"
        assert all(t.get("expr", "").strip() for t in targets), f"{title!r}: a query is empty"
        refs = [t["refId"] for t in targets]
        assert len(refs) == len(set(refs)), f"{title!r}: refIds repeat"
        if panel["type"] == "heatmap":
            assert all(t.get("format") == "heatmap" for t in targets), title
        if panel["type"] == "table":
            assert all(t.get("instant") for t in targets), title


def test_every_panel_reads_the_chosen_prometheus(dashboard: dict[str, Any]) -> None:
    # A data source variable, not an import-time ${DS_...} input: file provisioning does not
    # fill those in, a variable works with both and lets the viewer switch.
    (source,) = [v for v in variables(dashboard) if v["type"] == "datasource"]
    assert source["query"] == "prometheus"
    wanted = {"type": "prometheus", "uid": f"${{{source['name']}}}"}
    for panel in graphs(dashboard):
        assert panel["datasource"] == wanted, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == wanted, panel["title"]
    for variable in variables(dashboard):
        if variable["type"] == "query":
            assert variable["datasource"] == wanted, variable["name"]


def lost_keys(sent: Any, kept: Any, path: str = "") -> Iterator[str]:
    """The paths of ``sent`` that ``kept`` lacks (a null value may go: it says nothing)."""
    if isinstance(sent, dict) and isinstance(kept, dict):
        for key, value in sent.items():
            if key not in kept:
                if value is not None and key not in UNLISTED_KEYS:
                    yield f"{path}/{key}"
            else:
                yield from lost_keys(value, kept[key], f"{path}/{key}")
    elif isinstance(sent, list) and isinstance(kept, list):
        assert len(sent) == len(kept), f"{path}: {len(sent)} items became {len(kept)}"
        for index, (one, other) in enumerate(zip(sent, kept, strict=True)):
            yield from lost_keys(one, other, f"{path}[{index}]")


def test_grafanas_schema_knows_every_key(dashboard: dict[str, Any]) -> None:
    """Grafana ignores what its schema does not know, so a misspelt option does nothing
    without a word. Read into the models made from Grafana 11.6's schema (its own
    grafana-foundation-sdk, panel options by panel type) and written out again, the dashboard
    keeps every key."""
    grafana_plugins.register_default_plugins()
    decoded = GrafanaDashboard.from_json(copy.deepcopy(dashboard))
    kept = json.loads(json.dumps(decoded, cls=GrafanaEncoder))
    lost = list(lost_keys(dashboard, kept))
    assert not lost, f"keys Grafana's dashboard schema does not know: {lost}"
    broken = copy.deepcopy(dashboard)
    graphs(broken)[0]["options"]["legend"]["shwoLegend"] = True
    decoded = GrafanaDashboard.from_json(broken)
    kept = json.loads(json.dumps(decoded, cls=GrafanaEncoder))
    assert list(lost_keys(broken, kept)) == ["/panels[1]/options/legend/shwoLegend"]


def test_the_markdown_is_made_from_the_dashboard(dashboard: dict[str, Any]) -> None:
    assert doc.DOC.read_text() == doc.render(dashboard), (
        "ops/prometheus/dashboard.md does not match the dashboard: run python -m ops.dashboard"
    )


def test_a_panel_the_markdown_cannot_describe_is_refused(dashboard: dict[str, Any]) -> None:
    broken = copy.deepcopy(dashboard)
    graphs(broken)[0]["type"] = "piechart"
    with pytest.raises(doc.UnknownPanel, match="piechart"):
        doc.render(broken)


def test_the_panels_draw_the_alerts_thresholds(dashboard: dict[str, Any]) -> None:
    panels = {p["title"]: p for p in graphs(dashboard)}
    rules = {r["alert"]: r for r in alert_rules()}
    for alert, title in ALERT_PANELS.items():
        steps = panels[title]["fieldConfig"]["defaults"]["thresholds"]["steps"]
        drawn = {s["value"] for s in steps[1:]}
        compared = uses_of(rules[alert]["expr"]).comparisons
        assert compared, alert
        assert compared[0] in drawn, f"{alert} fires at {compared[0]}; {title!r} draws {drawn}"


def test_every_alert_metric_is_on_the_dashboard(dashboard: dict[str, Any]) -> None:
    declared = {v["name"] for v in variables(dashboard)}
    shown = set().union(
        *(
            uses_of(substitute(t["expr"], declared)).metrics
            for p in graphs(dashboard)
            for t in p["targets"]
        )
    )
    for rule in alert_rules():
        missing = uses_of(rule["expr"]).metrics - shown
        assert not missing, f"{rule['alert']} uses {sorted(missing)}, which no panel shows"
