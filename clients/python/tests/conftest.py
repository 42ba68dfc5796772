from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, List

import pytest

import lockd
from helpers import Server, lockd_binary

#: Leases as short as 100 ms allowed; 2 s unless a client asks.
SHORT_LEASES = ["--default-lease-ms", "2000", "--min-lease-ms", "100"]


@pytest.fixture(scope="session")
def lockd_bin() -> str:
    return lockd_binary()


@pytest.fixture
def start_server(lockd_bin: str, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    servers: List[Server] = []

    def start(*args: str) -> Server:
        server = Server(lockd_bin, tmp_path / f"lockd{len(servers)}", [*SHORT_LEASES, *args])
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.kill()


@pytest.fixture
def server(start_server: Callable[..., Server]) -> Server:
    return start_server()


@pytest.fixture
def connect(server: Server) -> Iterator[Callable[..., lockd.Client]]:
    """Opens clients of ``server`` (or of the servers given), closed after the test."""
    clients: List[lockd.Client] = []

    def open_client(servers: str = "", **options: object) -> lockd.Client:
        client = lockd.Client(servers or server.addr, **options)  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.close()
