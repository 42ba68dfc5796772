"""Test support: the lockd binary, servers and clusters in child processes, and a TCP proxy
that can blackhole a link while keeping both of its sockets open."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[3]

#: How long any wait for a condition may take before the test fails (never a fixed sleep).
PATIENCE = 15.0


def wait_until(condition: Callable[[], object], what: str, timeout: float = PATIENCE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def lockd_binary() -> str:
    """``$LOCKD_BIN``, or lockd built from this repository (once per test session)."""
    given = os.environ.get("LOCKD_BIN")
    if given:
        return given
    subprocess.run(["cargo", "build", "-p", "lockd", "--bin", "lockd"], cwd=REPO, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    if not target.is_absolute():
        target = REPO / target
    return str(target / "debug" / "lockd")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def private_net() -> str:
    """A loopback network of one cluster's own, ``127.X.Y``: its nodes bind ports found free a
    moment earlier, and no other test binds anything on these addresses in that moment."""
    x, y = random.SystemRandom().randrange(1, 255), random.SystemRandom().randrange(1, 255)
    return f"127.{x}.{y}"


class Server:
    """One lockd process. ``addr`` is its client address."""

    def __init__(
        self,
        binary: str,
        data_dir: Path,
        args: Sequence[str] = (),
        listen: str = "127.0.0.1:0",
        wait_banner: bool = True,
    ) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [binary, "--listen", listen, "--data-dir", str(data_dir), *args],
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        self.addr = listen
        if wait_banner:
            self.addr = self._banner()

    def _banner(self) -> str:
        assert self.process.stdout is not None
        result: List[str] = []
        reader = threading.Thread(
            target=lambda: result.append(self.process.stdout.readline().decode()),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        reader.join(PATIENCE)
        line = result[0] if result else ""
        # `tcp://ADDR`, or `tls://ADDR` for a TLS lockd.
        if "://" not in line:
            self.kill()
            raise AssertionError(f"lockd did not start: {line!r}\n{self.log()}")
        return line.strip().split("://", 1)[1]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait()
        self._log.close()


def serves(addr: str) -> bool:
    """Whether the lockd at ``addr`` answers a ping itself (in a cluster, only the leader)."""
    host, port = addr.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2) as sock:
            sock.settimeout(2)
            sock.sendall(b'{"id":1,"op":"ping"}\n')
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                data += chunk
            return bool(json.loads(data).get("ok"))
    except (OSError, ValueError):
        return False


class Cluster:
    """Three lockd nodes on a loopback network of their own with short Raft timings; node 1
    bootstraps."""

    def __init__(self, binary: str, root: Path, args: Sequence[str] = ()) -> None:
        self._binary = binary
        # Each node's client and peer ports are on addresses of their own (the peer one on
        # another host number), so no two of the ports found free can be the same one.
        net = private_net()
        hosts = [(f"{net}.{10 + index}", f"{net}.{110 + index}") for index in range(1, 4)]
        ports = [(free_port(client), free_port(peer)) for client, peer in hosts]
        self.addrs = [f"{client}:{port}" for (client, _), (port, _) in zip(hosts, ports)]
        peers = ",".join(
            f"{index}={client}:{client_port}/{peer}:{peer_port}"
            for index, ((client, peer), (client_port, peer_port)) in enumerate(
                zip(hosts, ports), start=1
            )
        )
        self.nodes: List[Optional[Server]] = []
        self._root = root
        self._args: List[List[str]] = []
        for index, ((client_host, peer_host), (client, peer)) in enumerate(
            zip(hosts, ports), start=1
        ):
            node_args = [
                "--node-id",
                str(index),
                "--peer-listen",
                f"{peer_host}:{peer}",
                "--peers",
                peers,
                "--election-timeout-ms",
                "500",
                "--heartbeat-ms",
                "100",
                *args,
            ]
            if index == 1:
                node_args.append("--bootstrap")
            self._args.append(node_args)
            self.nodes.append(
                Server(
                    self._binary, root / f"node{index}", node_args, listen=f"{client_host}:{client}"
                )
            )

    def servers(self) -> str:
        return ",".join(self.addrs)

    def leader(self, not_: Sequence[int] = ()) -> int:
        """Waits until a live node not in ``not_`` serves as leader; returns its index."""
        found: List[int] = []

        def look() -> bool:
            for index, node in enumerate(self.nodes):
                if node is not None and index not in not_ and serves(self.addrs[index]):
                    found.append(index)
                    return True
            return False

        wait_until(look, "a cluster leader", timeout=30)
        return found[0]

    def kill(self, index: int) -> None:
        node = self.nodes[index]
        if node is not None:
            node.kill()
            self.nodes[index] = None

    def restart(self, index: int) -> None:
        """Starts a killed node again on its addresses and data directory."""
        assert self.nodes[index] is None
        self.nodes[index] = Server(
            self._binary,
            self._root / f"node{index + 1}",
            self._args[index],
            listen=self.addrs[index],
        )

    def stop(self) -> None:
        for index in range(len(self.nodes)):
            self.kill(index)


class Proxy:
    """Relays connections to ``upstream``. ``blackhole()`` keeps every socket open but discards
    every byte both ways, as a partition looks to TCP; ``drop()`` closes everything."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.addr = "127.0.0.1:%d" % self._listener.getsockname()[1]
        self.mode = "pass"
        self._sockets: List[socket.socket] = []
        self._mu = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._upstream)
            except OSError:
                client.close()
                continue
            with self._mu:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                # A partition passes no end of stream either: the far side hears nothing.
                if self.mode == "pass":
                    try:
                        sink.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                return
            if self.mode == "pass":
                try:
                    sink.sendall(data)
                except OSError:
                    return
            # blackhole: discard

    def blackhole(self) -> None:
        self.mode = "blackhole"

    def drop(self) -> None:
        self.mode = "drop"
        with self._mu:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def close(self) -> None:
        self._listener.close()
        self.drop()


def have_openssl() -> bool:
    return shutil.which("openssl") is not None


def make_certs(directory: Path) -> Dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, made with
    the openssl command."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=lockd test CA",
        # What Python 3.13's strict verification (VERIFY_X509_STRICT) asks of a CA.
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        (directory / f"{name}.ext").write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n" + ext + "\n"
        )
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN=lockd test {name}",
        )
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
        )
    return {
        name: directory / name
        for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")
    }
