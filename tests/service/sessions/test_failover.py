"""A Redis Cluster master killed mid-run: sequences step through two server processes (each
step on the other one, so every step reads and writes the cluster: the redis store's state,
the owned store's hand-over), with `--state-durability replica`; a master is killed with
SIGKILL, its replica takes over, and the killed node comes back as that replica's replica.
Every sequence continues exactly where it was (`sequence_offset`: no step lost, none
applied twice) or fails with a retryable error that the client library retries; none is
answered wrongly."""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from processes import free_port
from redis.crc import key_slot

from rnnserve.bench.redis_cluster import LocalCluster
from rnnserve.client.client import RnnClient
from rnnserve.client.retry import RetryPolicy
from rnnserve.client.sequence import SequenceSession
from rnnserve.service.sessions import SessionKey
from rnnserve.service.sessions.redis.keys import Keyspace, member
from rnnserve.service.types import ANONYMOUS

SEQUENCES = 12
CHUNKS = [(start, start + 3) for start in range(0, 60, 3)]  # 20 steps of 3
MODEL = "sine-lstm"
RETRY = RetryPolicy(max_attempts=400, initial_backoff_s=0.02, max_backoff_s=0.25)
WAIT_S = 120
# Background loops that log a Redis outage and carry on (their handling of store faults is
# not this test's subject): any other ERROR line would be a request answered INTERNAL.
BACKGROUND_ERRORS = ("sweeping expired sessions failed", "serving a hand-over request failed")
pytestmark = pytest.mark.slow  # thousands of steps through two servers and a failover


def sequence_id(index: int) -> str:
    return f"failover-{index}"


def master_of_sequence(cluster: LocalCluster, index: int) -> int:
    """The master holding sequence `index`'s keys in the servers' namespace."""
    key = SessionKey(ANONYMOUS, MODEL, "1", sequence_id(index))
    stored = Keyspace("rnnserve", cluster=True).key("state", member(key))
    return cluster.master_of(key_slot(stored.encode()))


@pytest.mark.parametrize("store", ["redis", "owned"])
def test_a_master_killed_mid_run_loses_no_acknowledged_step(
    start_server, sine_repository: Path, tmp_path: Path, store: str
) -> None:
    with LocalCluster(tmp_path / "cluster", node_timeout_ms=1000, ports=free_port) as cluster:
        args = ["--state-store", store, "--redis-url", cluster.url,
                "--state-durability", "replica"]  # fmt: skip
        servers = [start_server(sine_repository, args=args) for _ in range(2)]
        rng = np.random.default_rng(17)
        xs = [rng.normal(0, 1, 60).astype(np.float32) for _ in range(SEQUENCES)]
        with RnnClient(servers[0].address) as client:
            wholes = [client.infer(MODEL, {"x": x[None, :, None]}, ["y"])["y"] for x in xs]
        answered, third, killed = itertools.count(1), threading.Event(), threading.Event()
        after_kill: list[int] = []  # steps answered once the master was dead
        sessions: list[SequenceSession] = []

        def sequence(index: int) -> np.ndarray:
            clients = [RnnClient(server.address, timeout_s=30) for server in servers]
            session = SequenceSession(clients[0], MODEL, sequence_id(index), retry=RETRY)
            sessions.append(session)
            pieces = []
            for number, (begin, end) in enumerate(CHUNKS):
                session.client = clients[number % 2]  # each step on the other server
                last = number == len(CHUNKS) - 1
                pieces.append(session.step({"x": xs[index][None, begin:end, None]}, ["y"],
                                           end=last)["y"])  # fmt: skip
                if next(answered) >= SEQUENCES * len(CHUNKS) // 3:
                    third.set()
                if killed.is_set():
                    after_kill.append(number)
            assert session.offset == 60
            for one in clients:
                one.close()
            return np.concatenate(pieces, axis=1)

        with ThreadPoolExecutor(SEQUENCES) as pool:
            results = [pool.submit(sequence, index) for index in range(SEQUENCES)]
            assert third.wait(timeout=WAIT_S), "the sequences never got a third of the way"
            victim = master_of_sequence(cluster, 0)  # at least sequence 0 lives there
            cluster.kill(victim)
            killed.set()
            cluster.wait_failed_over(victim)
            # The promoted replica has no replica of its own: with replica durability its
            # writes are not acknowledged (UNAVAILABLE, retried) until the killed node is
            # back as its replica.
            cluster.restart(victim)
            cluster.wait_healthy()
            for got, whole in zip(results, wholes, strict=True):
                np.testing.assert_allclose(got.result(timeout=WAIT_S), whole, rtol=0, atol=1e-5)
        for server in servers:
            assert server.stop() == 0, server.log()[-4000:]
    assert after_kill, "every step was answered before the kill: the failover was missed"
    assert sum(session.retries for session in sessions) > 0  # some step met the failover
    for server in servers:
        errors = [
            line
            for line in server.log().splitlines()
            if " ERROR " in line and not any(known in line for known in BACKGROUND_ERRORS)
        ]
        assert not errors, server.log()[-4000:]
