"""A real scrape of a server's /metrics page, for the tests that read metrics."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str) -> dict[str, float]:
    """Every sample on the /metrics page: 'name{label="v",...}' (labels sorted) -> value."""
    with urllib.request.urlopen(url, timeout=10) as page:
        text = page.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def series(name: str, **labels: str) -> str:
    """The key `scrape` gives a sample: series("x_total", code="OK") -> 'x_total{code="OK"}'."""
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
