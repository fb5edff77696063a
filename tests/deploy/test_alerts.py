"""The alerting rules (deploy/prometheus/alerts.yml): valid for promtool, each alert fires on
the trouble it names and a healthy server fires none (promtool's rule unit tests), every
metric they use is one a running server exports, and the compose Prometheus loads them."""

from __future__ import annotations

from pathlib import Path

import yaml
from deploytools import ROOT, run, unknown_names

PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
UNIT_TESTS = Path(__file__).with_name("alerts_test.yml")


def rules() -> list[dict]:
    return [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]


def test_promtool_checks_the_rules(promtool: Path) -> None:
    checked = run(promtool, "check", "rules", ALERTS)

    assert checked.code == 0, checked.output
    assert f"SUCCESS: {len(rules())} rules found" in checked.output


def test_promtool_rejects_a_broken_rule(promtool: Path, tmp_path: Path) -> None:
    broken = tmp_path / "alerts.yml"
    broken.write_text(ALERTS.read_text().replace("> 0.01", "> > 0.01", 1))

    assert run(promtool, "check", "rules", broken).code != 0


def test_each_alert_fires_on_its_trouble_and_none_on_health(promtool: Path) -> None:
    tested = run(promtool, "test", "rules", UNIT_TESTS)

    assert tested.code == 0, tested.output
    fired = {test["alertname"] for case in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
             for test in case["alert_rule_test"] if test["exp_alerts"]}  # fmt: skip
    assert fired == {rule["alert"] for rule in rules()}


def test_the_alerts_cover_what_operators_asked_for() -> None:
    exprs = {rule["alert"]: rule["expr"] for rule in rules()}

    assert "rnnserve_requests_total" in exprs["RnnserveHighErrorRatio"]
    assert "histogram_quantile(0.99" in exprs["RnnserveHighInferenceLatency"]
    assert "rnnserve_sessions_limit" in exprs["RnnserveSessionsNearLimit"]
    assert "rnnserve_state_store_up" in exprs["RnnserveStateStoreUnreachable"]
    assert "rnnserve_start_time_seconds" in exprs["RnnserveRestarted"]


def test_every_metric_in_the_alerts_is_exported(exported: set[str]) -> None:
    assert unknown_names([rule["expr"] for rule in rules()], exported) == set()


def test_the_compose_prometheus_loads_the_rules(promtool: Path) -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    checked = run(promtool, "check", "config", PROMETHEUS / "prometheus.yml")

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["prometheus"]["volumes"]

    assert config["rule_files"] == ["alerts.yml"]  # beside prometheus.yml, as compose mounts it
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    assert checked.code == 0, checked.output
    assert "SUCCESS: 1 rule files found" in checked.output
