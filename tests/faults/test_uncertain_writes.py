"""Store writes whose outcome the server cannot know, and attempts at one step that run at
once, under clients that do exactly what each answer says (stepping.py), with offsets and
without.

Redis stopped (SIGSTOP) or killed mid-write: a write sent before it stopped may still be
applied after the server's timeout (it waits in Redis's socket; an append-only file keeps
one whose reply never left). Such a step is never answered "nothing was applied": it is
ABORTED with `sequence_outcome` unknown, and a client with offsets sends it again (applied
once, or answered again), while one without starts the sequence over. Attempts at one step
on two workers at once (a client whose deadline is shorter than a step): one is applied,
the other answered again. No sequence is ever wrong (each is checked against its whole
reference), and no refusal gives a reason that is not true: none here expired, ended early
or was lost. Each scenario prints its counts."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from processes import free_port
from redis_helpers import RedisServer
from stepping import Steppers

from rnnserve.bench.redis_cluster import LocalCluster

CLIENTS = 24
# What a refusal may truly say here: the store did not answer a write, and what follows.
FAULT_REASONS = {
    "outcome unknown",
    "outcome unknown: no replica confirmed",
    "unsure: an earlier outcome unknown",
    "another attempt applied first",
    "changed while it ran",
}


def server_args(store: str, redis_url: str, *more: str) -> list[str]:
    return ["--state-store", store, "--redis-url", redis_url, *more]


def judged(steppers: Steppers, scenario: str) -> None:
    """Prints the scenario's counts; no sequence was wrong, every reason given was true."""
    tally = steppers.tally
    print(f"\n{tally.line(scenario)}")
    assert tally.wrong == [], tally.wrong[:3]
    assert set(tally.reasons) <= FAULT_REASONS, tally.line(scenario)
    if steppers.offsets:  # every step is resolved by sending it again
        assert not tally.refused, tally.line(scenario)
    else:  # a client without offsets is never told to send a step again that may be applied
        assert set(tally.refused) <= {"ABORTED"}, tally.line(scenario)


def pause(redis: RedisServer, how: str) -> None:
    """Stops Redis for 2 s, beyond the store's timeout (1 s): writes sent meanwhile wait
    in Redis, and are applied once it goes on. SIGSTOP stops it whole (a step then fails
    mid-write only when it had loaded before); CLIENT PAUSE WRITE holds only the writes,
    so that every step meanwhile is loaded and then fails mid-write."""
    if how == "SIGSTOP":
        redis.pause()
        time.sleep(2)
        redis.resume()
    else:
        redis.pause_writes(2)
        time.sleep(2)


@pytest.mark.parametrize("offsets", [False, True], ids=["no-offsets", "offsets"])
@pytest.mark.parametrize("how", ["SIGSTOP", "CLIENT PAUSE WRITE"])
@pytest.mark.parametrize("store", ["redis", "owned"])
def test_a_write_sent_to_a_stopped_redis_is_never_said_to_be_unapplied(
    own_redis: RedisServer, start_server, sine_repository: Path, store: str, how: str,
    offsets: bool,
) -> None:  # fmt: skip
    server = start_server(sine_repository, args=server_args(store, own_redis.url))
    with Steppers(server.address, CLIENTS, offsets) as steppers:
        steppers.wait_for_steps(CLIENTS * 5)
        for _ in range(3):
            pause(own_redis, how)
            steppers.wait_for_steps(CLIENTS * 20)  # sequences complete between pauses
    judged(steppers, f"{store} store, Redis stopped ({how}) 2 s thrice, "
                     f"{'with' if offsets else 'no'} offsets")  # fmt: skip


