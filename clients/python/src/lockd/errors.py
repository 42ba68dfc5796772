"""The exceptions of the lockd client.

Every failure is a :class:`LockdError`. A request the server refused raises the subclass for
its wire code (docs/protocol.md §9), carrying the server's message; failures on this side of
the wire (the server cannot be reached, the session was lost, the server sent something this
client cannot read) have their own classes. Bad input (a resource name the server would
refuse, a token that is not a positive integer, ...) raises :class:`ValueError` or
:class:`TypeError` at the call, before anything is sent.
"""

from __future__ import annotations

from typing import Dict, Optional, Type

__all__ = [
    "LockdError",
    "ServerError",
    "BadRequest",
    "UnknownOp",
    "InvalidResource",
    "FrameTooLarge",
    "ValueTooLarge",
    "Timeout",
    "Cancelled",
    "AlreadyHeld",
    "NotHeld",
    "NotExclusive",
    "Deadlock",
    "Unauthorized",
    "LimitExceeded",
    "NotLeader",
    "NoSession",
    "Internal",
    "ConnectError",
    "ConnectionLost",
    "LockLost",
    "ProtocolError",
    "error_from_wire",
]


class LockdError(Exception):
    """Base class of every error this package raises (besides ValueError/TypeError for bad
    input). ``code`` is the wire code for errors the server sent, else ``None``."""

    code: Optional[str] = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ServerError(LockdError):
    """The server refused a request; the subclass names the wire code."""

    code: Optional[str] = None


class BadRequest(ServerError):
    """``bad_request``: a frame or field the server could not accept."""

    code = "bad_request"


class UnknownOp(ServerError):
    """``unknown_op``: the op is not part of the server's protocol."""

    code = "unknown_op"


class InvalidResource(ServerError):
    """``invalid_resource``: the resource name breaks the naming rules."""

    code = "invalid_resource"


class FrameTooLarge(ServerError):
    """``frame_too_large``: a request line exceeded ``--max-frame-bytes``."""

    code = "frame_too_large"


class ValueTooLarge(ServerError):
    """``value_too_large``: a written value exceeded ``--max-value-bytes``."""

    code = "value_too_large"


class Timeout(ServerError, TimeoutError):
    """``timeout``: the lock was not granted within the acquire's timeout (or was not free at
    once, for a try-lock)."""

    code = "timeout"


class Cancelled(ServerError):
    """``cancelled``: a waiting acquire was withdrawn."""

    code = "cancelled"


class AlreadyHeld(ServerError):
    """``already_held``: this session already holds or waits for the resource."""

    code = "already_held"


class NotHeld(ServerError):
    """``not_held``: no lock on the resource is held with this token."""

    code = "not_held"


class NotExclusive(ServerError):
    """``not_exclusive``: writing needs the exclusive lock."""

    code = "not_exclusive"


class Deadlock(ServerError):
    """``deadlock``: waiting would close a cycle of sessions; nothing was queued."""

    code = "deadlock"


class Unauthorized(ServerError):
    """``unauthorized``: the server wants the right ``auth_token``."""

    code = "unauthorized"


class LimitExceeded(ServerError):
    """``limit_exceeded``: a server limit would be exceeded; the message names it."""

    code = "limit_exceeded"


class LimitMismatch(ServerError):
    """``limit_mismatch``: the resource is a semaphore of another limit, or a lock asked for as
    a semaphore (or the other way round); the message gives the current limit."""

    code = "limit_mismatch"


class NotLeader(ServerError):
    """``not_leader``: this cluster node is not the leader. ``leader`` is the leader's client
    address when the node knew it. The client follows it by itself; this reaches callers only
    when no leader could be found."""

    code = "not_leader"

    def __init__(self, message: str, leader: Optional[str] = None) -> None:
        super().__init__(message)
        self.leader = leader


class NoSession(ServerError):
    """``no_session``: the session to resume no longer exists; its locks are gone."""

    code = "no_session"


class Internal(ServerError):
    """``internal``: the server failed in a way that is not the client's fault."""

    code = "internal"


class ConnectError(LockdError, ConnectionError):
    """No server could be reached (or, for a cluster, no leader was found in time)."""


class ConnectionLost(LockdError, ConnectionError):
    """The session is lost: the connection ended, or the local lease ran out before the
    server answered (docs/python.md, "The local lease"). Every lock of the session is lost
    and its ``lost`` event is set. Open a new :class:`lockd.Client` to carry on."""


class LockLost(ConnectionLost):
    """A ``with client.lock(...)`` block ended normally, but the lock had been lost while the
    block ran (``lock.lost`` was set): some of the block may have run unprotected."""


class ProtocolError(LockdError):
    """The server sent something this client cannot read."""


_BY_CODE: Dict[str, Type[ServerError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        UnknownOp,
        InvalidResource,
        FrameTooLarge,
        ValueTooLarge,
        Timeout,
        Cancelled,
        AlreadyHeld,
        NotHeld,
        NotExclusive,
        Deadlock,
        Unauthorized,
        LimitExceeded,
        LimitMismatch,
        NotLeader,
        NoSession,
        Internal,
    )
    if cls.code is not None
}


def error_from_wire(body: object) -> LockdError:
    """The exception for an ``error`` object of a failed reply."""
    if not isinstance(body, dict):
        return ProtocolError(f"malformed error in reply: {body!r}")
    code = body.get("code")
    message = body.get("message")
    if not isinstance(message, str):
        message = str(code)
    if code == "not_leader":
        leader = body.get("leader")
        return NotLeader(message, leader if isinstance(leader, str) else None)
    cls = _BY_CODE.get(code) if isinstance(code, str) else None
    if cls is None:
        error = ServerError(message)
        error.code = code if isinstance(code, str) else None
        return error
    return cls(message)
