"""One connection to one server, for the threaded client: plain TCP, or TLS through a memory
BIO so that one thread can send while another receives (an ``ssl.SSLSocket`` must not be used
by two threads at once)."""

from __future__ import annotations

import selectors
import socket
import ssl
import threading
import time
from typing import Optional, Tuple

from .errors import ConnectError

_RECV = 256 * 1024


class Link:
    """A connection: ``send`` from any thread (one at a time), ``recv`` from one thread,
    ``shutdown`` from any thread to wake that reader; ``close`` by the reader at the end."""

    def __init__(self, sock: socket.socket, tls: Optional[ssl.SSLObject] = None) -> None:
        self._sock = sock
        self._tls = tls
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        # The TLS object is used under _tls_mu, never while blocking on the socket. The bytes
        # it produces are taken out of the outgoing BIO and written under _send_mu, so that
        # records leave in the order they were made while the reader never waits for a send.
        self._tls_mu = threading.Lock()
        self._send_mu = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ)
        self._plain = b""

    @classmethod
    def dial(
        cls,
        addr: Tuple[str, int],
        context: Optional[ssl.SSLContext],
        deadline: float,
    ) -> "Link":
        """Connects (and does the TLS handshake) before ``deadline`` (monotonic)."""
        host, port = addr
        where = f"{host}:{port}"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ConnectError(f"cannot reach lockd at {where}: no time left")
        try:
            sock = socket.create_connection((host, port), timeout=remaining)
        except OSError as err:
            raise ConnectError(f"cannot reach lockd at {where}: {_describe(err)}") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(None)
            if context is None:
                return cls(sock)
            incoming = ssl.MemoryBIO()
            outgoing = ssl.MemoryBIO()
            tls = context.wrap_bio(incoming, outgoing, server_hostname=host)
            link = cls(sock, tls)
            link._incoming = incoming
            link._outgoing = outgoing
            link._handshake(deadline, where)
            return link
        except BaseException:
            sock.close()
            raise

    def _handshake(self, deadline: float, where: str) -> None:
        assert self._tls is not None
        while True:
            try:
                self._tls.do_handshake()
                self._flush()
                return
            except ssl.SSLWantReadError:
                self._flush()
            except ssl.SSLError as err:
                raise ConnectError(f"TLS handshake with {where} failed: {err}") from None
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._selector.select(remaining):
                raise ConnectError(f"no TLS handshake with {where} in time")
            try:
                data = self._sock.recv(_RECV)
            except OSError as err:
                raise ConnectError(f"TLS handshake with {where} failed: {err}") from None
            if not data:
                raise ConnectError(f"{where} closed the connection during the TLS handshake")
            self._incoming.write(data)

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            self._sock.sendall(data)

    def send(self, data: bytes) -> None:
        """Sends ``data``; raises OSError when the connection is gone."""
        if self._tls is None:
            self._sock.sendall(data)
            return
        with self._send_mu:
            with self._tls_mu:
                try:
                    self._tls.write(data)
                except ssl.SSLError as err:
                    raise OSError(f"TLS write failed: {err}") from None
            self._send_pending()

    def _send_pending(self) -> None:
        """Sends what the TLS object produced; the caller holds _send_mu."""
        with self._tls_mu:
            data = self._outgoing.read()
        if data:
            self._sock.sendall(data)

    def recv(self, timeout: Optional[float]) -> Optional[bytes]:
        """The next bytes received: ``b""`` at the end of the stream, ``None`` when nothing
        came within ``timeout`` seconds. Raises OSError on a failed connection."""
        if self._tls is not None:
            with self._tls_mu:
                pending = self._read_plain()
            if pending:
                return pending
        while True:
            if timeout is not None and not self._selector.select(timeout):
                return None
            data = self._sock.recv(_RECV)
            if self._tls is None:
                return data
            with self._tls_mu:
                if data:
                    self._incoming.write(data)
                else:
                    self._incoming.write_eof()
                plain = self._read_plain()
                reply = self._outgoing.pending > 0
            if reply:  # e.g. a TLS 1.3 key update to answer
                with self._send_mu:
                    self._send_pending()
            if plain:
                return plain
            if not data or self._eof:
                return b""

    _eof = False

    def _read_plain(self) -> bytes:
        assert self._tls is not None
        chunks = []
        while True:
            try:
                chunk = self._tls.read(_RECV)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self._eof = True
                break
            except ssl.SSLError as err:
                raise OSError(f"TLS read failed: {err}") from None
            if not chunk:
                self._eof = True
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def shutdown(self) -> None:
        """Ends the connection both ways; a blocked ``recv`` or ``send`` returns."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        self.shutdown()
        try:
            self._selector.close()
        except (OSError, ValueError):
            pass
        self._sock.close()


def _describe(err: OSError) -> str:
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, socket.timeout):
        return "no answer in time"
    return str(err)
