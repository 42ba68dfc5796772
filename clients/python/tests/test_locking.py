"""The single-server behaviour of the threaded client: locks, queues, values, errors."""

from __future__ import annotations

import threading
import time
from typing import Callable, Dict, List

import pytest

import lockd
from helpers import Server, wait_until

Connect = Callable[..., lockd.Client]


def waiters(client: lockd.Client, name: str) -> int:
    return len(client.status(name)[0].waiters)


def test_critical_section_token_value_and_release(connect: Connect) -> None:
    client = connect(name="test")
    assert client.session > 0 and client.lease == 2.0
    with client.lock("jobs/nightly", timeout=5) as lock:
        assert lock.locked() and lock.token is not None
        assert 0 < lock.valid_for() <= client.lease
        assert lock.read() is None
        lock.write("généré ✓")
        assert lock.read() == "généré ✓"
        first = lock.token
        assert client.validate("jobs/nightly", first)
    assert not lock.locked() and lock.token is None and lock.valid_for() == 0
    assert not client.validate("jobs/nightly", first)
    assert not lock.lost.is_set(), "a released lock is not lost"
    # The same Lock can be taken again, like threading.Lock; tokens grow.
    assert lock.acquire()
    assert lock.token is not None and lock.token > first
    assert lock.read() == "généré ✓"
    lock.release()
    with pytest.raises(lockd.NotHeld):
        lock.release()
    with pytest.raises(lockd.NotHeld):
        lock.read()


def test_fifo_order_of_waiters(connect: Connect) -> None:
    holder = connect()
    held = holder.lock("fifo")
    assert held.acquire()
    tokens: Dict[int, int] = {}
    failures: List[BaseException] = []
    threads = []
    clients = [connect() for _ in range(5)]

    def wait_turn(index: int, client: lockd.Client) -> None:
        try:
            lock = client.lock("fifo")
            assert lock.acquire(timeout=20)
            assert lock.token is not None
            tokens[index] = lock.token
            lock.release()
        except BaseException as err:  # reported by the main thread
            failures.append(err)

    # Queue the waiters one after the other: each is in line before the next asks.
    for index, client in enumerate(clients):
        thread = threading.Thread(target=wait_turn, args=(index, client))
        thread.start()
        threads.append(thread)
        wait_until(lambda: waiters(holder, "fifo") == index + 1, f"waiter {index} in line")
    held.release()
    for thread in threads:
        thread.join(20)
    assert not failures, failures
    # Grants are strictly ordered by token: each waiter got the lock after the one before it.
    assert [tokens[i] for i in range(5)] == sorted(tokens.values())
    assert len(set(tokens.values())) == 5


def test_on_queued_reports_the_position(connect: Connect) -> None:
    holder, first, second = connect(), connect(), connect()
    held = holder.lock("line")
    assert held.acquire()
    positions: Dict[str, List[int]] = {"first": [], "second": []}
    done = []

    def wait(client: lockd.Client, key: str) -> None:
        lock = client.lock("line", on_queued=positions[key].append)
        with lock:
            done.append(key)

    a = threading.Thread(target=wait, args=(first, "first"))
    a.start()
    wait_until(lambda: positions["first"] == [1], "the first waiter's position")
    b = threading.Thread(target=wait, args=(second, "second"))
    b.start()
    wait_until(lambda: positions["second"] == [2], "the second waiter's position")
    held.release()
    a.join(10)
    b.join(10)
    assert sorted(done) == ["first", "second"]


def test_shared_locks_and_a_queued_writer(connect: Connect) -> None:
    r1, r2, w, r3 = connect(), connect(), connect(), connect()
    a = r1.lock("cfg", shared=True)
    b = r2.lock("cfg", shared=True)
    assert a.acquire() and b.acquire()
    assert a.token != b.token
    assert {h.mode for h in r1.status("cfg")[0].holders} == {"shared"}
    assert a.read() is None
    with pytest.raises(lockd.NotExclusive):
        a.write("x")
    assert not w.lock("cfg").acquire(blocking=False)

    writer = w.lock("cfg")
    got: List[str] = []

    def write_when_granted() -> None:
        assert writer.acquire()
        got.append("writer")

    thread = threading.Thread(target=write_when_granted)
    thread.start()
    wait_until(lambda: waiters(r1, "cfg") == 1, "the writer in line")
    # A reader that comes after a queued writer does not overtake it.
    assert not r3.lock("cfg", shared=True).acquire(blocking=False)
    a.release()
    assert got == []
    b.release()
    thread.join(10)
    assert got == ["writer"] and writer.locked()
    writer.write("v2")
    writer.release()


