"""A three-node cluster: the leader dies while a lock is held and others wait in line."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

import lockd
from helpers import PATIENCE, Cluster, wait_until


@pytest.fixture
def cluster(lockd_bin: str, tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(lockd_bin, tmp_path, ["--min-lease-ms", "100"])
    try:
        yield cluster
    finally:
        cluster.stop()


def test_the_lock_survives_a_leader_kill_and_waiters_keep_their_places(cluster: Cluster) -> None:
    leader = cluster.leader()
    clients: List[lockd.Client] = []

    def connect() -> lockd.Client:
        # Every node's address, the leader's not first: the client follows not_leader.
        addrs = cluster.addrs[leader + 1 :] + cluster.addrs[: leader + 1]
        client = lockd.Client(addrs, lease=3.0)
        clients.append(client)
        return client

    try:
        holder = connect()
        lock = holder.lock("jobs/nightly")
        assert lock.acquire()
        lock.write("before")
        token = lock.token
        assert token is not None

        positions: Dict[str, List[int]] = {"first": [], "second": []}
        tokens: Dict[str, int] = {}
        failures: List[BaseException] = []
        waiting = {name: connect() for name in positions}

        def wait_turn(name: str) -> None:
            try:
                mine = waiting[name].lock("jobs/nightly", on_queued=positions[name].append)
                assert mine.acquire(timeout=60)
                assert mine.token is not None
                tokens[name] = mine.token
                mine.release()
            except BaseException as err:
                failures.append(err)

        threads = []
        for name in ("first", "second"):
            thread = threading.Thread(target=wait_turn, args=(name,))
            thread.start()
            threads.append(thread)
            wait_until(lambda: bool(positions[name]), f"the {name} waiter in line")
        assert positions == {"first": [1], "second": [2]}

        cluster.kill(leader)
        new_leader = cluster.leader(not_=[leader])
        assert new_leader != leader

        # The holder's session resumed on the new leader: same lock, same token, same value.
        assert lock.read() == "before"
        lock.write("after")
        assert lock.token == token and lock.locked() and not lock.lost.is_set()
        assert not holder.lost.is_set()

        observer = connect()
        assert observer.validate("jobs/nightly", token)
        assert not observer.lock("jobs/nightly").acquire(blocking=False)
        [entry] = observer.status("jobs/nightly")
        assert [h.session for h in entry.holders] == [holder.session]
        assert [w.session for w in entry.waiters] == [
            waiting["first"].session,
            waiting["second"].session,
        ]
        assert tokens == {}, "nobody was granted while the holder held the lock"

        lock.release()
        for thread in threads:
            thread.join(PATIENCE)
        assert not failures, failures
        # First in line was granted first: tokens grow with every grant.
        assert token < tokens["first"] < tokens["second"]
        assert not any(client.lost.is_set() for client in clients)
        with holder.lock("jobs/nightly") as again:
            assert again.read() == "after"
    finally:
        for client in clients:
            client.close()


def test_a_session_is_lost_when_no_leader_comes_within_the_local_lease(cluster: Cluster) -> None:
    leader = cluster.leader()
    with lockd.Client(cluster.servers(), lease=1.0) as client:
        lock = client.lock("orphan")
        assert lock.acquire()
        cluster.kill(leader)
        cluster.kill((leader + 1) % 3)  # no majority: no leader can be elected
        assert lock.lost.wait(PATIENCE)
        assert client.lost.is_set() and lock.valid_for() == 0
        with pytest.raises(lockd.ConnectionLost):
            client.ping()


def test_a_given_up_session_is_released_when_a_leader_returns(cluster: Cluster) -> None:
    """A failover longer than the local lease loses the lock to this client; the new leader
    still gives the session a fresh lease, so the client goes back to release what it gave up
    rather than leave it held for a whole lease."""
    import time

    leader = cluster.leader()
    follower = (leader + 1) % 3
    with lockd.Client(cluster.servers(), lease=3.0) as holder:
        lock = holder.lock("given-up")
        assert lock.acquire()
        cluster.kill(leader)
        cluster.kill(follower)  # no majority: no leader until the follower is back
        assert lock.lost.wait(PATIENCE)
        cluster.restart(follower)
        cluster.leader(not_=[leader])
        elected = time.monotonic()
        live = [cluster.addrs[i] for i in range(3) if i != leader]
        with lockd.Client(live, lease=3.0) as observer:
            wait_until(lambda: observer.status("given-up")[0].holders == [], "the lock given back")
            # Well within the fresh 3 s lease the new leader gave the session.
            assert time.monotonic() - elected < 2.0
            assert observer.lock("given-up").acquire(timeout=5)
