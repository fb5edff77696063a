"""The issues' goals, each read as a ratio of two figures of the same run folder, judged
only when both come from one `rnnserve bench` run."""

from __future__ import annotations

from datetime import datetime, timedelta

from rnnserve.bench.report import DATE, Figure, ScenarioResult
from rnnserve.bench.streams import DELAYED, PINNED, SLEEPING, started_with

Found = tuple[ScenarioResult, Figure] | None


def _find(results: list[ScenarioResult], scenario: str, label: str) -> Found:
    for result in results:
        if result.name == scenario:
            figure = next((f for f in result.figures if f.label == label), None)
            if figure is not None:
                return result, figure
    return None


def _ratio_goal(
    text: str,
    found: Found,
    floor_found: Found,
    metric: str,
    limit: float,
    at_most: bool,
    floor_metric: str = "",
) -> str:
    if found is None or floor_found is None:
        return f"{text}: not measured in this folder."
    (result, figure), (floor_result, floor) = found, floor_found
    ratio = figure.median[metric] / floor.median[floor_metric or metric]
    bound = "≤" if at_most else "≥"
    measured = f"{text}: {ratio:.2f}× (goal {bound} {limit}×)"
    if not _one_run(result, floor_result):  # another day's floor says nothing of this figure
        return (
            f"{measured} — not judged: the figure ({result.environment.get('date')}) and its "
            f"floor ({floor_result.environment.get('date')}) come from different "
            "`rnnserve bench` runs; run both scenarios in one."
        )
    met = ratio <= limit if at_most else ratio >= limit
    return f"{measured} — {'met' if met else 'NOT met'}."


def _one_run(first: ScenarioResult, second: ScenarioResult) -> bool:
    """Whether one `rnnserve bench` process measured both scenarios; for files written
    before runs were named, whether the same command wrote both within an hour."""
    if first is second:
        return True
    named = first.environment.get("invocation"), second.environment.get("invocation")
    if None not in named:
        return named[0] == named[1]
    if first.command != second.command:
        return False
    dates = [datetime.strptime(r.environment["date"], DATE) for r in (first, second)]
    return abs(dates[0] - dates[1]) < timedelta(hours=1)


def _difference_goal(text: str, found: Found, floor_found: Found, metric: str, limit: float) -> str:
    """A figure's metric beyond its floor's (the server's CPU per request beyond the echo
    server's), at most `limit`."""
    if found is None or floor_found is None:
        return f"{text}: not measured in this folder."
    (result, figure), (floor_result, floor) = found, floor_found
    beyond = figure.median.get(metric, 0.0) - floor.median.get(metric, 0.0)
    measured = f"{text}: {beyond:.0f} µs (goal ≤ {limit:.0f} µs)"
    if not _one_run(result, floor_result):
        return f"{measured} — not judged: the figure and its floor come from different runs."
    return f"{measured} — {'met' if beyond <= limit else 'NOT met'}."


def _unary_goals(results: list[ScenarioResult], server: str) -> list[str]:
    """The goals of one step per ModelInfer, for `server`."""
    setting = started_with(server)
    ours_64 = _find(results, "streams", f"{server} ModelInfer x64")
    echo_64 = _find(results, "streams", "echo ModelInfer x64")
    return [
        _difference_goal(
            f"Server CPU per step beyond the echo floor's, one step per ModelInfer at 64 "
            f"clients{setting}",
            ours_64,
            echo_64,
            "server_cpu_us_per_request",
            130.0,
        ),
        _ratio_goal(
            f"One step per ModelInfer at 64 clients{setting}, steps/s over the echo floor's "
            "requests/s",
            ours_64,
            echo_64,
            "rps",
            0.6,
            at_most=False,
        ),
        _ratio_goal(
            f"No collapse under concurrency{setting}: one step per ModelInfer, steps/s at 64 "
            "clients over steps/s at 16",
            ours_64,
            _find(results, "streams", f"{server} ModelInfer x16"),
            "rps",
            1.0,
            at_most=False,
        ),
        _ratio_goal(
            f"One client, ModelInfer step p50{setting} over the echo floor's p50",
            _find(results, "streams", f"{server} one session ModelInfer (probe)"),
            _find(results, "streams", "echo one session ModelInfer (probe)"),
            "p50_ms",
            1.5,
            at_most=True,
        ),
    ]


def _stream_goal(results: list[ScenarioResult], server: str) -> str:
    return _ratio_goal(
        f"A stream per session at 64 sessions{started_with(server)}, steps/s over the "
        "streaming echo's messages/s at 64",
        _find(results, "streams", f"{server} ModelStreamInfer x64"),
        _find(results, "streams", "echo ModelStreamInfer x64"),
        "rps",
        0.6,
        at_most=False,
    )


def evaluate(results: list[ScenarioResult]) -> list[str]:
    """Issue 27's goals, read in scenario 9 (streams), where rnnserve and the echo floor run
    side by side in one run, and the guarantees' own goals."""
    idle = _find(results, "memory", "100,000 idle sessions")
    return [
        *_unary_goals(results, "rnnserve"),
        *_unary_goals(results, DELAYED),
        *_unary_goals(results, PINNED),
        *_unary_goals(results, SLEEPING),
        *(_stream_goal(results, server) for server in ("rnnserve", PINNED, SLEEPING)),
        _ratio_goal(
            "Multi-session ModelInfer (64 rows, 16 clients), session-steps/s over the echo "
            "floor's requests/s at 16",
            _find(results, "streams", "rnnserve ModelInfer x16, 64 rows each"),
            _find(results, "streams", "echo ModelInfer x16"),
            "session_steps_per_s",
            20.0,
            at_most=False,
            floor_metric="rps",
        ),
        _ratio_goal(
            "Step offsets: 64-session steps/s with sequence_offset on every step over "
            "plaintext's without",
            _find(results, "security", "offsets, 64 sessions"),
            _find(results, "security", "plaintext, 64 sessions"),
            "rps",
            0.95,
            at_most=False,
        ),
        _ratio_goal(
            "Token check: 64-session steps/s over TLS with bearer tokens over TLS's without",
            _find(results, "security", "TLS + token, 64 sessions"),
            _find(results, "security", "TLS, 64 sessions"),
            "rps",
            0.95,
            at_most=False,
        ),
        _ratio_goal(
            "100,000 idle sessions, bytes per session over raw state bytes",
            idle,
            idle,
            "bytes_per_session",
            2.0,
            at_most=True,
            floor_metric="raw_state_bytes",
        ),
    ]
