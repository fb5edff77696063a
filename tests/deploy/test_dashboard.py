"""The Grafana dashboard and its provisioning: every PromQL expression names only metrics a
running server really exports, and the panels the operators need are there."""

from __future__ import annotations

import json

import pytest
import yaml
from deploytools import DASHBOARD, ROOT, expressions, unknown_names

PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"


def unknown_metrics(dashboard: dict, exported: set[str]) -> set[str]:
    return unknown_names(expressions(dashboard), exported)


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_every_metric_in_the_dashboard_is_exported(dashboard: dict, exported: set[str]) -> None:
    assert expressions(dashboard)
    assert unknown_metrics(dashboard, exported) == set()


def test_a_misspelt_metric_is_caught(dashboard: dict, exported: set[str]) -> None:
    broken = json.loads(
        DASHBOARD.read_text().replace("rnnserve_requests_total", "rnnserve_request_total")
    )
    assert unknown_metrics(broken, exported) == {"rnnserve_request_total"}


@pytest.mark.parametrize(
    ("title_word", "metric"),
    [
        ("requests per second", "rnnserve_requests_total"),
        ("requests in flight", "rnnserve_requests_in_flight"),
        ("state store", "rnnserve_state_store_up"),
        ("latency", "rnnserve_request_duration_seconds_bucket"),
        ("batch size", "rnnserve_batch_size"),
        ("active sessions", "rnnserve_sessions_active"),
        ("errors by code", "rnnserve_requests_total"),
    ],
)
def test_has_the_panels_operators_need(dashboard: dict, title_word: str, metric: str) -> None:
    panel = next(p for p in dashboard["panels"] if title_word in p["title"].lower())
    assert any(metric in target["expr"] for target in panel["targets"])


def test_latency_panel_shows_quantiles_per_model_of_successful_inference(dashboard: dict) -> None:
    panel = next(p for p in dashboard["panels"] if p["title"].startswith("Inference latency"))
    exprs = [t["expr"] for t in panel["targets"]]
    assert [expr.split(",")[0] for expr in exprs] == [
        f"histogram_quantile({q}" for q in ("0.5", "0.9", "0.99")
    ]
    assert all("sum by (le, model)" in expr and 'code="OK"' in expr for expr in exprs)
    assert all(t["legendFormat"].startswith("{{model}}") for t in panel["targets"])


def test_panels_use_the_provisioned_datasource(dashboard: dict) -> None:
    [source] = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {source["uid"]}


def test_dashboard_provider_points_at_the_mounted_folder() -> None:
    [provider] = yaml.safe_load((PROVISIONING / "dashboards" / "rnnserve.yml").read_text())[
        "providers"
    ]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_prometheus_scrapes_the_metrics_port() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["rnnserve:8002"]
