"""The local lease: a holder knows it has lost its lock before anyone else can get it."""

from __future__ import annotations

import threading
import time
from typing import Callable, Dict, List

import pytest

import lockd
from helpers import PATIENCE, Proxy, Server, wait_until

Connect = Callable[..., lockd.Client]


def test_the_margin_formula() -> None:
    assert lockd.lease_margin(15.0) == pytest.approx(1.5 + 0.15)
    assert lockd.lease_margin(1.0) == pytest.approx(0.1 + 0.01)
    assert lockd.lease_margin(0.3) == pytest.approx(0.05 + 0.003)
    assert lockd.lease_margin(0.05) == pytest.approx(0.025 + 0.0005)
    assert lockd.local_deadline(100.0, 2.0) == pytest.approx(100.0 + 2.0 - 0.22)
    for lease in (0.01, 0.1, 1.0, 15.0, 300.0):
        assert 0 < lockd.lease_margin(lease) < lease


def test_keepalive_keeps_a_short_lease_far_from_its_deadline(connect: Connect) -> None:
    client = connect(lease=0.5)
    other = connect()
    assert client.lease == 0.5
    lock = client.lock("kept")
    assert lock.acquire()
    lowest = client.lease
    end = time.monotonic() + 1.5  # three leases
    while time.monotonic() < end:
        lowest = min(lowest, lock.valid_for())
        time.sleep(0.01)
    assert not lock.lost.is_set() and lock.locked()
    # Pings at a quarter of the lease keep well over a quarter of it in hand.
    assert lowest > client.lease / 4, lowest
    assert not other.lock("kept").acquire(blocking=False)
    lock.release()


def test_a_blackholed_holder_knows_before_the_next_holder_is_granted(
    server: Server, connect: Connect
) -> None:
    proxy = Proxy(server.addr)
    try:
        holder = connect(proxy.addr, lease=1.0)
        other = connect()
        lock = holder.lock("job")
        assert lock.acquire()
        held_token = lock.token
        assert held_token is not None

        times: Dict[str, float] = {}
        tokens: List[int] = []

        def watch_lost() -> None:
            if lock.lost.wait(PATIENCE):
                # When the client set the event (this thread may wake a little later).
                assert holder._lost_at is not None
                times["lost"] = holder._lost_at

        def next_holder() -> None:
            waiting = other.lock("job")
            if waiting.acquire(timeout=PATIENCE):
                times["granted"] = time.monotonic()
                assert waiting.token is not None
                tokens.append(waiting.token)
                waiting.release()

        watcher = threading.Thread(target=watch_lost)
        watcher.start()
        waiter = threading.Thread(target=next_holder)
        waiter.start()
        wait_until(lambda: len(other.status("job")[0].waiters) == 1, "the next holder in line")

        proxy.blackhole()
        times["cut"] = time.monotonic()
        # The server can expire the session no earlier than a lease after it last heard from
        # the holder, which was after the newest request the server answered was sent.
        earliest_expiry = holder._heard_since + holder.lease
        watcher.join(PATIENCE)
        waiter.join(PATIENCE)

        times["deadline"] = lockd.local_deadline(earliest_expiry - holder.lease, holder.lease)
        assert "lost" in times and "granted" in times, times
        print(
            {k: round(v - times["cut"], 4) for k, v in times.items()},
            earliest_expiry - times["cut"],
        )
        assert times["lost"] >= times["deadline"] - 0.001, "not before the local deadline"
        assert times["lost"] < times["granted"], times
        assert times["lost"] < earliest_expiry, (times, earliest_expiry)
        assert tokens and tokens[0] > held_token
        assert holder.lost.is_set() and not lock.locked() and lock.valid_for() == 0
        with pytest.raises(lockd.LockLost):
            lock.read()
        with pytest.raises(lockd.ConnectionLost):
            holder.ping()
        with pytest.raises(lockd.LockLost):
            lock.release()
        with pytest.raises(lockd.ConnectionLost):
            lock.acquire()  # a lost session is final
        assert lock.lost.is_set()
    finally:
        proxy.close()


def test_a_lost_lock_in_a_with_block_raises_lock_lost(server: Server, connect: Connect) -> None:
    proxy = Proxy(server.addr)
    try:
        holder = connect(proxy.addr, lease=0.3)
        with pytest.raises(lockd.LockLost):
            with holder.lock("blk") as lock:
                proxy.blackhole()
                assert lock.lost.wait(PATIENCE)
    finally:
        proxy.close()


def test_a_dead_server_loses_the_session_at_once(server: Server, connect: Connect) -> None:
    client = connect(lease=5.0)
    lock = client.lock("dead")
    assert lock.acquire()
    blocked: List[BaseException] = []
    other = client.lock("dead-waiting")
    busy = connect().lock("dead-waiting")
    assert busy.acquire()

    def wait() -> None:
        try:
            other.acquire()
        except BaseException as err:
            blocked.append(err)

    thread = threading.Thread(target=wait)
    thread.start()
    wait_until(lambda: len(client.status("dead-waiting")[0].waiters) == 1, "the waiter")
    started = time.monotonic()
    server.kill()
    assert lock.lost.wait(PATIENCE)
    assert time.monotonic() - started < 2.0, "an ended connection is noticed at once"
    thread.join(PATIENCE)
    assert blocked and isinstance(blocked[0], lockd.ConnectionLost)
