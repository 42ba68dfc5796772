"""Authentication and TLS."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Callable, Dict

import pytest

import lockd
from helpers import Server, have_openssl, make_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    assert have_openssl(), "the TLS tests need the openssl command (run-tests.sh installs it)"
    return make_certs(tmp_path_factory.mktemp("certs"))


def test_auth_token(start_server: Callable[..., Server], tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("correct horse\n")
    secret.chmod(0o600)
    server = start_server("--auth-token-file", str(secret))
    with lockd.Client(server.addr, auth_token="correct horse") as client:
        with client.lock("private") as lock:
            lock.write("ok")
    with pytest.raises(lockd.Unauthorized) as raised:
        lockd.Client(server.addr, auth_token="guess")
    assert "auth" in raised.value.message
    with pytest.raises(lockd.Unauthorized):
        lockd.Client(server.addr)
    with pytest.raises(TypeError):
        lockd.Client(server.addr, auth_token=b"bytes")  # type: ignore[arg-type]


def test_tls_with_a_ca_file_and_with_a_context(
    start_server: Callable[..., Server], certs: Dict[str, Path]
) -> None:
    server = start_server(
        "--tls-cert", str(certs["server.pem"]), "--tls-key", str(certs["server.key"])
    )
    with lockd.Client(server.addr, tls=str(certs["ca.pem"])) as client:
        with client.lock("secure") as lock:
            lock.write("x" * 100_000)
            assert lock.read() == "x" * 100_000
            assert client.validate("secure", lock.token or 0)
    context = ssl.create_default_context(cafile=str(certs["ca.pem"]))
    with lockd.Client(server.addr, tls=context) as client:
        client.ping()
    # The name checked is the host in the address: localhost is in the certificate too.
    port = server.addr.rsplit(":", 1)[1]
    with lockd.Client(f"localhost:{port}", tls=certs["ca.pem"]) as client:
        client.ping()
    # An untrusted server is refused.
    with pytest.raises(lockd.ConnectError) as raised:
        lockd.Client(server.addr, tls=ssl.create_default_context())
    assert "TLS" in raised.value.message
    # Plain TCP to a TLS port gets nowhere.
    with pytest.raises(lockd.LockdError):
        lockd.Client(server.addr)
    with pytest.raises(ValueError):
        lockd.Client(server.addr, tls="/nonexistent/ca.pem")


def test_mutual_tls(start_server: Callable[..., Server], certs: Dict[str, Path]) -> None:
    server = start_server(
        "--tls-cert",
        str(certs["server.pem"]),
        "--tls-key",
        str(certs["server.key"]),
        "--tls-client-ca",
        str(certs["ca.pem"]),
    )
    context = ssl.create_default_context(cafile=str(certs["ca.pem"]))
    context.load_cert_chain(str(certs["client.pem"]), str(certs["client.key"]))
    with lockd.Client(server.addr, tls=context) as client:
        with client.lock("mtls") as lock:
            assert lock.token is not None
    with pytest.raises(lockd.LockdError):
        # Without a client certificate the server ends the handshake (TLS 1.3 reports it
        # on the first read, so this may be a lost connection rather than a connect error).
        lockd.Client(server.addr, tls=str(certs["ca.pem"]))


def test_tls_carries_pipelined_calls_from_many_threads(
    start_server: Callable[..., Server], certs: Dict[str, Path]
) -> None:
    import threading
    from typing import List

    server = start_server(
        "--tls-cert", str(certs["server.pem"]), "--tls-key", str(certs["server.key"])
    )
    failures: List[BaseException] = []
    with lockd.Client(server.addr, tls=str(certs["ca.pem"])) as client:

        def work(index: int) -> None:
            try:
                for round_ in range(15):
                    value = f"{index}:{round_}:" + "v" * 50_000
                    with client.lock(f"tls/{index}") as lock:
                        lock.write(value)
                        assert lock.read() == value
            except BaseException as err:
                failures.append(err)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not failures, failures
        assert not client.lost.is_set()
