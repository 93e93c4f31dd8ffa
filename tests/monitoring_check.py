"""Checks infra/monitoring/ against the metric catalogue: every metric name the Grafana dashboard and the
alert rules query must be one the host exports.

    python tests/monitoring_check.py

The catalogue is the tables of connection-host/METRICS.md: the rows whose type (second column) is counter,
gauge or histogram, named in their first column (in backticks); histograms may also be queried as
NAME_bucket, NAME_sum and NAME_count. `up` (Prometheus's own) is allowed. The dashboard must parse as JSON,
query a Prometheus data source through its `datasource` variable, and have unique panel IDs. Every alert must
fire in at least one test of alerts.test.yml. Prints each failed check and a summary line; exits 1 when a
check failed. Needs PyYAML (in .venv-test/).
"""

import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "infra" / "monitoring"
CATALOGUE = ROOT / "connection-host" / "METRICS.md"
PROMETHEUS_OWN = {"up"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "Inf", "NaN", "inf", "nan"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def catalogue():
    """{name: type} from the rows `| `name` | type | ...` of the catalogue's tables."""
    names = {}
    for line in CATALOGUE.read_text().splitlines():
        m = re.match(r"^\|\s*`([A-Za-z_:][A-Za-z0-9_:]*)`\s*\|\s*([^|]*)\|", line)
        if m and re.match(r"(counter|gauge|histogram)\b", m.group(2).strip()):
            names[m.group(1)] = m.group(2).strip()
    return names


def metric_names(expr):
    """The metric names a PromQL expression selects: what is left once strings, label matchers, ranges,
    grouping label lists, function names, keywords and numbers are taken out."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\boffset\s+\w+", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w.$])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", e):
        if m.group(2) or m.group(1) in KEYWORDS:
            continue
        names.add(m.group(1))
    return names


def unknown(names, known):
    bad = set()
    for name in names:
        if name in known or name in PROMETHEUS_OWN:
            continue
        base = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)), None)
        if base is not None and "histogram" in known.get(base, ""):
            continue
        bad.add(name)
    return sorted(bad)


def main():
    failed = 0

    def check(what, ok, detail=""):
        """Prints failures only: a dashboard has dozens of panels."""
        nonlocal failed
        if not ok:
            print(f"FAILED  {what}" + (f": {detail}" if detail else ""))
            failed += 1

    known = catalogue()
    check(f"catalogue {CATALOGUE.relative_to(ROOT)} lists metrics", len(known) >= 10, f"{len(known)} found")

    try:
        dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    except ValueError as e:
        check("grafana-dashboard.json parses", False, str(e))
        return 1
    variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
    ds = variables.get("datasource", {})
    check("dashboard has a Prometheus datasource variable",
          (ds.get("type"), ds.get("query")) == ("datasource", "prometheus"))
    panels = [p for p in dashboard.get("panels", []) if p.get("type") != "row"]
    ids = [p["id"] for p in dashboard.get("panels", [])]
    check("dashboard panel IDs are unique", len(ids) == len(set(ids)))
    shown = set()
    for panel in panels:
        targets = panel.get("targets", [])
        sources = {json.dumps(t.get("datasource", panel.get("datasource")), sort_keys=True) for t in targets}
        check(f"panel '{panel['title']}' queries the datasource variable",
              bool(targets) and sources == {json.dumps({"type": "prometheus", "uid": "${datasource}"}, sort_keys=True)},
              str(sources))
        names = set().union(*(metric_names(t["expr"]) for t in targets)) if targets else set()
        shown |= names
        bad = unknown(names, known)
        check(f"panel '{panel['title']}' queries catalogue metrics", not bad and bool(names), f"unknown: {bad}")

    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            names = metric_names(rule["expr"])
            bad = unknown(names, known)
            check(f"alert {rule['alert']} queries catalogue metrics", not bad and bool(names), f"unknown: {bad}")

    # promtool passes a rule file whose alerts have no test at all: each must fire in one.
    tests = yaml.safe_load((MONITORING / "alerts.test.yml").read_text())
    fired = {
        case["alertname"] for test in tests["tests"] for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    for group in rules["groups"]:
        for rule in group["rules"]:
            check(f"alert {rule['alert']} fires in a test of alerts.test.yml", rule["alert"] in fired)

    bases = {next((n[: -len(s)] for s in HISTOGRAM_SUFFIXES if n.endswith(s)), n) for n in shown}
    missing = sorted(set(known) - bases)
    if missing:
        print(f"note    catalogue metrics the dashboard does not show: {', '.join(missing)}")
    alerts = sum(len(g["rules"]) for g in rules["groups"])
    print(f"monitoring: {len(panels)} panels and {alerts} alerts checked against {CATALOGUE.relative_to(ROOT)} "
          f"({len(known)} metrics): {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
