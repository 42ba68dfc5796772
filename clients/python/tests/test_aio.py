"""The asyncio twin, lockd.aio."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path
from typing import Any, Callable, Coroutine, Dict, List

import pytest

import lockd
import lockd.aio
from helpers import PATIENCE, Cluster, Proxy, Server


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coroutine, 60))


async def until(condition: Callable[[], Coroutine[Any, Any, bool]], what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def queue_length(client: lockd.aio.Client, name: str) -> int:
    return len((await client.status(name))[0].waiters)


def test_critical_section_and_values(server: Server) -> None:
    async def main() -> None:
        async with lockd.aio.Client(server.addr, name="aio") as client:
            assert client.session > 0 and client.lease == 2.0
            async with client.lock("jobs/nightly", timeout=5) as lock:
                assert lock.locked() and lock.token is not None
                assert 0 < lock.valid_for() <= 2.0
                assert await lock.read() is None
                await lock.write("v1")
                assert await lock.read() == "v1"
                token = lock.token
                assert await client.validate("jobs/nightly", token)
            assert not lock.locked() and not await client.validate("jobs/nightly", token)
            assert await lock.acquire(blocking=False)
            assert lock.token is not None and lock.token > token
            await lock.release()
            with pytest.raises(lockd.NotHeld):
                await lock.release()
            await client.ping()
            assert client.status is not None

    run(main())


def test_queue_timeouts_and_deadlock(server: Server) -> None:
    async def main() -> None:
        async with lockd.aio.Client(server.addr) as one, lockd.aio.Client(server.addr) as two:
            x = one.lock("x")
            y = two.lock("y")
            assert await x.acquire() and await y.acquire()
            assert not await two.lock("x").acquire(blocking=False)
            started = time.monotonic()
            assert not await two.lock("x").acquire(timeout=0.2)
            assert time.monotonic() - started >= 0.2
            with pytest.raises(lockd.Timeout):
                async with two.lock("x", timeout=0.05):
                    raise AssertionError("not granted")
            positions: List[int] = []
            one_waits = asyncio.ensure_future(
                one.lock("y", on_queued=positions.append).acquire(timeout=10)
            )
            await until(lambda: _eq(positions, [1]), "one waiting for y")
            with pytest.raises(lockd.Deadlock):
                await two.lock("x").acquire()
            await y.release()
            assert await one_waits is True

    run(main())


async def _eq(left: object, right: object) -> bool:
    return left == right


def test_many_tasks_share_one_connection(server: Server) -> None:
    async def main() -> None:
        async with lockd.aio.Client(server.addr) as client, lockd.aio.Client(server.addr) as b:
            async with client.lock("counter") as lock:
                await lock.write("0")

            async def own(index: int) -> None:
                for round_ in range(20):
                    async with client.lock(f"task/{index}") as mine:
                        await mine.write(str(round_))
                        assert await mine.read() == str(round_)

            async def bump(c: lockd.aio.Client) -> None:
                for _ in range(20):
                    async with c.lock("counter", timeout=20) as lock:
                        await lock.write(str(int(await lock.read() or "0") + 1))

            await asyncio.gather(*(own(i) for i in range(10)), bump(b))
            async with client.lock("counter") as lock:
                assert await lock.read() == "20"

    run(main())


def test_a_cancelled_wait_leaves_the_queue(server: Server) -> None:
    async def main() -> None:
        async with lockd.aio.Client(server.addr) as holder, lockd.aio.Client(server.addr) as c:
            held = holder.lock("c")
            assert await held.acquire()
            waiter = asyncio.ensure_future(c.lock("c").acquire())
            await until(lambda: _is(queue_length(holder, "c"), 1), "the waiter in line")
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            await until(lambda: _is(queue_length(holder, "c"), 0), "the wait withdrawn")
            await held.release()
            again = c.lock("c")
            assert await again.acquire(timeout=5)

    run(main())


async def _is(value: Coroutine[Any, Any, int], expected: int) -> bool:
    return await value == expected


def test_a_blackholed_holder_knows_before_the_next_holder_is_granted(server: Server) -> None:
    proxy = Proxy(server.addr)

    async def main() -> None:
        times: Dict[str, float] = {}
        async with (
            lockd.aio.Client(proxy.addr, lease=0.5) as holder,
            lockd.aio.Client(server.addr) as other,
        ):
            lock = holder.lock("job")
            assert await lock.acquire()

            async def watch() -> None:
                await lock.lost.wait()
                assert holder._lost_at is not None
                times["lost"] = holder._lost_at

            async def next_holder() -> None:
                mine = other.lock("job")
                assert await mine.acquire(timeout=PATIENCE)
                times["granted"] = time.monotonic()

            watcher = asyncio.ensure_future(watch())
            waiter = asyncio.ensure_future(next_holder())
            await until(lambda: _is(queue_length(other, "job"), 1), "the next holder")
            proxy.blackhole()
            await asyncio.gather(watcher, waiter)
            assert times["lost"] < times["granted"], times
            assert holder.lost.is_set() and lock.valid_for() == 0
            with pytest.raises(lockd.LockLost):
                await lock.read()

    try:
        run(main())
    finally:
        proxy.close()


def test_auth_errors_and_bad_input(start_server: Callable[..., Server], tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    server = start_server("--auth-token-file", str(secret))

    async def main() -> None:
        with pytest.raises(lockd.Unauthorized):
            await lockd.aio.Client(server.addr, auth_token="wrong").connect()
        async with lockd.aio.Client(server.addr, auth_token="s3cret") as client:
            with pytest.raises(ValueError):
                client.lock("has space")
            with pytest.raises(TypeError):
                await client.validate("ok", "1")  # type: ignore[arg-type]
            await client.ping()

    run(main())


def test_cluster_failover(lockd_bin: str, tmp_path: Path) -> None:
    cluster = Cluster(lockd_bin, tmp_path, ["--min-lease-ms", "100"])

    async def main() -> None:
        leader = await asyncio.get_running_loop().run_in_executor(None, cluster.leader)
        async with (
            lockd.aio.Client(cluster.servers(), lease=3.0) as holder,
            lockd.aio.Client(cluster.servers(), lease=3.0) as waiter,
        ):
            lock = holder.lock("r")
            assert await lock.acquire()
            await lock.write("before")
            positions: List[int] = []
            waiting = asyncio.ensure_future(waiter.lock("r", on_queued=positions.append).acquire())
            await until(lambda: _eq(positions, [1]), "the waiter in line")
            await asyncio.get_running_loop().run_in_executor(None, cluster.kill, leader)
            assert await lock.read() == "before"
            await lock.write("after")
            assert not lock.lost.is_set()
            token = lock.token
            assert token is not None
            await lock.release()
            assert await waiting is True
            assert not waiter.lost.is_set()

    try:
        run(main())
    finally:
        cluster.stop()


def test_a_frame_over_the_limit_fails_alone(start_server: Callable[..., Server]) -> None:
    server = start_server("--max-frame-bytes", "200")

    async def main() -> None:
        async with lockd.aio.Client(server.addr) as client:
            lock = client.lock("big")
            assert await lock.acquire()
            with pytest.raises(lockd.FrameTooLarge):
                await lock.write("x" * 500)
            await lock.write("small")
            assert await lock.read() == "small" and not client.lost.is_set()

    run(main())


def test_a_given_up_cluster_session_is_released_when_a_leader_returns(
    lockd_bin: str, tmp_path: Path
) -> None:
    cluster = Cluster(lockd_bin, tmp_path, ["--min-lease-ms", "100"])

    async def main() -> None:
        loop = asyncio.get_running_loop()
        leader = await loop.run_in_executor(None, cluster.leader)
        follower = (leader + 1) % 3
        async with lockd.aio.Client(cluster.servers(), lease=3.0) as holder:
            lock = holder.lock("given-up")
            assert await lock.acquire()
            await loop.run_in_executor(None, cluster.kill, leader)
            await loop.run_in_executor(None, cluster.kill, follower)
            await asyncio.wait_for(lock.lost.wait(), PATIENCE)
            await loop.run_in_executor(None, cluster.restart, follower)
            await loop.run_in_executor(None, lambda: cluster.leader(not_=[leader]))
            elected = time.monotonic()
            live = [cluster.addrs[i] for i in range(3) if i != leader]
            async with lockd.aio.Client(live, lease=3.0) as observer:

                async def free() -> bool:
                    return (await observer.status("given-up"))[0].holders == []

                await until(free, "the lock given back")
                assert time.monotonic() - elected < 2.0

    try:
        run(main())
    finally:
        cluster.stop()


def test_tls_and_a_coroutine_on_queued(start_server: Callable[..., Server], tmp_path: Path) -> None:
    from helpers import make_certs

    certs = make_certs(tmp_path)
    server = start_server(
        "--tls-cert", str(certs["server.pem"]), "--tls-key", str(certs["server.key"])
    )

    async def main() -> None:
        ca = str(certs["ca.pem"])
        async with (
            lockd.aio.Client(server.addr, tls=ca) as a,
            lockd.aio.Client(server.addr, tls=ca) as b,
        ):
            seen: List[int] = []

            async def queued(position: int) -> None:
                await asyncio.sleep(0)
                seen.append(position)

            held = a.lock("tls")
            assert await held.acquire()
            await held.write("y" * 100_000)
            waiting = asyncio.ensure_future(b.lock("tls", on_queued=queued).acquire())
            await until(lambda: _eq(seen, [1]), "the coroutine callback")
            await held.release()
            assert await waiting
        with pytest.raises(lockd.ConnectError):
            await lockd.aio.Client(server.addr, tls=ssl.create_default_context()).connect()

    run(main())
