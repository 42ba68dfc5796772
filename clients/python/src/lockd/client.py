"""The threaded client: :class:`Client` and its :class:`Lock`.

One connection per client carries every request, multiplexed by id. A session thread reads
the replies and routes them to the waiting callers; on a cluster it also resumes the session
on the new leader after a failover and sends again, with the same ids, every request still
awaiting its reply (docs/protocol.md §11). A keepalive thread pings at a quarter of the
lease, and a watchdog thread enforces the local lease: at the local deadline the session is
given up, and every lock's ``lost`` event is set, strictly before the server could expire
the session (docs/python.md, "The local lease").
"""

from __future__ import annotations

import _thread
import copy
import threading
import time
import weakref
from types import TracebackType
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Type

from . import _core
from ._core import ResourceStatus, Servers, StatusPage, TlsArg
from ._link import Link
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

__all__ = ["Client", "Lock"]

QueuedCallback = Callable[[int], object]


class _Wake:
    """Wakes the one thread waiting for a call: a binary semaphore, cheaper than an Event.
    ``set`` and ``clear`` are called under the client's state lock; ``clear`` right after a
    ``wait`` that returned, before the waiter reads the call's state."""

    __slots__ = ("_lock", "_set")

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()
        self._set = False

    def set(self) -> None:
        if not self._set:
            self._set = True
            self._lock.release()

    def wait(self, timeout: float = -1) -> bool:
        return self._lock.acquire(True, timeout)

    def clear(self) -> None:
        self._set = False


class _Call:
    """A request awaiting its final reply."""

    __slots__ = (
        "id",
        "frame",
        "sent",
        "wake",
        "done",
        "reply",
        "error",
        "queued",
        "lock",
        "abandoned",
    )

    def __init__(self, request_id: int, frame: bytes, sent: float, lock: Optional["Lock"]) -> None:
        self.id = request_id
        self.frame = frame
        self.sent = sent
        self.wake = _Wake()
        self.done = False
        self.reply: Dict[str, Any] = {}
        self.error: Optional[LockdError] = None
        self.queued: List[int] = []
        self.lock = lock
        self.abandoned = False


