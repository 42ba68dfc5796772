"""lockd for Python: a client for the lockd lock service.

    import lockd

    with lockd.Client("127.0.0.1:5555") as client:
        with client.lock("jobs/nightly", timeout=30) as lock:
            ...  # lock.token fences writes; lock.lost is set if the lock is lost

The asyncio twin is :mod:`lockd.aio`. See docs/python.md.
"""

from ._core import Holder, ResourceStatus, StatusPage, Waiter, lease_margin, local_deadline
from .client import Client, Lock
from .errors import (
    AlreadyHeld,
    BadRequest,
    Cancelled,
    ConnectError,
    ConnectionLost,
    Deadlock,
    FrameTooLarge,
    Internal,
    InvalidResource,
    LimitExceeded,
    LimitMismatch,
    LockdError,
    LockLost,
    NoSession,
    NotExclusive,
    NotHeld,
    NotLeader,
    ProtocolError,
    ServerError,
    Timeout,
    Unauthorized,
    UnknownOp,
    ValueTooLarge,
)

__version__ = "0.1.0"

__all__ = [
    "Client",
    "Lock",
    "Holder",
    "Waiter",
    "ResourceStatus",
    "StatusPage",
    "lease_margin",
    "local_deadline",
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
    "LimitMismatch",
    "NotLeader",
    "NoSession",
    "Internal",
    "ConnectError",
    "ConnectionLost",
    "LockLost",
    "ProtocolError",
]
