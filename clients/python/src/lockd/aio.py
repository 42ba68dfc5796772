"""The asyncio twin of :mod:`lockd`: the same names, awaited.

    import lockd.aio

    async with lockd.aio.Client("127.0.0.1:5555") as client:
        async with client.lock("jobs/nightly", timeout=30) as lock:
            ...

A reader task routes replies by id, a keepalive task pings at a quarter of the lease, and a
watchdog task enforces the local lease exactly as the threaded client does (``lock.lost`` is
an ``asyncio.Event`` here). Create and use the client's objects inside one running event loop.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import ssl
import time
import weakref
from types import TracebackType
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Tuple, Type

from . import _core
from ._core import Holder, ResourceStatus, Servers, StatusPage, TlsArg, Waiter
from .errors import (
    AlreadyHeld,
    ConnectError,
    ConnectionLost,
    FrameTooLarge,
    LockdError,
    LockLost,
    NoSession,
    NotHeld,
    NotLeader,
    ProtocolError,
    Timeout,
)

__all__ = ["Client", "Lock", "Holder", "Waiter", "ResourceStatus", "StatusPage"]

QueuedCallback = Callable[[int], object]


class _Link:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def send(self, data: bytes) -> None:
        if self.writer.is_closing():
            raise ConnectionResetError("the connection is closed")
        self.writer.write(data)

    async def readline(self) -> bytes:
        return await self.reader.readuntil(b"\n")

    def close(self) -> None:
        transport = self.writer.transport
        if not transport.is_closing():
            transport.abort()


class _Call:
    __slots__ = ("id", "frame", "sent", "future", "lock", "on_queued")

    def __init__(
        self,
        request_id: int,
        frame: bytes,
        sent: float,
        future: "asyncio.Future[Dict[str, Any]]",
        lock: Optional["Lock"],
        on_queued: Optional[QueuedCallback],
    ) -> None:
        self.id = request_id
        self.frame = frame
        self.sent = sent
        self.future = future
        self.lock = lock
        self.on_queued = on_queued


class Client:
    """A session with lockd, for asyncio: the arguments of :class:`lockd.Client`. Connect with
    ``async with lockd.aio.Client(...) as client`` or ``await client.connect()``."""

    def __init__(
        self,
        servers: Servers = None,
        *,
        name: Optional[str] = None,
        lease: Optional[float] = None,
        auth_token: Optional[str] = None,
        tls: TlsArg = None,
    ) -> None:
        self._addrs = _core.parse_servers(servers)
        self._name = _core.check_client_name(name)
        self._lease_ms = (
            None if lease is None else _core.seconds_to_ms(lease, "lease", zero_ok=False)
        )
        if auth_token is not None and not isinstance(auth_token, str):
            raise TypeError(f"auth_token must be a str, not {type(auth_token).__name__}")
        self._auth = auth_token
        self._tls = _core.ssl_context(tls)
        self._cluster = len(self._addrs) > 1
        self._pending: Dict[int, _Call] = {}
        self._next_id = 1
        self._link: Optional[_Link] = None
        self._lost_error: Optional[LockdError] = None
        self._lost_at: Optional[float] = None  # monotonic time the session was given up
        self._closing = False
        self._held: "weakref.WeakSet[Lock]" = weakref.WeakSet()
        self._heard_since = time.monotonic()
        self._lease = 0.0
        self._session = 0
        self._resume_secret: Optional[str] = None
        self._server = ""
        self._tasks: List["asyncio.Task[None]"] = []
        self._lost: Optional[asyncio.Event] = None
        self._tick: Optional[asyncio.Event] = None
        self._give_back_task: Optional["asyncio.Future[None]"] = None

    # -----------------------------------------------------------------------------------------
    # Public API.

    async def connect(self) -> "Client":
        """Opens the session (following ``not_leader`` on a cluster)."""
        if self._lost is not None:
            raise RuntimeError("this client is already connected")
        self._lost = asyncio.Event()
        self._tick = asyncio.Event()
        started = time.monotonic()
        link, hello, sent = await self._open(None, None, started + _core.LEADER_SEARCH)
        self._link = link
        self._heard_since = sent
        self._session = _core.result_int(hello, "session")
        self._resume_secret = _core.resume_secret_of(hello)
        self._lease = _core.result_int(hello, "lease_ms") / 1000.0
        self._server = str(hello.get("server", ""))
        self._tasks = [
            asyncio.ensure_future(self._run(link)),
            asyncio.ensure_future(self._watch()),
            asyncio.ensure_future(self._keepalive()),
        ]
        return self

    @property
    def lost(self) -> asyncio.Event:
        """Set when the session is lost; every lock of the client is lost with it."""
        if self._lost is None:
            raise RuntimeError("the client is not connected yet")
        return self._lost

    @property
    def session(self) -> int:
        return self._session

    @property
    def lease(self) -> float:
        return self._lease

    @property
    def server(self) -> str:
        return self._server

    def valid_for(self) -> float:
        """Seconds until the local deadline of the session (0 once lost)."""
        if self._lost_error is not None or self._lost is None:
            return 0.0
        deadline = _core.local_deadline(self._heard_since, self._lease)
        return max(0.0, deadline - time.monotonic())

    def lock(
        self,
        name: str,
        shared: bool = False,
        timeout: Optional[float] = None,
        lock_delay: Optional[float] = None,
        *,
        on_queued: Optional[QueuedCallback] = None,
    ) -> "Lock":
        """A lock on ``name``, as :meth:`lockd.Client.lock`. ``on_queued`` may be a plain
        function or a coroutine function."""
        return Lock(self, name, shared, timeout, lock_delay, on_queued)

    def semaphore(
        self,
        name: str,
        limit: int,
        permits: int = 1,
        timeout: Optional[float] = None,
        lock_delay: Optional[float] = None,
        *,
        on_queued: Optional[QueuedCallback] = None,
    ) -> "Lock":
        """Permits of a semaphore, as :meth:`lockd.Client.semaphore`."""
        return Lock(self, name, True, timeout, lock_delay, on_queued, semaphore=(limit, permits))

    async def validate(self, name: str, token: int) -> bool:
        request = {
            "op": "validate",
            "resource": _core.check_name(name),
            "token": _core.check_token(token),
        }
        reply = await self._call(request)
        valid = reply.get("valid")
        if not isinstance(valid, bool):
            raise ProtocolError(f"validate reply lacks 'valid': {reply!r}")
        return valid

    async def status(self, name: Optional[str] = None) -> List[ResourceStatus]:
        if name is not None:
            return _core.parse_status(await self._call(_core.status_request(name)))
        return [entry async for entry in self.iter_status()]

    async def status_page(
        self, after: Optional[str] = None, limit: Optional[int] = None
    ) -> StatusPage:
        reply = await self._call(_core.status_request(None, after, limit))
        return _core.parse_status_page(reply, after)

    async def iter_status(self, limit: Optional[int] = None) -> AsyncIterator[ResourceStatus]:
        after: Optional[str] = None
        while True:
            page = await self.status_page(after, limit)
            for entry in page.resources:
                yield entry
            if page.next is None:
                return
            after = page.next

    async def ping(self) -> None:
        await self._call({"op": "ping"})

    async def close(self) -> None:
        """Ends the session (on a cluster, releasing held locks first)."""
        if self._closing or self._lost is None:
            return
        self._closing = True
        if self._cluster and self._lost_error is None:
            calls = []
            for lock in list(self._held):
                if lock.token is not None:
                    try:
                        calls.append(
                            self._start(
                                {"op": "release", "resource": lock.name, "token": lock.token}
                            )
                        )
                    except LockdError:
                        pass
            if calls:
                await asyncio.wait([call.future for call in calls], timeout=2.0)
        self._lose(ConnectionLost("the client was closed"))
        if self._give_back_task is not None:
            # Let a give-back that is under way finish its releases, briefly.
            await asyncio.wait([self._give_back_task], timeout=2.0)
            self._give_back_task.cancel()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        await asyncio.gather(*(t for t in self._tasks if t is not current), return_exceptions=True)

    async def __aenter__(self) -> "Client":
        if self._lost is None:
            await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.close()

    # -----------------------------------------------------------------------------------------
    # Calls.

    def _start(
        self,
        request: Dict[str, Any],
        lock: Optional["Lock"] = None,
        on_queued: Optional[QueuedCallback] = None,
    ) -> _Call:
        if self._lost is None:
            raise RuntimeError("the client is not connected yet; use `async with` or connect()")
        if self._lost_error is not None:
            raise ConnectionLost(f"the session is lost: {self._lost_error.message}")
        request_id = self._next_id
        self._next_id += 1
        frame = _core.encode({"id": request_id, **request})
        future: "asyncio.Future[Dict[str, Any]]" = asyncio.get_running_loop().create_future()
        call = _Call(request_id, frame, time.monotonic(), future, lock, on_queued)
        self._pending[request_id] = call
        link = self._link
        if link is not None:
            try:
                link.send(frame)
            except (OSError, RuntimeError):
                link.close()
        return call

    async def _call(self, request: Dict[str, Any]) -> Dict[str, Any]:
        return await self._start(request).future

    # -----------------------------------------------------------------------------------------
    # Opening a session.

    async def _open(
        self,
        resume: Optional[int],
        first: Optional[str],
        deadline: float,
        lease_ms: Optional[int] = None,
    ) -> Tuple[_Link, Dict[str, Any], float]:
        candidates: List[Tuple[str, int]] = []
        if first is not None:
            try:
                candidates.append(_core.parse_addr(first))
            except ValueError:
                pass
        candidates.extend(self._addrs)
        backoff = 0.05
        last_error: LockdError = ConnectError("no address given")
        while True:
            if not candidates:
                if not self._cluster or time.monotonic() + backoff >= deadline:
                    raise last_error
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 0.5)
                candidates.extend(self._addrs)
                continue
            if resume is not None and self._lost_error is not None and lease_ms is None:
                raise self._lost_error
            addr = candidates.pop(0)
            if time.monotonic() >= deadline:
                raise last_error
            try:
                link = await self._dial(
                    addr, min(deadline, time.monotonic() + _core.CONNECT_TIMEOUT)
                )
            except ConnectError as err:
                last_error = err
                continue
            try:
                hello, sent = await self._hello(link, resume, deadline, lease_ms)
                return link, hello, sent
            except NotLeader as err:
                link.close()
                last_error = err
                if err.leader is not None:
                    try:
                        leader = _core.parse_addr(err.leader)
                    except ValueError:
                        continue
                    if leader not in candidates:
                        candidates.insert(0, leader)
            except ConnectionLost as err:
                link.close()
                if not self._cluster:
                    raise
                last_error = err
            except BaseException:
                link.close()
                raise

    async def _dial(self, addr: Tuple[str, int], deadline: float) -> _Link:
        host, port = addr
        where = _core.format_addr(addr)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    host,
                    port,
                    ssl=self._tls,
                    server_hostname=host if self._tls is not None else None,
                    limit=_core.MAX_REPLY_BYTES,
                ),
                timeout=max(0.0, deadline - time.monotonic()),
            )
        except asyncio.TimeoutError:
            raise ConnectError(f"cannot reach lockd at {where}: no answer in time") from None
        except ssl.SSLError as err:
            raise ConnectError(f"TLS handshake with {where} failed: {err}") from None
        except ConnectionRefusedError:
            raise ConnectError(f"cannot reach lockd at {where}: connection refused") from None
        except OSError as err:
            raise ConnectError(f"cannot reach lockd at {where}: {err}") from None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            try:
                import socket

                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        return _Link(reader, writer)

    async def _hello(
        self,
        link: _Link,
        resume: Optional[int],
        deadline: float,
        lease_ms: Optional[int] = None,
    ) -> Tuple[Dict[str, Any], float]:
        request_id = self._next_id
        self._next_id += 1
        lease_ms = self._lease_ms if lease_ms is None else lease_ms
        request: Optional[Dict[str, Any]] = _core.hello_request(
            self._name, lease_ms, self._auth, resume, self._resume_secret
        )
        sent = time.monotonic()
        while True:
            try:
                if request is not None:
                    link.send(_core.encode({"id": request_id, **request}))
                    request = None
                line = await asyncio.wait_for(
                    link.readline(), timeout=max(0.0, deadline - time.monotonic())
                )
            except asyncio.TimeoutError:
                raise ConnectionLost("no answer to hello in time") from None
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, RuntimeError):
                raise ConnectionLost("the connection closed before hello was answered") from None
            if not line.strip():
                continue
            frame = _core.decode(line)
            error = _core.reply_error(frame)
            reply_to = _core.frame_id(frame)
            if reply_to == request_id or (reply_to is None and error is not None):
                if error is not None:
                    raise error
                return frame, sent
            # A resumed session's frames may reach its new connection before the hello's
            # reply; the calls they answer are sent again after the resume anyway.

    # -----------------------------------------------------------------------------------------
    # The reader task.

    async def _run(self, link: _Link) -> None:
        try:
            await self._run_links(link)
        except asyncio.CancelledError:
            raise
        except BaseException as err:  # pragma: no cover - a bug; never leave callers hanging
            self._lose(ProtocolError(f"the reader task failed: {err!r}"))
            raise

    async def _run_links(self, link: _Link) -> None:
        while True:
            end, detail = await self._carry(link)
            if self._link is link:
                self._link = None
            link.close()
            if self._lost_error is not None:
                return
            if isinstance(detail, LockdError):
                self._lose(detail)
                return
            if not self._cluster:
                self._lose(ConnectionLost("the connection to lockd was closed"))
                return
            resumed = await self._resume(detail if isinstance(detail, str) else None)
            if resumed is None:
                return
            link = resumed

    async def _carry(self, link: _Link) -> Tuple[str, object]:
        silence = max(self._lease / 2, 0.1) if self._cluster else None
        while True:
            try:
                if silence is None:
                    line = await link.readline()
                else:
                    line = await asyncio.wait_for(link.readline(), timeout=silence)
            except asyncio.TimeoutError:
                if self._pending:
                    return "closed", None
                continue
            except asyncio.LimitOverrunError:
                return "broken", ProtocolError("reply longer than 1 GiB")
            except (OSError, asyncio.IncompleteReadError):
                return "closed", None
            if not line.strip():
                continue
            try:
                end = self._route(_core.decode(line))
            except ProtocolError as err:
                return "broken", err
            if end is not None:
                return end

    def _route(self, frame: Dict[str, Any]) -> Optional[Tuple[str, object]]:
        request_id = _core.frame_id(frame)
        if frame.get("event") == "queued":
            position = frame.get("position")
            call = self._pending.get(request_id) if request_id is not None else None
            if call is not None and isinstance(position, int):
                self._heard_since = max(self._heard_since, call.sent)
                if call.on_queued is not None:
                    result = call.on_queued(position)
                    if inspect.isawaitable(result):
                        asyncio.ensure_future(result)
            return None
        error = _core.reply_error(frame)
        if request_id is None and isinstance(error, FrameTooLarge):
            # A line over the server's frame limit: the largest frame in flight (see client.py).
            request_id = _core.largest_pending(
                {key: len(call.frame) for key, call in self._pending.items()}
            )
            if request_id is None:
                return None
        if request_id is None:
            return "broken", error or ProtocolError(f"reply without id: {frame!r}")
        if isinstance(error, NotLeader) and self._cluster:
            return "not_leader", error.leader
        call = self._pending.pop(request_id, None)
        if call is None:
            return None
        self._heard_since = max(self._heard_since, call.sent)
        lock = call.lock
        if error is None and lock is not None:
            token = frame.get("token")
            if isinstance(token, bool) or not isinstance(token, int):
                error = ProtocolError(f"acquire reply lacks a token: {frame!r}")
            elif call.future.cancelled():
                # The acquiring task was cancelled: give the grant back.
                self._start({"op": "release", "resource": lock.name, "token": token})
            else:
                lock.token = token
                self._held.add(lock)
        if not call.future.done():
            if error is not None:
                call.future.set_exception(error)
            else:
                call.future.set_result(frame)
        return None

    async def _resume(self, leader: Optional[str]) -> Optional[_Link]:
        deadline = _core.local_deadline(self._heard_since, self._lease)
        try:
            link, hello, sent = await self._open(self._session, leader, deadline)
        except LockdError as err:
            if isinstance(err, NoSession):
                self._lose(ConnectionLost(f"the session ended on the server: {err.message}"))
            else:
                self._lose(
                    ConnectionLost(f"no leader took the session back in time: {err.message}"),
                    give_back=True,
                )
            return None
        if self._lost_error is not None:
            link.close()
            return None
        self._link = link
        self._heard_since = max(self._heard_since, sent)
        lease_ms = hello.get("lease_ms")
        if isinstance(lease_ms, int):
            self._lease = lease_ms / 1000.0
        try:
            link.send(b"".join(self._pending[key].frame for key in sorted(self._pending)))
        except (OSError, RuntimeError):
            link.close()
        return link

    # -----------------------------------------------------------------------------------------
    # The local lease.

    def _lose(self, error: LockdError, give_back: bool = False) -> None:
        """As :meth:`lockd.Client._lose`: locks first, then the client, then the calls."""
        if self._lost_error is not None:
            return
        self._lost_error = error
        self._lost_at = time.monotonic()
        pending, self._pending = self._pending, {}
        link, self._link = self._link, None
        held = list(self._held)
        for lock in held:
            lock._lost_event().set()
        if self._lost is not None:
            self._lost.set()
        given_up = [(lock.name, lock.token) for lock in held if lock.token is not None]
        waited = any(call.lock is not None for call in pending.values())
        if give_back and self._cluster and (given_up or waited):
            self._give_back_task = asyncio.ensure_future(self._give_back(given_up))
        for call in pending.values():
            if not call.future.done():
                call.future.set_exception(copy.copy(error))
                # Nobody may be awaiting it (a keepalive ping): do not warn about that.
                call.future.exception()
        if link is not None:
            link.close()
        if self._tick is not None:
            self._tick.set()

    async def _watch(self) -> None:
        assert self._tick is not None
        while self._lost_error is None:
            deadline = _core.local_deadline(self._heard_since, self._lease)
            now = time.monotonic()
            if now >= deadline:
                self._lose(
                    ConnectionLost(
                        "no reply from lockd within the local lease; the server may expire "
                        "the session at any moment, so its locks are given up"
                    ),
                    give_back=True,
                )
                return
            try:
                await asyncio.wait_for(self._tick.wait(), timeout=deadline - now)
            except asyncio.TimeoutError:
                pass
            self._tick.clear()

    async def _give_back(self, given_up: List[Tuple[str, int]]) -> None:
        """As :meth:`lockd.Client._give_back`: resume the given-up session with the shortest
        lease, release what it held, and go silent."""
        deadline = time.monotonic() + _core.LEADER_SEARCH + self._lease
        try:
            link, _, _ = await self._open(self._session, None, deadline, lease_ms=1)
        except LockdError:
            return
        try:
            first = self._next_id
            self._next_id += len(given_up)
            link.send(
                b"".join(
                    _core.encode(
                        {"id": first + n, "op": "release", "resource": name, "token": token}
                    )
                    for n, (name, token) in enumerate(given_up)
                )
            )
            waiting = set(range(first, first + len(given_up)))

            async def replies() -> None:
                while waiting:
                    line = await link.readline()
                    if line.strip():
                        frame = _core.decode(line)
                        if frame.get("event") is None:
                            waiting.discard(_core.frame_id(frame) or 0)

            await asyncio.wait_for(replies(), timeout=5.0)
        except (OSError, LockdError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            link.close()

    async def _keepalive(self) -> None:
        while self._lost_error is None:
            await asyncio.sleep(_core.keepalive_interval(self._lease))
            try:
                call = self._start({"op": "ping"})
            except LockdError:
                return
            call.future.add_done_callback(_ignore_outcome)


def _ignore_outcome(future: "asyncio.Future[Dict[str, Any]]") -> None:
    if not future.cancelled():
        future.exception()


class Lock:
    """A lock on one resource, as :class:`lockd.Lock`, awaited: ``await lock.acquire()``,
    ``await lock.release()``, ``async with``. ``lost`` is an ``asyncio.Event``."""

    def __init__(
        self,
        client: Client,
        name: str,
        shared: bool = False,
        timeout: Optional[float] = None,
        lock_delay: Optional[float] = None,
        on_queued: Optional[QueuedCallback] = None,
        *,
        semaphore: Optional[Tuple[int, int]] = None,
    ) -> None:
        self._client = client
        self.name = _core.check_name(name)
        self._semaphore = None if semaphore is None else _core.check_semaphore(*semaphore)
        self._mode = _core.check_mode(shared or semaphore is not None)
        self.shared = shared or semaphore is not None
        #: For a semaphore: its limit, and the permits this Lock takes of it.
        self.limit: Optional[int] = None if semaphore is None else semaphore[0]
        self.permits: Optional[int] = None if semaphore is None else semaphore[1]
        if timeout is not None:
            _core.acquire_timeout_ms(True, timeout)
        self.timeout = timeout
        self._lock_delay_ms = (
            None if lock_delay is None else _core.seconds_to_ms(lock_delay, "lock_delay")
        )
        if on_queued is not None and not callable(on_queued):
            raise TypeError("on_queued must be callable")
        self.on_queued = on_queued
        self.token: Optional[int] = None
        self._lost: Optional[asyncio.Event] = None

    def _lost_event(self) -> asyncio.Event:
        if self._lost is None:
            self._lost = asyncio.Event()
        return self._lost

    @property
    def lost(self) -> asyncio.Event:
        """Set when the lock is lost without a release, before the server could expire the
        session."""
        return self._lost_event()

    async def acquire(self, blocking: bool = True, timeout: Optional[float] = None) -> bool:
        timeout_ms = _core.acquire_timeout_ms(blocking, timeout)
        if self.token is not None:
            if not self.lost.is_set():
                raise AlreadyHeld(f"this Lock already holds {self.name} (locks are not re-entrant)")
            self._forget()
        request = _core.acquire_request(
            self.name, self._mode, timeout_ms, self._lock_delay_ms, self._semaphore
        )
        call = self._client._start(request, self, self.on_queued)
        self._lost_event().clear()  # nothing can have run since the call was registered
        try:
            await asyncio.shield(call.future)
        except Timeout:
            return False
        except asyncio.CancelledError:
            # Withdraw the wait; a grant that races the cancel is released by the reader.
            if not call.future.done():
                call.future.cancel()
                try:
                    self._client._start({"op": "cancel", "target": call.id})
                except LockdError:
                    pass
            elif not call.future.cancelled() and call.future.exception() is None:
                await self._release_quietly()
            raise
        return True

    async def _release_quietly(self) -> None:
        token = self.token
        self._forget()
        if token is not None:
            try:
                self._client._start({"op": "release", "resource": self.name, "token": token})
            except LockdError:
                pass

    async def release(self) -> None:
        token = self.token
        if token is None:
            raise NotHeld(f"this Lock does not hold {self.name}")
        if self.lost.is_set():
            self._forget()
            raise LockLost(f"the lock on {self.name} was lost before it was released")
        try:
            await self._client._call({"op": "release", "resource": self.name, "token": token})
        except ConnectionLost as err:
            raise LockLost(f"the lock on {self.name} was lost: {err.message}") from None
        finally:
            self._forget()

    def _forget(self) -> None:
        self.token = None
        self._client._held.discard(self)

    def locked(self) -> bool:
        return self.token is not None and not self.lost.is_set()

    def valid_for(self) -> float:
        if not self.locked():
            return 0.0
        return self._client.valid_for()

    async def read(self) -> Optional[str]:
        reply = await self._client._call(
            {"op": "read", "resource": self.name, "token": self._held_token()}
        )
        value = reply.get("value")
        if value is not None and not isinstance(value, str):
            raise ProtocolError(f"read reply has a value that is not a string: {reply!r}")
        return value

    async def write(self, value: str) -> None:
        value = _core.check_value(value)
        await self._client._call(
            {"op": "write", "resource": self.name, "token": self._held_token(), "value": value}
        )

    def _held_token(self) -> int:
        token = self.token
        if token is None:
            raise NotHeld(f"this Lock does not hold {self.name}")
        if self.lost.is_set():
            raise LockLost(f"the lock on {self.name} was lost")
        return token

    async def __aenter__(self) -> "Lock":
        if not await self.acquire(True, self.timeout):
            raise Timeout(f"the lock on {self.name} was not granted within {self.timeout} s")
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if self.token is None:
            return
        try:
            await self.release()
        except LockdError:
            if exc_type is None:
                raise

    def __repr__(self) -> str:
        held = "held" if self.token is not None else "free"
        return f"<lockd.aio.Lock {self.name!r} {self._mode} {held} token={self.token}>"
