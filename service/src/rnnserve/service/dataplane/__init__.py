"""The data plane: the protocol-neutral core every front end calls (`DataPlane`).

plane.py      DataPlane, the facade: lifecycle hooks, metadata, infer and stream_infer
lifecycle.py  phases (loading, ready, draining, closed) and the requests in flight
admission.py  whether a request may run, on which version, by which path (the refusals)
configuration.py  a loaded version's configuration as Triton describes it (ModelConfig)
admitted.py   a request admitted to run: its model version, sequence, and where it runs
compute.py    where model work runs: the event loop, compute threads, batchers
timer.py      one request's statistics and metrics, recorded alike for every path
stateless.py  the path of a request outside any session
sequence.py   the path of one request of one sequence (sequence parameters)
rows.py       the path of a multi-session request (control tensors: a session per row)
"""

from rnnserve.service.dataplane.plane import DataPlane

__all__ = ["DataPlane"]