def test_timeouts_and_try_lock(connect: Connect) -> None:
    holder, other = connect(), connect()
    held = holder.lock("busy")
    assert held.acquire(blocking=False)
    lock = other.lock("busy")
    assert lock.acquire(blocking=False) is False
    started = time.monotonic()
    assert lock.acquire(timeout=0.2) is False
    assert time.monotonic() - started >= 0.2
    assert not lock.locked()
    with pytest.raises(lockd.Timeout) as raised:
        with other.lock("busy", timeout=0.05):
            raise AssertionError("not granted")
    assert isinstance(raised.value, lockd.LockdError)
    assert isinstance(raised.value, TimeoutError)
    assert "busy" in raised.value.message
    with pytest.raises(ValueError):
        lock.acquire(blocking=False, timeout=1)
    held.release()
    assert lock.acquire(timeout=-1)
    lock.release()


def test_deadlock_is_refused(connect: Connect) -> None:
    one, two = connect(), connect()
    x = one.lock("x")
    y = two.lock("y")
    assert x.acquire() and y.acquire()
    one_waits = one.lock("y")
    result: List[object] = []
    thread = threading.Thread(target=lambda: result.append(one_waits.acquire(timeout=10)))
    thread.start()
    wait_until(lambda: waiters(two, "y") == 1, "session one waiting for y")
    with pytest.raises(lockd.Deadlock) as raised:
        two.lock("x").acquire()
    assert "deadlock" in raised.value.message
    assert raised.value.code == "deadlock"
    y.release()
    thread.join(10)
    assert result == [True]


def test_validate_and_status(connect: Connect) -> None:
    client, other = connect(), connect()
    lock = client.lock("v")
    assert lock.acquire()
    assert lock.token is not None
    assert other.validate("v", lock.token)
    assert not other.validate("v", lock.token + 1)
    [entry] = other.status("v")
    assert entry.resource == "v"
    assert [(h.session, h.mode, h.token) for h in entry.holders] == [
        (client.session, "exclusive", lock.token)
    ]
    assert any(e.resource == "v" for e in other.status())
    assert other.status("idle")[0].holders == []
    token = lock.token
    lock.release()
    assert not other.validate("v", token)


def test_status_pages_follow_the_cursor(start_server: Callable[..., Server]) -> None:
    server = start_server("--max-status-limit", "2")
    with lockd.Client(server.addr) as holder, lockd.Client(server.addr) as observer:
        names = ["a", "b", "c", "d", "e"]
        locks = [holder.lock(name) for name in names]
        for lock in locks:
            assert lock.acquire()
        first = observer.status_page()
        assert [r.resource for r in first.resources] == ["a", "b"]
        assert first.next == "b"
        second = observer.status_page(after=first.next, limit=1)
        assert ([r.resource for r in second.resources], second.next) == (["c"], "c")
        assert [r.resource for r in observer.iter_status()] == names
        assert [r.resource for r in observer.status()] == names
        with pytest.raises(lockd.BadRequest, match="--max-status-limit"):
            observer.status_page(limit=3)
        with pytest.raises(ValueError):
            observer.status_page(limit=0)


def test_errors_carry_the_server_message(start_server: Callable[..., Server]) -> None:
    server = start_server("--max-value-bytes", "8")
    with lockd.Client(server.addr) as client:
        lock = client.lock("small")
        assert lock.acquire()
        with pytest.raises(lockd.ValueTooLarge) as raised:
            lock.write("more than eight bytes")
        assert "the limit is 8" in raised.value.message
        same = client.lock("small")
        with pytest.raises(lockd.AlreadyHeld):
            same.acquire()
        with pytest.raises(lockd.AlreadyHeld):
            lock.acquire()
        with pytest.raises(lockd.NotHeld):
            client._call({"op": "release", "resource": "small", "token": 999999})
        with pytest.raises(lockd.UnknownOp):
            client._call({"op": "fly"})
        client.ping()
        lock.release()