class Client:
    """A session with lockd.

    ``servers`` is ``"host:port"``, a cluster's ``"a:1,b:2,c:3"`` or a list of addresses
    (default: ``$LOCKD_ADDR``, else ``127.0.0.1:5555``). ``name`` shows in the server's logs,
    ``lease`` (seconds) is the lease to ask for (the server clamps it), ``auth_token`` is the
    secret of a server run with ``--auth-token-file``, and ``tls`` is an ``ssl.SSLContext``
    or the path of a CA file for a server run with ``--tls-cert``.

    Connecting happens in the constructor; it raises :class:`lockd.ConnectError`,
    :class:`lockd.Unauthorized`, ... The client is thread-safe: every thread may call it at
    once, over its one connection. Use it as a context manager, or call :meth:`close`.
    """

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

        self._mu = threading.Lock()  # state; never held while blocking
        self._wmu = threading.Lock()  # the order of frames on the link; taken before _mu
        self._pending: Dict[int, _Call] = {}
        self._next_id = 1
        self._link: Optional[Link] = None
        self._lost_error: Optional[LockdError] = None
        self._lost_at: Optional[float] = None  # monotonic time the session was given up
        self._closing = False
        self._held: "weakref.WeakSet[Lock]" = weakref.WeakSet()
        self._deferred: List[Dict[str, Any]] = []
        self._tick = threading.Event()  # wakes the watchdog
        self._kick = threading.Event()  # wakes the keepalive
        #: Set when the session is lost; every lock of the client is lost with it.
        self.lost = threading.Event()

        started = time.monotonic()
        self._heard_since = started
        deadline = started + _core.LEADER_SEARCH
        self._resume_secret: Optional[str] = None
        link, hello, sent = self._open(None, None, deadline)
        self._link = link
        self._heard_since = sent
        self._session: int = _core.result_int(hello, "session")
        self._resume_secret = _core.resume_secret_of(hello)
        self._lease: float = _core.result_int(hello, "lease_ms") / 1000.0
        self._server: str = str(hello.get("server", ""))

        self._threads = [
            threading.Thread(target=self._run, args=(link,), name="lockd-session", daemon=True),
            threading.Thread(target=self._watch, name="lockd-watchdog", daemon=True),
            threading.Thread(target=self._keepalive, name="lockd-keepalive", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # -----------------------------------------------------------------------------------------
    # Public API.

    @property
    def session(self) -> int:
        """The session id, as ``status`` shows it."""
        return self._session

    @property
    def lease(self) -> float:
        """The lease the server granted, in seconds."""
        return self._lease

    @property
    def server(self) -> str:
        """The server's name and version, e.g. ``lockd 0.1.0``."""
        return self._server

    def valid_for(self) -> float:
        """Seconds until the local deadline of the session: how long its locks are still
        certainly held if no reply came from now on. 0 once the session is lost."""
        with self._mu:
            if self._lost_error is not None:
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
        """A lock on the resource ``name`` (not yet acquired): use it in ``with``, or call
        :meth:`Lock.acquire`. ``timeout`` is how long ``with`` waits (``None``: as long as it
        takes). ``on_queued(position)`` is called, in the acquiring thread, when the acquire
        has to wait. ``lock_delay`` (seconds) asks the server to hold the resource back that
        long after this lock is lost rather than released (servers without lock-delay ignore
        it)."""
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
        """``permits`` of the semaphore ``name`` of ``limit`` permits (not yet acquired), used
        as :meth:`lock`'s: at most ``limit`` permits are held at once, granted strictly in
        order of arrival, each grant with its own token. Every user of ``name`` must give the
        same ``limit`` (:class:`lockd.LimitMismatch` otherwise)."""
        return Lock(self, name, True, timeout, lock_delay, on_queued, semaphore=(limit, permits))

    def validate(self, name: str, token: int) -> bool:
        """Whether ``token`` is held on ``name`` by some session now."""
        request = {
            "op": "validate",
            "resource": _core.check_name(name),
            "token": _core.check_token(token),
        }
        reply = self._call(request)
        valid = reply.get("valid")
        if not isinstance(valid, bool):
            raise ProtocolError(f"validate reply lacks 'valid': {reply!r}")
        return valid

    def status(self, name: Optional[str] = None) -> List[ResourceStatus]:
        """Who holds and who waits: for ``name``, or for every busy resource (every page; see
        ``iter_status`` to take them a page at a time)."""
        if name is not None:
            return _core.parse_status(self._call(_core.status_request(name)))
        return list(self.iter_status())

    def status_page(self, after: Optional[str] = None, limit: Optional[int] = None) -> StatusPage:
        """One page of busy resources in name order: those after ``after``, at most ``limit``
        (the server's default page of 1000 unless given). Pass its ``next`` as the following
        page's ``after``; it is ``None`` on the last page."""
        reply = self._call(_core.status_request(None, after, limit))
        return _core.parse_status_page(reply, after)

    def iter_status(self, limit: Optional[int] = None) -> Iterator[ResourceStatus]:
        """Every busy resource in name order, asking for one page at a time as it goes."""
        after: Optional[str] = None
        while True:
            page = self.status_page(after, limit)
            yield from page.resources
            if page.next is None:
                return
            after = page.next

    def ping(self) -> None:
        """Round trip to the server (the keepalive does this by itself)."""
        self._call({"op": "ping"})

    def close(self) -> None:
        """Ends the session. On a single server its locks are freed at once; on a cluster the
        client first releases the locks it holds."""
        with self._mu:
            if self._closing:
                return
            self._closing = True
            held = [lock for lock in self._held if lock.token is not None]
            lost = self._lost_error is not None
        if self._cluster and not lost:
            calls = []
            for lock in held:
                try:
                    calls.append(
                        self._start(
                            {"op": "release", "resource": lock.name, "token": lock.token}, None
                        )
                    )
                except LockdError:
                    pass
            end = time.monotonic() + 2.0
            for call in calls:
                call.wake.wait(max(0.0, end - time.monotonic()))
        self._lose(ConnectionLost("the client was closed"))
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:
                thread.join(5.0)

    def __enter__(self) -> "Client":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "lost" if self.lost.is_set() else "open"
        return f"<lockd.Client session={self._session} lease={self._lease}s {state}>"

    # -----------------------------------------------------------------------------------------
    # Calls.

    def _start(
        self,
        request: Dict[str, Any],
        lock: Optional["Lock"],
        block: bool = True,
    ) -> _Call:
        """Registers a call and sends its frame. With ``block=False``, raises
        ``BlockingIOError`` instead of waiting for another sender."""
        if not self._wmu.acquire(blocking=block):
            raise BlockingIOError("another thread is sending")
        try:
            with self._mu:
                if self._lost_error is not None:
                    raise ConnectionLost(f"the session is lost: {self._lost_error.message}")
                request_id = self._next_id
                self._next_id += 1
                frame = _core.encode({"id": request_id, **request})
                call = _Call(request_id, frame, time.monotonic(), lock)
                self._pending[request_id] = call
                if lock is not None:
                    # A new acquire of this Lock: under the state lock, so that a loss of the
                    # session from now on is sure to set the event again.
                    lock.lost.clear()
                link = self._link
            if link is not None:
                try:
                    link.send(frame)
                except OSError:
                    # The session thread sees the link end, and resumes or loses the session;
                    # the call stays registered meanwhile.
                    link.shutdown()
            return call
        finally:
            self._wmu.release()

    def _wait(self, call: _Call, on_queued: Optional[QueuedCallback] = None) -> Dict[str, Any]:
        while True:
            call.wake.wait()
            with self._mu:
                call.wake.clear()
                positions, call.queued = call.queued, []
                done = call.done
            if on_queued is not None:
                for position in positions:
                    on_queued(position)
            if done:
                if call.error is not None:
                    raise call.error
                return call.reply

    def _call(self, request: Dict[str, Any]) -> Dict[str, Any]:
        return self._wait(self._start(request, None))

    def _abandon(self, call: _Call) -> None:
        """The caller stopped waiting for an acquire (an exception, ``KeyboardInterrupt``):
        cancel it, or release the lock if it was granted meanwhile."""
        lock = call.lock
        with self._mu:
            if not call.done:
                call.abandoned = True
                self._deferred.append({"op": "cancel", "target": call.id})
            elif call.error is None and lock is not None and lock.token is not None:
                self._deferred.append({"op": "release", "resource": lock.name, "token": lock.token})
                lock.token = None
                self._held.discard(lock)
        self._kick.set()

    # -----------------------------------------------------------------------------------------
    # Opening a session on a server.

    def _open(
        self,
        resume: Optional[int],
        first: Optional[str],
        deadline: float,
        lease_ms: Optional[int] = None,
    ) -> Tuple[Link, Dict[str, Any], float]:
        """Dials the server that serves and says ``hello`` (resuming ``resume``; asking for
        ``lease_ms`` instead of the client's lease if given). A cluster is searched until
        ``deadline``, following ``not_leader``; a single server is tried once."""
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
                time.sleep(backoff)
                backoff = min(backoff * 2, 0.5)
                candidates.extend(self._addrs)
                continue
            with self._mu:
                if self._lost_error is not None and resume is not None and lease_ms is None:
                    raise self._lost_error
            addr = candidates.pop(0)
            if time.monotonic() >= deadline:
                raise last_error
            try:
                link = Link.dial(
                    addr, self._tls, min(deadline, time.monotonic() + _core.CONNECT_TIMEOUT)
                )
            except ConnectError as err:
                last_error = err
                continue
            try:
                hello, sent = self._hello(link, resume, deadline, lease_ms)
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

    def _hello(
        self, link: Link, resume: Optional[int], deadline: float, lease_ms: Optional[int] = None
    ) -> Tuple[Dict[str, Any], float]:
        with self._mu:
            request_id = self._next_id
            self._next_id += 1
        lease_ms = self._lease_ms if lease_ms is None else lease_ms
        request = _core.hello_request(
            self._name, lease_ms, self._auth, resume, self._resume_secret
        )
        sent = time.monotonic()
        try:
            link.send(_core.encode({"id": request_id, **request}))
        except OSError:
            raise ConnectionLost("the connection closed before hello was answered") from None
        lines = _core.LineBuffer()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConnectionLost("no answer to hello in time")
            try:
                data = link.recv(remaining)
            except OSError:
                data = b""
            if data is None:
                raise ConnectionLost("no answer to hello in time")
            if not data:
                raise ConnectionLost("the connection closed before hello was answered")
            for line in lines.feed(data):
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
    # The session thread: reading replies, resuming on a cluster.

    def _run(self, link: Link) -> None:
        try:
            self._run_links(link)
        except BaseException as err:  # pragma: no cover - a bug; never leave callers hanging
            self._lose(ProtocolError(f"the session thread failed: {err!r}"))
            raise

    def _run_links(self, link: Link) -> None:
        while True:
            end, detail = self._carry(link)
            with self._mu:
                if self._link is link:
                    self._link = None
                stopped = self._lost_error is not None
            link.close()
            if stopped:
                return
            if isinstance(detail, LockdError):
                self._lose(detail)
                return
            if not self._cluster:
                self._lose(ConnectionLost("the connection to lockd was closed"))
                return
            resumed = self._resume(detail if isinstance(detail, str) else None)
            if resumed is None:
                return
            link = resumed

    def _carry(self, link: Link) -> Tuple[str, object]:
        """Routes replies until the link ends: ``("closed", None)``, ``("not_leader",
        leader)`` or ``("broken", error)``."""
        lines = _core.LineBuffer()
        # A healthy cluster node answers the keepalive's pings, so silence for half a lease
        # while a reply is due means it is paused or cut off: look for the leader elsewhere.
        silence = max(self._lease / 2, 0.1) if self._cluster else None
        while True:
            try:
                data = link.recv(silence)
            except (OSError, ValueError):
                return "closed", None
            if data is None:
                with self._mu:
                    waiting = bool(self._pending)
                if waiting:
                    return "closed", None
                continue
            if not data:
                return "closed", None
            try:
                for line in lines.feed(data):
                    end = self._route(_core.decode(line))
                    if end is not None:
                        return end
            except ProtocolError as err:
                return "broken", err

    def _route(self, frame: Dict[str, Any]) -> Optional[Tuple[str, object]]:
        request_id = _core.frame_id(frame)
        if frame.get("event") == "queued":
            position = frame.get("position")
            with self._mu:
                call = self._pending.get(request_id) if request_id is not None else None
                if call is not None and isinstance(position, int):
                    self._heard_since = max(self._heard_since, call.sent)
                    call.queued.append(position)
                    call.wake.set()
            return None
        error = _core.reply_error(frame)
        if request_id is None and isinstance(error, FrameTooLarge):
            # The server could not read the id of a line over its frame limit; it answers
            # with a null id and keeps the connection. The largest frame in flight is that
            # line (every frame the client sends is small but for values).
            with self._mu:
                request_id = _core.largest_pending(
                    {key: len(call.frame) for key, call in self._pending.items()}
                )
            if request_id is None:
                return None
        if request_id is None:
            return "broken", error or ProtocolError(f"reply without id: {frame!r}")
        if isinstance(error, NotLeader) and self._cluster:
            return "not_leader", error.leader
        with self._mu:
            call = self._pending.pop(request_id, None)
            if call is None:
                return None
            self._heard_since = max(self._heard_since, call.sent)
            call.reply = frame
            call.error = error
            call.done = True
            lock = call.lock
            if lock is not None and error is None:
                token = frame.get("token")
                if call.abandoned:
                    if isinstance(token, int):
                        self._deferred.append(
                            {"op": "release", "resource": lock.name, "token": token}
                        )
                        self._kick.set()
                elif isinstance(token, int) and not isinstance(token, bool):
                    lock.token = token
                    self._held.add(lock)
                else:
                    call.error = ProtocolError(f"acquire reply lacks a token: {frame!r}")
            call.wake.set()
        return None

    def _resume(self, leader: Optional[str]) -> Optional[Link]:
        """Takes the session back on the cluster's leader, within the local lease."""
        with self._mu:
            deadline = _core.local_deadline(self._heard_since, self._lease)
        try:
            link, hello, sent = self._open(self._session, leader, deadline)
        except LockdError as err:
            if isinstance(err, NoSession):
                self._lose(ConnectionLost(f"the session ended on the server: {err.message}"))
            else:
                self._lose(
                    ConnectionLost(f"no leader took the session back in time: {err.message}"),
                    give_back=True,
                )
            return None
        with self._wmu:
            with self._mu:
                if self._lost_error is not None:
                    link.close()
                    return None
                self._link = link
                self._heard_since = max(self._heard_since, sent)
                lease_ms = hello.get("lease_ms")
                if isinstance(lease_ms, int):
                    self._lease = lease_ms / 1000.0
                frames = [self._pending[key].frame for key in sorted(self._pending)]
            try:
                link.send(b"".join(frames))
            except OSError:
                link.shutdown()
        return link

    # -----------------------------------------------------------------------------------------
    # The local lease.

    def _lose(self, error: LockdError, give_back: bool = False) -> None:
        """The session is lost: every lock's ``lost`` is set first, then every call fails.
        With ``give_back`` (a cluster session given up while it may still be alive), a
        thread then resumes it once more to release what it held and let it expire."""
        with self._mu:
            if self._lost_error is not None:
                return
            self._lost_error = error
            self._lost_at = time.monotonic()
            pending, self._pending = self._pending, {}
            link, self._link = self._link, None
            held = list(self._held)
        for lock in held:
            lock.lost.set()
        self.lost.set()
        given_up = [(lock.name, lock.token) for lock in held if lock.token is not None]
        waited = any(call.lock is not None for call in pending.values())
        if give_back and self._cluster and (given_up or waited):
            threading.Thread(
                target=self._give_back, args=(given_up,), name="lockd-give-back", daemon=True
            ).start()
        with self._mu:
            for call in pending.values():
                call.error = copy.copy(error)  # each waiting thread raises its own
                call.done = True
                call.wake.set()
        if link is not None:
            link.shutdown()
        self._tick.set()
        self._kick.set()

    def _watch(self) -> None:
        """Gives the session up at its local deadline. Never blocks on the connection."""
        while True:
            with self._mu:
                if self._lost_error is not None:
                    return
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
            self._tick.wait(deadline - now)
            self._tick.clear()

    def _give_back(self, given_up: List[Tuple[str, int]]) -> None:
        """After giving up a cluster session, which a new leader may have kept alive (it gives
        every session a fresh lease): resume it with the shortest lease, release the locks
        this client gave up, and go silent, so that the session and its waits expire within
        the server's minimum lease instead of holding everything for a whole lease."""
        deadline = time.monotonic() + _core.LEADER_SEARCH + self._lease
        try:
            link, _, _ = self._open(self._session, None, deadline, lease_ms=1)
        except LockdError:
            return  # the session is gone (no_session), or no leader: it expires by itself
        try:
            with self._mu:
                first = self._next_id
                self._next_id += len(given_up)
            frames = [
                _core.encode({"id": first + n, "op": "release", "resource": name, "token": token})
                for n, (name, token) in enumerate(given_up)
            ]
            link.send(b"".join(frames))
            waiting = set(range(first, first + len(given_up)))
            lines = _core.LineBuffer()
            end = time.monotonic() + 5.0
            while waiting and time.monotonic() < end:
                data = link.recv(max(0.0, end - time.monotonic()))
                if not data:
                    break
                for line in lines.feed(data):
                    frame = _core.decode(line)
                    if frame.get("event") is None:
                        waiting.discard(_core.frame_id(frame) or 0)
        except (OSError, LockdError):
            pass
        finally:
            link.close()

    def _keepalive(self) -> None:
        """Pings at a quarter of the lease, and sends what the session thread deferred (a
        cancel, a release: the session thread itself never waits to send)."""
        next_ping = time.monotonic() + _core.keepalive_interval(self._lease)
        while True:
            with self._mu:
                if self._lost_error is not None:
                    return
                deferred, self._deferred = self._deferred, []
                self._kick.clear()
            try:
                for request in deferred:
                    self._start(request, None)
                now = time.monotonic()
                if now >= next_ping:
                    self._start({"op": "ping"}, None)
                    next_ping = now + _core.keepalive_interval(self._lease)
            except LockdError:
                return
            self._kick.wait(max(0.0, next_ping - time.monotonic()))


class Lock:
    """A lock on one resource, held by one :class:`Client`'s session. Shaped like
    ``threading.Lock``: :meth:`acquire` returns ``False`` on a timeout, ``with`` raises
    :class:`lockd.Timeout` instead. While held, ``token`` is the fencing token of the grant.

    ``lost`` is a ``threading.Event`` set when the lock is lost without being released: the
    session's local lease ran out, or the connection ended. It is set strictly before the
    server could expire the session and grant the lock to anyone else.
    """

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
        #: The fencing token of the current grant, ``None`` when not held.
        self.token: Optional[int] = None
        #: Set when the lock is lost without a release (see the class docs).
        self.lost = threading.Event()
        self._lost_in_with = False

    def acquire(self, blocking: bool = True, timeout: Optional[float] = None) -> bool:
        """Takes the lock: waits as long as it takes, or ``timeout`` seconds; with
        ``blocking=False`` tries once. Returns ``False`` when the lock was not granted in
        time; any other failure raises."""
        timeout_ms = _core.acquire_timeout_ms(blocking, timeout)
        if self.token is not None:
            if not self.lost.is_set():
                raise AlreadyHeld(f"this Lock already holds {self.name} (locks are not re-entrant)")
            self._forget()
        request = _core.acquire_request(
            self.name, self._mode, timeout_ms, self._lock_delay_ms, self._semaphore
        )
        call = self._client._start(request, self)  # clears `lost` once the call is registered
        try:
            self._client._wait(call, self.on_queued)
        except Timeout:
            return False
        except BaseException as err:
            if not isinstance(err, LockdError):
                self._client._abandon(call)
            raise
        return True

    def release(self) -> None:
        """Gives the lock back and waits for the server to confirm. Raises
        :class:`lockd.NotHeld` when this Lock does not hold it, and :class:`lockd.LockLost`
        when it was lost."""
        client = self._client
        token = self.token
        if token is None:
            raise NotHeld(f"this Lock does not hold {self.name}")
        if self.lost.is_set():
            self._forget()
            raise LockLost(f"the lock on {self.name} was lost before it was released")
        try:
            client._call({"op": "release", "resource": self.name, "token": token})
        except ConnectionLost as err:
            raise LockLost(f"the lock on {self.name} was lost: {err.message}") from None
        finally:
            self._forget()

    def _forget(self) -> None:
        with self._client._mu:
            self.token = None
            self._client._held.discard(self)

    def locked(self) -> bool:
        """Whether this Lock holds its resource (granted, not released, not lost)."""
        return self.token is not None and not self.lost.is_set()

    def valid_for(self) -> float:
        """Seconds the lock is still certainly held if no reply came from now on (0 when not
        held). Keepalive pings keep it far from 0 while the connection is healthy."""
        if not self.locked():
            return 0.0
        return self._client.valid_for()

    def read(self) -> Optional[str]:
        """The resource's value (``None`` if never written); needs the lock."""
        reply = self._client._call(
            {"op": "read", "resource": self.name, "token": self._held_token()}
        )
        value = reply.get("value")
        if value is not None and not isinstance(value, str):
            raise ProtocolError(f"read reply has a value that is not a string: {reply!r}")
        return value

    def write(self, value: str) -> None:
        """Replaces the resource's value, durably; needs the exclusive lock."""
        value = _core.check_value(value)
        self._client._call(
            {"op": "write", "resource": self.name, "token": self._held_token(), "value": value}
        )

    def _held_token(self) -> int:
        token = self.token
        if token is None:
            raise NotHeld(f"this Lock does not hold {self.name}")
        if self.lost.is_set():
            raise LockLost(f"the lock on {self.name} was lost")
        return token

    def __enter__(self) -> "Lock":
        if not self.acquire(True, self.timeout):
            raise Timeout(f"the lock on {self.name} was not granted within {self.timeout} s")
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if self.token is None:
            return
        try:
            self.release()
        except LockdError:
            if exc_type is None:
                raise

    def __repr__(self) -> str:
        state = "lost" if self.lost.is_set() else ("held" if self.token is not None else "free")
        return f"<lockd.Lock {self.name!r} {self._mode} {state} token={self.token}>"
