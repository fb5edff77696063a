"""What a `rnnserve bench` invocation asks of every scenario."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Options:
    out: Path  # where JSON, markdown and plots go
    workdir: Path  # scratch space: server logs, temporary model repositories
    repository: Path  # models to serve and time; built here when missing
    runs: int  # repetitions of every figure; medians are reported
    quick: bool  # tiny sizes and short durations, for the smoke test
    duration_s: float  # k6 measurement per figure
    warmup_s: float
    command: str  # the command line, quoted beside every figure
    soak_s: float = 60.0  # the soak's length (--soak-seconds)

    @property
    def model_name(self) -> str:
        """The model every server scenario drives: the goals are stated for an LSTM."""
        return "sine-lstm"