@pytest.mark.parametrize("offsets", [False, True], ids=["no-offsets", "offsets"])
@pytest.mark.parametrize("store", ["redis", "owned"])
def test_a_write_applied_by_a_redis_killed_before_its_reply_is_never_said_to_be_unapplied(
    redis_url: str, tmp_path: Path, start_server, sine_repository: Path, store: str, offsets: bool
) -> None:
    """The append-only file keeps every write Redis applied, whether its reply left or not."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not on PATH"
    redis = RedisServer(binary, free_port(), tmp_path, persistent=True)
    redis.start()
    try:
        server = start_server(sine_repository, args=server_args(store, redis.url))
        with Steppers(server.address, CLIENTS, offsets) as steppers:
            steppers.wait_for_steps(CLIENTS * 5)
            for _ in range(2):
                redis.kill()
                time.sleep(0.5)
                redis.start()
                steppers.wait_for_steps(CLIENTS * 20)  # sequences complete between kills
        judged(steppers, f"{store} store, Redis killed and restarted with its data twice, "
                         f"{'with' if offsets else 'no'} offsets")  # fmt: skip
    finally:
        redis.stop()


@pytest.mark.parametrize("store", ["redis", "owned"])
def test_attempts_at_one_step_on_two_workers_are_applied_once(
    own_redis: RedisServer, start_server, sine_repository: Path, store: str
) -> None:
    """Each step's first attempt waits 20 ms for its answer: its retry, on the client's
    other connection, often reaches the other worker while the first still runs."""
    args = server_args(store, own_redis.url, "--workers", "2")
    server = start_server(sine_repository, args=args)
    with Steppers(server.address, 32, offsets=True, timeout_s=0.02) as steppers:
        steppers.wait_for_steps(32 * 60, timeout_s=240)
    judged(steppers, f"{store} store, 2 workers, attempts at one step at once")
    assert steppers.tally.retries > 0  # attempts did overlap


def test_owned_sequences_go_on_when_redis_restarts_empty_under_attempts_on_two_workers(
    own_redis: RedisServer, start_server, sine_repository: Path
) -> None:
    """Each worker holds its sequences' states and claims them again in the new Redis: none
    is said to be expired, ended, unknown or lost with a process, though attempts at one
    step keep reaching both workers (their sequences go back and forth between them). The
    one true loss: a sequence handed over at that moment, whose state was in Redis alone."""
    args = server_args("owned", own_redis.url, "--workers", "2")
    server = start_server(sine_repository, args=args)
    with Steppers(server.address, 32, offsets=True, timeout_s=0.02) as steppers:
        steppers.wait_for_steps(32 * 10, timeout_s=240)
        for _ in range(2):
            own_redis.kill()
            time.sleep(0.5)
            own_redis.start()  # on the same port, without the data
            steppers.wait_for_steps(32 * 20, timeout_s=240)
    tally = steppers.tally
    print(
        f"\n{tally.line('owned store, 2 workers, Redis restarted empty twice, attempts at once')}"
    )
    assert tally.wrong == [], tally.wrong[:3]
    assert set(tally.reasons) <= {"lost: Redis lost its data"}, tally.line("")
    assert set(tally.refused) <= {"ABORTED"}, tally.line("")


@pytest.mark.parametrize("offsets", [False, True], ids=["no-offsets", "offsets"])
@pytest.mark.parametrize("store", ["redis", "owned"])
def test_a_redis_cluster_failover_mid_write_leaves_no_sequence_wrong(
    start_server, sine_repository: Path, tmp_path: Path, store: str, offsets: bool
) -> None:
    """A master killed (SIGKILL) while two workers write to it, with replica durability
    (an acknowledged write survives a failover): a write cut off mid-failover, or that no
    replica confirmed, is never said to be unapplied. The killed node comes back as the
    promoted replica's replica."""
    with LocalCluster(tmp_path / "cluster", node_timeout_ms=1000, ports=free_port) as cluster:
        args = server_args(store, cluster.url, "--workers", "2", "--state-durability", "replica")
        server = start_server(sine_repository, args=args)
        with Steppers(server.address, CLIENTS, offsets) as steppers:
            steppers.wait_for_steps(CLIENTS * 5)
            victim = cluster.master_ports()[0]
            cluster.kill(victim)
            cluster.wait_failed_over(victim)
            cluster.restart(victim)
            cluster.wait_healthy()
            steppers.wait_for_steps(CLIENTS * 20, timeout_s=240)
    judged(steppers, f"{store} store, 2 workers, a Redis Cluster master killed and failed "
                     f"over, {'with' if offsets else 'no'} offsets")  # fmt: skip
