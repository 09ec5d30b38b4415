"""Write ``ops/prometheus/dashboard.md`` from the Grafana dashboard: ``python -m ops.dashboard``.

``ops/grafana/agentfleet.json`` is the dashboard: edit it by hand, or in Grafana and export it
over the file. The Markdown is made from it (rows, panels, their descriptions, units,
thresholds and queries, in the dashboard's order), so the words a reader sees in Grafana's panel
descriptions and the queries in the file are the ones Grafana runs and cannot drift apart.
``--check`` writes nothing and exits 1 when the file differs from what would be written
(``tests/test_dashboard.py`` does the same).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

REPO: Final = Path(__file__).resolve().parent.parent
JSON_PATH: Final = REPO / "ops" / "grafana" / "agentfleet.json"
DOC: Final = REPO / "ops" / "prometheus" / "dashboard.md"
#: Prose is wrapped to this many columns; queries are kept as written.
WIDTH: Final = 96

#: How the Markdown names a panel type; a type not here stops the generator (and fails a test),
#: so a new kind of panel gets a name before it is described.
PANEL_KINDS: Final = {
    "timeseries": "time series",
    "stat": "stat",
    "table": "table",
    "heatmap": "heatmap",
    "state-timeline": "state timeline",
}
#: How the Markdown names a Grafana unit (empty: a plain count, nothing to say).
UNITS: Final = {
    "reqps": "per second",
    "short": "",
    "none": "",
    "s": "seconds",
    "percentunit": "percent",
    "currencyUSD": "US dollars",
}


class UnknownPanel(ValueError):
    """A panel the generator cannot describe: a type or unit it has no words for, or a panel
    outside any row."""


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    type: str
    description: str
    unit: str
    stacked: bool
    #: (colour, value) steps above the base colour.
    thresholds: tuple[tuple[str, float], ...]
    #: Value -> text of the panel's value mappings (the breaker's states).
    mappings: tuple[tuple[str, str], ...]
    queries: tuple[Query, ...]


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Variable:
    name: str
    label: str
    type: str
    query: str
    multi: bool


@dataclass(frozen=True)
class Dashboard:
    title: str
    description: str
    variables: tuple[Variable, ...]
    rows: tuple[Row, ...]


def load(path: Path = JSON_PATH) -> dict[str, Any]:
    """The dashboard JSON as Grafana reads it."""
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def _panel(raw: dict[str, Any]) -> Panel:
    defaults = raw.get("fieldConfig", {}).get("defaults", {})
    steps = defaults.get("thresholds", {}).get("steps", [])
    mappings = [
        (value, str(option["text"]))
        for mapping in defaults.get("mappings", [])
        if mapping.get("type") == "value"
        for value, option in mapping["options"].items()
    ]
    stacking = defaults.get("custom", {}).get("stacking", {}).get("mode", "none")
    return Panel(
        title=str(raw["title"]),
        type=str(raw["type"]),
        description=str(raw.get("description", "")),
        unit=str(defaults.get("unit", "")),
        stacked=stacking == "normal",
        # The first step is the base colour (value null): it is no threshold.
        thresholds=tuple((str(s["color"]), float(s["value"])) for s in steps[1:]),
        mappings=tuple(mappings),
        queries=tuple(
            Query(str(t["expr"]), str(t.get("legendFormat", ""))) for t in raw.get("targets", [])
        ),
    )


def parse(document: dict[str, Any]) -> Dashboard:
    """The dashboard's rows and panels, in order (a panel before the first row is refused:
    every panel sits in a row, as the Markdown's sections do)."""
    rows: list[tuple[str, list[Panel]]] = []
    for raw in document["panels"]:
        if raw["type"] == "row":
            rows.append((str(raw["title"]), [_panel(p) for p in raw.get("panels", [])]))
        elif not rows:
            raise UnknownPanel(f"panel {raw.get('title')!r} comes before the first row")
        else:
            rows[-1][1].append(_panel(raw))
    variables = tuple(
        Variable(
            name=str(v["name"]),
            label=str(v.get("label", v["name"])),
            type=str(v["type"]),
            query=str(v["query"]["query"] if isinstance(v["query"], dict) else v["query"]),
            multi=bool(v.get("multi")),
        )
        for v in document.get("templating", {}).get("list", [])
    )
    return Dashboard(
        title=str(document["title"]),
        description=str(document.get("description", "")),
        variables=variables,
        rows=tuple(Row(title, tuple(panels)) for title, panels in rows),
    )


def _number(value: float, unit: str) -> str:
    if unit == "percentunit":
        return f"{value * 100:g} %"
    if unit == "s":
        return f"{value:g} s"
    if unit == "currencyUSD":
        return f"${value:g}"
    return f"{value:g}"


def _heading(panel: Panel) -> str:
    if panel.type not in PANEL_KINDS:
        raise UnknownPanel(f"panel {panel.title!r}: no name for type {panel.type!r}")
    if panel.unit not in UNITS:
        raise UnknownPanel(f"panel {panel.title!r}: no name for unit {panel.unit!r}")
    kind = ("stacked " if panel.stacked else "") + PANEL_KINDS[panel.type]
    details = [kind, UNITS[panel.unit]]
    if panel.mappings:
        details.append(", ".join(f"{value} {text}" for value, text in panel.mappings))
    elif panel.thresholds:
        steps = ", ".join(f"{c} from {_number(v, panel.unit)}" for c, v in panel.thresholds)
        details.append(f"thresholds: {steps}")
    return f"**{panel.title}** ({'; '.join(d for d in details if d)})."


def _panel_text(panel: Panel) -> list[str]:
    lines = [_heading(panel), ""]
    if panel.description:
        lines += [*textwrap.wrap(panel.description, WIDTH), ""]
    for query in panel.queries:
        if len(panel.queries) > 1:
            lines += [f"`{query.legend}`:", ""]
        lines += ["```promql", query.expr, "```", ""]
    return lines


def render(document: dict[str, Any]) -> str:
    """The Markdown for ``document``."""
    dashboard = parse(document)
    lines = [
        f"# {dashboard.title} dashboard",
        "",
        "<!-- Made by python -m ops.dashboard from ops/grafana/agentfleet.json: edit the JSON",
        "(or the dashboard in Grafana, exported over it) and run that again. -->",
        "",
        *textwrap.wrap(dashboard.description, WIDTH),
        "",
        "Import [`ops/grafana/agentfleet.json`](../grafana/agentfleet.json) into Grafana as",
        "[docs/operations.md](../../docs/operations.md#the-grafana-dashboard) says. Alert rules",
        "on the same queries, with the thresholds the panels draw, are in",
        "[`alerts.yml`](alerts.yml) next to this file.",
        "",
        "Variables:",
        "",
    ]
    for v in dashboard.variables:
        several = ", several or All" if v.multi else ""
        lines.append(f"- `${v.name}` ({v.label}{several}): {v.type} `{v.query}`")
    lines += [
        "",
        "Queries use Grafana's `$__rate_interval` (a rate window that fits the scrape interval",
        "and the zoom) and `$__range` (the dashboard's time range).",
        "",
    ]
    for row in dashboard.rows:
        lines += [f"## {row.title}", ""]
        for panel in row.panels:
            lines += _panel_text(panel)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if the file is out of date"
    )
    args = parser.parse_args(argv)
    wanted = render(load())
    if args.check:
        if DOC.read_text() != wanted:
            print(f"{DOC} is out of date: run python -m ops.dashboard", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
