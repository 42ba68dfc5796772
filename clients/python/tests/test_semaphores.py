"""Semaphores from Python: permits up to a limit, in order of arrival, each with a token."""

from __future__ import annotations

import asyncio
from typing import Callable

import pytest

import lockd
import lockd.aio
from helpers import Server, wait_until

Connect = Callable[..., lockd.Client]


def test_permits_up_to_the_limit_in_order_each_with_its_token(connect: Connect) -> None:
    first, second, third = connect(), connect(), connect()
    two = first.semaphore("exports", limit=3, permits=2)
    one = second.semaphore("exports", limit=3)
    assert two.acquire(timeout=5) and one.acquire(timeout=5)
    assert two.token is not None and one.token is not None and two.token != one.token
    assert (two.limit, two.permits, two.shared) == (3, 2, True)
    status = third.status("exports")[0]
    assert (status.limit, status.permits_used) == (3, 3)
    assert sorted(h.permits or 0 for h in status.holders) == [1, 2]

    # No permit is free: a third acquirer waits, and is granted once one is given back.
    waiting = third.semaphore("exports", limit=3)
    assert not waiting.acquire(blocking=False)
    one.release()
    assert waiting.acquire(timeout=5)
    assert waiting.token is not None and waiting.token > two.token


def test_a_different_limit_or_a_lock_on_a_semaphore_is_refused(connect: Connect) -> None:
    holder, other = connect(), connect()
    permits = holder.semaphore("gpus", limit=4)
    assert permits.acquire(timeout=5)
    with pytest.raises(lockd.LimitMismatch, match="limit 4"):
        other.semaphore("gpus", limit=8).acquire(timeout=5)
    with pytest.raises(lockd.LimitMismatch):
        other.lock("gpus").acquire(timeout=5)
    with pytest.raises(ValueError):
        other.semaphore("gpus", limit=4, permits=5)
    with pytest.raises(ValueError):
        other.semaphore("gpus", limit=0)


def test_asyncio_semaphores(server: Server) -> None:
    async def main() -> None:
        async with lockd.aio.Client(server.addr) as a, lockd.aio.Client(server.addr) as b:
            held = a.semaphore("slots", limit=1)
            assert await held.acquire(timeout=5)
            blocked = b.semaphore("slots", limit=1)
            assert not await blocked.acquire(blocking=False)
            await held.release()
            assert await blocked.acquire(timeout=5)
            await blocked.release()

    asyncio.run(main())


def test_status_shows_no_limit_for_a_lock(connect: Connect) -> None:
    client = connect()
    with client.lock("plain", timeout=5):
        status = client.status("plain")[0]
        assert status.limit is None and status.permits_used is None
        assert status.holders[0].permits is None
    wait_until(lambda: not client.status("plain")[0].holders, "the lock to be released")
