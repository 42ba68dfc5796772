"""What the sync and asyncio clients share: checking input, building frames, reading replies,
the local lease, addresses and TLS. No I/O happens here."""

from __future__ import annotations

import json
import math
import os
import ssl
import unicodedata
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .errors import LockdError, ProtocolError, error_from_wire

DEFAULT_ADDR = "127.0.0.1:5555"
MAX_U64 = 2**64 - 1
MAX_NAME_BYTES = 256

#: How long a cluster client searches for a leader, at connect and on each failover.
LEADER_SEARCH = 10.0
#: How long one dial waits for the TCP handshake (and again for TLS).
CONNECT_TIMEOUT = 5.0
#: The largest reply line accepted.
MAX_REPLY_BYTES = 1 << 30

#: Every code point with the Unicode White_Space property (the server refuses them in names).
_WHITE_SPACE = frozenset(
    "\u0009\u000a\u000b\u000c\u000d\u0020\u0085\u00a0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)

Servers = Union[str, Sequence[str], None]
TlsArg = Union[ssl.SSLContext, str, "os.PathLike[str]", None]


# ---------------------------------------------------------------------------------------------
# Input checks: bad input raises at the call, before anything is sent.


def check_name(name: object) -> str:
    """A resource name the server will accept (docs/protocol.md §7), or ValueError/TypeError."""
    if not isinstance(name, str):
        raise TypeError(f"a resource name must be a str, not {type(name).__name__}")
    size = len(name.encode("utf-8", "surrogatepass"))
    if size == 0:
        raise ValueError("a resource name must not be empty")
    if size > MAX_NAME_BYTES:
        raise ValueError(f"resource name is {size} bytes long; the limit is {MAX_NAME_BYTES}")
    for index, char in enumerate(name):
        if char in _WHITE_SPACE or unicodedata.category(char) in ("Cc", "Cs"):
            raise ValueError(
                f"resource name {name!r} contains {char!r} at character {index}; control "
                "characters, surrogates and whitespace are not allowed"
            )
    return name


def check_token(token: object) -> int:
    """A fencing token: an int from 1 to 2**64-1."""
    if isinstance(token, bool) or not isinstance(token, int):
        raise TypeError(f"a token must be an int, not {type(token).__name__}")
    if not 0 < token <= MAX_U64:
        raise ValueError(f"a token is an integer from 1 to 2**64-1, not {token}")
    return token


def check_value(value: object) -> str:
    """A value to write: any str (the server checks its size)."""
    if not isinstance(value, str):
        raise TypeError(f"a value must be a str, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"a value must be valid Unicode text: {err}") from None
    return value


def seconds_to_ms(seconds: object, what: str, *, zero_ok: bool = True) -> int:
    """A duration in seconds as whole milliseconds for the wire, rounded up so that a short
    positive duration never becomes 0 (which means "try once" for a timeout)."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, not {type(seconds).__name__}")
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"{what} must be a non-negative number of seconds, not {seconds}")
    if seconds == 0 and not zero_ok:
        raise ValueError(f"{what} must be positive")
    if math.isinf(seconds):
        return MAX_U64
    return min(MAX_U64, math.ceil(seconds * 1000))


def acquire_timeout_ms(blocking: bool, timeout: Optional[float]) -> Optional[int]:
    """The ``timeout_ms`` of an acquire, following ``threading.Lock.acquire``: a non-blocking
    call tries once, ``None`` or ``-1`` waits as long as it takes."""
    if not isinstance(blocking, bool):
        raise TypeError(f"blocking must be a bool, not {type(blocking).__name__}")
    if timeout is not None and not isinstance(timeout, bool) and timeout == -1:
        timeout = None
    if not blocking:
        if timeout is not None:
            raise ValueError("can't specify a timeout for a non-blocking call")
        return 0
    if timeout is None:
        return None
    return seconds_to_ms(timeout, "timeout")


def check_mode(shared: object) -> str:
    if not isinstance(shared, bool):
        raise TypeError(f"shared must be a bool, not {type(shared).__name__}")
    return "shared" if shared else "exclusive"


def check_client_name(name: object) -> Optional[str]:
    if name is None:
        return None
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    return name


# ---------------------------------------------------------------------------------------------
# Addresses and TLS.


def parse_servers(servers: Servers) -> List[Tuple[str, int]]:
    """``"host:port"``, ``"a:1,b:2,c:3"`` or a list of them; ``LOCKD_ADDR`` (else
    127.0.0.1:5555) when ``None``."""
    if servers is None:
        servers = os.environ.get("LOCKD_ADDR") or DEFAULT_ADDR
    if isinstance(servers, str):
        items = servers.split(",")
    elif isinstance(servers, (list, tuple)):
        items = []
        for item in servers:
            if not isinstance(item, str):
                raise TypeError(f"a server address must be a str, not {type(item).__name__}")
            items.extend(item.split(","))
    else:
        raise TypeError(
            f"servers must be 'host:port', 'a:1,b:2' or a list, not {type(servers).__name__}"
        )
    addrs = [parse_addr(item.strip()) for item in items if item.strip()]
    if not addrs:
        raise ValueError("no server address given")
    return addrs


def parse_addr(text: str) -> Tuple[str, int]:
    if text.startswith("tcp://"):
        text = text[len("tcp://") :]
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"a server address is host:port, not {text!r}")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


def format_addr(addr: Tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def ssl_context(tls: TlsArg) -> Optional[ssl.SSLContext]:
    """``tls`` as a context: an ``ssl.SSLContext`` as given, or the path of a CA file (PEM) to
    trust for the server's certificate."""
    if tls is None:
        return None
    if isinstance(tls, ssl.SSLContext):
        return tls
    if isinstance(tls, (str, os.PathLike)):
        path = os.fspath(tls)
        if not os.path.isfile(path):
            raise ValueError(f"tls CA file {path!r} does not exist")
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=path)
        return context
    raise TypeError(f"tls must be an ssl.SSLContext or a CA file path, not {type(tls).__name__}")


# ---------------------------------------------------------------------------------------------
# The local lease.

#: The smallest safety margin kept before the server could expire a session, in seconds.
MIN_MARGIN = 0.05
#: The allowance for the client's clock running slower than the server's (1%: far beyond the
#: rate error of any working clock, which is below 0.05%).
DRIFT = 0.01


def lease_margin(lease: float) -> float:
    """How much earlier than the server could expire the session the client gives up:
    ``min(max(lease/10, 50 ms), lease/2) + lease * 1%``."""
    return min(max(lease / 10, MIN_MARGIN), lease / 2) + lease * DRIFT


def local_deadline(heard_since: float, lease: float) -> float:
    """The local deadline (monotonic seconds): the send time of the newest request the server
    answered, plus the lease, minus the margin."""
    return heard_since + lease - lease_margin(lease)


def keepalive_interval(lease: float) -> float:
    """How often to ping: a quarter of the lease, so that a ping answered late or lost still
    leaves most of the local lease."""
    return max(lease / 4, 0.005)


# ---------------------------------------------------------------------------------------------
# Frames.


def encode(request: Dict[str, Any]) -> bytes:
    return (json.dumps(request, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")


def decode(line: bytes) -> Dict[str, Any]:
    try:
        frame = json.loads(line)
    except (ValueError, UnicodeDecodeError) as err:
        raise ProtocolError(f"the server sent a line that is not JSON: {err}") from None
    if not isinstance(frame, dict):
        raise ProtocolError(f"the server sent a frame that is not an object: {frame!r}")
    return frame


def reply_error(frame: Dict[str, Any]) -> Optional[LockdError]:
    """The error of a final reply, or ``None`` when it succeeded."""
    if frame.get("ok") is True:
        return None
    return error_from_wire(frame.get("error"))


def frame_id(frame: Dict[str, Any]) -> Optional[int]:
    value = frame.get("id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def largest_pending(sizes: Dict[int, int]) -> Optional[int]:
    """The id of the largest frame in flight (the oldest of equals), for a ``frame_too_large``
    answer, which has no id."""
    if not sizes:
        return None
    return max(sizes, key=lambda key: (sizes[key], -key))


class LineBuffer:
    """Splits received bytes into lines."""

    def __init__(self) -> None:
        self._data = bytearray()

    def feed(self, data: bytes) -> List[bytes]:
        self._data += data
        if b"\n" not in data:
            if len(self._data) > MAX_REPLY_BYTES:
                raise ProtocolError("reply longer than 1 GiB")
            return []
        *lines, rest = self._data.split(b"\n")
        self._data = bytearray(rest)
        return [bytes(line) for line in lines if line.strip()]


# ---------------------------------------------------------------------------------------------
# Results.


@dataclass(frozen=True)
class Holder:
    """A holder in ``status``; ``permits`` is set in a semaphore."""

    session: int
    mode: str
    token: int
    held_ms: int
    permits: Optional[int] = None


@dataclass(frozen=True)
class Waiter:
    """A waiter in ``status``, first in line first; ``permits`` is set in a semaphore."""

    session: int
    mode: str
    waited_ms: int
    permits: Optional[int] = None


@dataclass(frozen=True)
class ResourceStatus:
    """One resource in ``status``: its holders in grant order, its waiters in line; for a
    semaphore, its ``limit`` and the ``permits_used`` by its holders."""

    resource: str
    holders: List[Holder]
    waiters: List[Waiter]
    limit: Optional[int] = None
    permits_used: Optional[int] = None


#: The largest semaphore limit the protocol allows.
MAX_PERMIT_LIMIT = 65535


def check_semaphore(limit: int, permits: int) -> Tuple[int, int]:
    """``(limit, permits)`` of a semaphore acquire, checked as the server would."""
    for field, value, top in (("limit", limit, MAX_PERMIT_LIMIT), ("permits", permits, limit)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{field} must be an int, not {value!r}")
        if not 1 <= value <= top:
            raise ValueError(f"{field} must be from 1 to {top}, not {value}")
    return limit, permits


@dataclass(frozen=True)
class StatusPage:
    """One page of ``status``: busy resources in name order, and ``next``, the ``after`` of the
    following page (``None`` on the last page)."""

    resources: List[ResourceStatus]
    next: Optional[str]


def status_request(
    name: Optional[str], after: Optional[str] = None, limit: Optional[int] = None
) -> Dict[str, Any]:
    """A ``status`` of one resource, or of a page of busy resources after ``after`` (the
    server's default page of 1000 unless ``limit`` says otherwise)."""
    request: Dict[str, Any] = {"op": "status"}
    if name is not None:
        request["resource"] = check_name(name)
    if after is not None:
        request["after"] = check_name(after)
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive int, not {limit!r}")
        request["limit"] = limit
    return request


def parse_status_page(frame: Dict[str, Any], after: Optional[str]) -> StatusPage:
    """A ``status`` reply asked for with ``after``. Its ``next`` is kept only if it moves past
    ``after``, so that following cursors always ends; a server older than paging sends none."""
    following = frame.get("next")
    if following is not None and not isinstance(following, str):
        raise ProtocolError(f"malformed status reply: next is {following!r}")
    if following is not None and after is not None and following <= after:
        following = None
    return StatusPage(parse_status(frame), following)


def parse_status(frame: Dict[str, Any]) -> List[ResourceStatus]:
    try:
        return [
            ResourceStatus(
                resource=entry["resource"],
                holders=[
                    Holder(h["session"], h["mode"], h["token"], h["held_ms"], h.get("permits"))
                    for h in entry["holders"]
                ],
                waiters=[
                    Waiter(w["session"], w["mode"], w["waited_ms"], w.get("permits"))
                    for w in entry["waiters"]
                ],
                limit=entry.get("limit"),
                permits_used=entry.get("permits_used"),
            )
            for entry in frame["resources"]
        ]
    except (KeyError, TypeError) as err:
        raise ProtocolError(f"malformed status reply: {err!r}") from None


def result_int(frame: Dict[str, Any], field: str) -> int:
    value = frame.get(field)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"reply lacks the integer {field!r}: {frame!r}")
    return value


def hello_request(
    name: Optional[str],
    lease_ms: Optional[int],
    auth: Optional[str],
    session: Optional[int],
    resume_secret: Optional[str] = None,
) -> Dict[str, Any]:
    """A ``hello``; with ``session``, one that resumes it, which a cluster only allows with
    the ``resume_secret`` that the session's first ``hello`` returned."""
    request: Dict[str, Any] = {"op": "hello"}
    if name is not None:
        request["client"] = name
    if lease_ms is not None:
        request["lease_ms"] = lease_ms
    if auth is not None:
        request["auth"] = auth
    if session is not None:
        request["session"] = session
        if resume_secret is not None:
            request["resume_secret"] = resume_secret
    return request


def resume_secret_of(hello: Dict[str, Any]) -> Optional[str]:
    """The secret that resumes the session a ``hello`` reply opened (cluster mode), if any."""
    secret = hello.get("resume_secret")
    return secret if isinstance(secret, str) else None


def acquire_request(
    name: str,
    mode: str,
    timeout_ms: Optional[int],
    lock_delay_ms: Optional[int],
    semaphore: Optional[Tuple[int, int]] = None,
) -> Dict[str, Any]:
    """An ``acquire``; with ``semaphore`` (limit, permits), of that many permits (which are
    shared holds, so ``mode`` is left out)."""
    request: Dict[str, Any] = {"op": "acquire", "resource": name}
    if semaphore is not None:
        request["limit"], request["permits"] = semaphore
    elif mode != "exclusive":
        request["mode"] = mode
    if timeout_ms is not None:
        request["timeout_ms"] = timeout_ms
    if lock_delay_ms is not None:
        request["lock_delay_ms"] = lock_delay_ms
    return request
