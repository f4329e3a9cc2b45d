"""contrib/prometheus: the rules pass ``promtool`` (and their unit tests), the scrape config
is valid, and the rules and the Grafana dashboard use only metrics we export (derived from
the live kernel's descriptors) in PromQL that a real Prometheus parses."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.kvm.conftest import KVM_REASON
from vmstats.demo.vm import DemoVM
from vmstats.exporter.mapping import Kind, MetricTable
from vmstats.testing.prometheus import Prometheus, prometheus_unavailable_reason, promtool

CONTRIB = Path(__file__).resolve().parents[2] / "contrib" / "prometheus"
PROMETHEUS_REASON = prometheus_unavailable_reason()
requires_prometheus = pytest.mark.skipif(PROMETHEUS_REASON is not None,
                                         reason=f"no Prometheus: {PROMETHEUS_REASON}")  # fmt: skip
METRIC = re.compile(r"(?<![\w:])((?:kvm|vmstats)_[a-z0-9_]+)(?![\w:])")  # not recorded names
DASHBOARD: dict[str, Any] = json.loads((CONTRIB / "grafana-dashboard.json").read_text())


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in DASHBOARD["panels"] for t in p["targets"]]


def rule_exprs() -> list[str]:
    """The ``expr`` of every rule: one line, or a folded block (``>``) of deeper lines."""
    out: list[str] = []
    lines = (CONTRIB / "rules.yml").read_text().splitlines()
    for number, line in enumerate(lines):
        key, _, value = line.strip().partition(" ")
        if key != "expr:":
            continue
        if value.strip() != ">":
            out.append(value.strip())
            continue
        depth = len(line) - len(line.lstrip())
        block = []
        for following in lines[number + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= depth:
                break
            block.append(following.strip())
        out.append(" ".join(block).strip())
    return out


@pytest.mark.prometheus
@requires_prometheus
@pytest.mark.parametrize("args", [["check", "rules", "rules.yml"],
                                  ["test", "rules", "rules_test.yml"],
                                  ["check", "config", "prometheus.yml"]])  # fmt: skip
def test_promtool_accepts_contrib(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CONTRIB)
    result = promtool(*args)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert b"SUCCESS" in result.stdout


def test_the_dashboard_is_well_formed() -> None:
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    assert DASHBOARD["uid"]
    assert DASHBOARD["title"]
    variables = {v["name"] for v in DASHBOARD["templating"]["list"]}
    assert {"datasource", "vm"} <= variables
    for panel in DASHBOARD["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert grid["w"] > 0, panel["title"]
        assert grid["h"] > 0, panel["title"]
        assert panel["type"] in {"timeseries", "stat", "heatmap"}
        assert panel["targets"]
        for target in panel["targets"]:
            assert target["expr"].strip()
            assert target["refId"]


@pytest.mark.kvm
@pytest.mark.skipif(KVM_REASON is not None, reason=f"no usable KVM: {KVM_REASON}")
def test_rules_and_dashboard_use_only_metrics_we_export() -> None:
    with DemoVM(1, rate=0) as vm:
        table = MetricTable().of(vm.provider.schemas())
    exported = {"vmstats_up", "vmstats_vm_info", "vmstats_scrape_duration_seconds"}
    for metric in table.values():
        if metric.kind is Kind.COUNTER:
            exported.add(metric.name + "_total")
        elif metric.kind is Kind.HISTOGRAM:
            exported |= {metric.name + s for s in ("_bucket", "_sum", "_count")}
        else:
            exported.add(metric.name)
    used = {m for expr in dashboard_exprs() + rule_exprs() for m in METRIC.findall(expr)}
    assert used
    assert used <= exported, used - exported


@pytest.mark.prometheus
@requires_prometheus
def test_every_dashboard_and_rule_query_parses_in_prometheus() -> None:
    assert len(rule_exprs()) == 9
    with Prometheus([], interval=15) as prometheus:
        for expr in dashboard_exprs() + rule_exprs():
            query = expr.replace("$__rate_interval", "1m").replace("$vm", ".*")
            prometheus.query(query)  # an unparsable query is an error reply