def test_bad_input_fails_before_anything_is_sent(connect: Connect) -> None:
    client = connect()
    for name in ["", "a b", "tab\there", "x" * 257, "é" * 129, "nbsp\u00a0", "nul\x00"]:
        with pytest.raises(ValueError):
            client.lock(name)
    with pytest.raises(TypeError):
        client.lock(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        client.validate("ok", "1")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        client.validate("ok", 0)
    with pytest.raises(ValueError):
        client.validate("ok", 2**64)
    with pytest.raises(TypeError):
        client.validate("ok", True)
    with pytest.raises(ValueError):
        client.lock("ok", timeout=-2)
    with pytest.raises(TypeError):
        client.lock("ok", shared="yes")  # type: ignore[arg-type]
    lock = client.lock("ok")
    assert lock.acquire()
    with pytest.raises(TypeError):
        lock.write(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        lockd.Client("no-port")
    with pytest.raises(ValueError):
        lockd.Client("host:99999")
    with pytest.raises(TypeError):
        lockd.Client(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        lockd.Client(client_addr(client), lease=0)
    # Nothing bad reached the server: the session is healthy and holds only "ok".
    assert [e.resource for e in client.status()] == ["ok"]
    assert "é" * 128  # 256 bytes: allowed
    assert client.lock("é" * 128).acquire(blocking=False)


def client_addr(client: lockd.Client) -> str:
    host, port = client._addrs[0]
    return f"{host}:{port}"


def test_connect_errors() -> None:
    from helpers import free_port

    with pytest.raises(lockd.ConnectError) as raised:
        lockd.Client(f"127.0.0.1:{free_port()}")
    assert "refused" in raised.value.message
    assert isinstance(raised.value, ConnectionError)


def test_lockd_addr_is_the_default(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCKD_ADDR", server.addr)
    with lockd.Client() as client:
        client.ping()


def test_pipelined_calls_from_many_threads(connect: Connect) -> None:
    client = connect()
    other = connect()
    failures: List[BaseException] = []
    holders: List[int] = []
    counter = client.lock("counter")
    assert counter.acquire()
    counter.write("0")
    counter.release()

    def work(index: int) -> None:
        try:
            for round_ in range(25):
                own = client.lock(f"thread/{index}")
                with own:
                    own.write(f"{index}:{round_}")
                    assert own.read() == f"{index}:{round_}"
                    if round_ == 0:
                        holders.extend(h.session for h in client.status(own.name)[0].holders)
                assert own.token is None
        except BaseException as err:
            failures.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    # Meanwhile, a second client bumps a counter under the lock, racing the first's calls.
    for _ in range(20):
        with other.lock("counter", timeout=10) as lock:
            value = lock.read()
            assert value is not None
            lock.write(str(int(value) + 1))
    for thread in threads:
        thread.join(30)
    assert not failures, failures
    with client.lock("counter") as lock:
        assert lock.read() == "20"
    # All of it went over one connection: one session held every thread's lock.
    assert holders == [client.session] * 8
    assert client.status() == []


def test_contended_counter_over_many_clients(connect: Connect) -> None:
    clients = [connect() for _ in range(4)]
    with clients[0].lock("shared-counter") as lock:
        lock.write("0")
    failures: List[BaseException] = []

    def bump(client: lockd.Client) -> None:
        try:
            for _ in range(25):
                with client.lock("shared-counter", timeout=20) as lock:
                    lock.write(str(int(lock.read() or "0") + 1))
        except BaseException as err:
            failures.append(err)

    threads = [threading.Thread(target=bump, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures
    with clients[0].lock("shared-counter") as lock:
        assert lock.read() == "100"


def test_closing_the_client_frees_its_locks(connect: Connect) -> None:
    client, other = connect(), connect()
    lock = client.lock("gone")
    assert lock.acquire()
    waiting = other.lock("gone")
    result: List[bool] = []
    thread = threading.Thread(target=lambda: result.append(waiting.acquire(timeout=10)))
    thread.start()
    wait_until(lambda: waiters(other, "gone") == 1, "the waiter in line")
    client.close()
    thread.join(10)
    assert result == [True]
    assert lock.lost.is_set() and client.lost.is_set()
    with pytest.raises(lockd.ConnectionLost):
        client.ping()


def test_interrupted_acquire_leaves_the_queue(connect: Connect) -> None:
    holder, client = connect(), connect()
    held = holder.lock("intr")
    assert held.acquire()

    class Stop(Exception):
        pass

    def stop(position: int) -> None:
        raise Stop()

    with pytest.raises(Stop):
        client.lock("intr", on_queued=stop).acquire()
    wait_until(lambda: waiters(holder, "intr") == 0, "the interrupted acquire cancelled")
    held.release()
    # The client can queue for it again (no already_held left behind).
    again = client.lock("intr")
    assert again.acquire(timeout=5)


def test_a_frame_over_the_limit_fails_alone(start_server: Callable[..., Server]) -> None:
    server = start_server("--max-frame-bytes", "200")
    with lockd.Client(server.addr) as client:
        lock = client.lock("big")
        assert lock.acquire()
        with pytest.raises(lockd.FrameTooLarge):
            lock.write("x" * 500)
        lock.write("small")
        assert lock.read() == "small" and not client.lost.is_set()


def test_the_connection_cap_is_reported(start_server: Callable[..., Server]) -> None:
    server = start_server("--max-connections-per-ip", "1")
    with lockd.Client(server.addr) as client:
        with pytest.raises(lockd.LimitExceeded) as raised:
            lockd.Client(server.addr)
        assert "--max-connections-per-ip" in raised.value.message
        client.ping()
