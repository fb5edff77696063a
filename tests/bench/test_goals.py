"""The benchmark page's goals: a ratio of a figure and its floor, judged only when one
`rnnserve bench` run measured both."""

from __future__ import annotations

from rnnserve.bench import goals
from rnnserve.bench.report import Figure, ScenarioResult


def _scenario(
    name: str, label: str, rps: float, invocation: str | None, date: str, command: str = ""
) -> ScenarioResult:
    environment = {"date": date} | ({"invocation": invocation} if invocation else {})
    return ScenarioResult(
        name=name,
        title=name,
        description="",
        figures=[Figure(label, {}, [{"rps": rps}])],
        environment=environment,
        command=command,
    )


def _unary_goal(figure: ScenarioResult, floor: ScenarioResult) -> str:
    lines = goals.evaluate([figure, floor])
    return next(line for line in lines if "ModelInfer at 64 clients, steps/s" in line)


def _sessions(invocation: str | None, date: str, command: str = "") -> ScenarioResult:
    return _scenario("streams", "rnnserve ModelInfer x64", 700, invocation, date, command)


def _transport(invocation: str | None, date: str, command: str = "") -> ScenarioResult:
    return _scenario("streams", "echo ModelInfer x64", 1000, invocation, date, command)


def test_a_figure_and_its_floor_of_one_run_are_judged() -> None:
    line = _unary_goal(
        _sessions("run 1", "2026-12-01T07:40:00+0000"),
        _transport("run 1", "2026-12-01T07:30:00+0000"),
    )

    assert line.endswith("0.70× (goal ≥ 0.6×) — met.")


def test_a_floor_from_another_run_is_not_judged_against() -> None:
    line = _unary_goal(
        _sessions("run 2", "2026-12-01T07:40:00+0000"),
        _transport("run 1", "2026-11-23T15:10:00+0000"),
    )

    assert "0.70× (goal ≥ 0.6×) — not judged" in line
    assert "2026-12-01T07:40:00+0000" in line and "2026-11-23T15:10:00+0000" in line
    assert "met" not in line


def test_files_written_before_runs_were_named_count_as_one_run_by_command_and_hour() -> None:
    command = "rnnserve bench --runs 3"
    sessions = _sessions(None, "2026-11-23T15:16:05+0000", command)

    same = _unary_goal(sessions, _transport(None, "2026-11-23T15:10:46+0000", command))
    other = _unary_goal(sessions, _transport(None, "2026-11-23T15:10:46+0000", "rnnserve bench"))
    later = _unary_goal(sessions, _transport(None, "2026-11-23T17:10:46+0000", command))

    assert same.endswith("— met.")
    assert "not judged" in other and "not judged" in later
