#!/usr/bin/env python3
"""Lock+unlock pairs per second per client thread: lockd's Python client against redis-py's
``Lock`` on a local redis-server, measured in one run, alternating, several rounds.

    python bench.py [--threads 1] [--seconds 1] [--rounds 9] [--lockd PATH]

Needs redis-server on PATH and redis-py installed (``pip install redis``). Each thread has its
own client (its own connection) and its own resource, so the figure is the round-trip cost
of one thread's pairs, not contention. lockd runs from --lockd, $LOCKD_BIN, or the
repository's release build (``cargo build --release -p lockd``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, List

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

import lockd  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_lockd(
    binary: str, data_dir: str, extra: List[str]
) -> "tuple[subprocess.Popen[bytes], str]":
    process = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--data-dir", data_dir, "--log-level", "warn", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    if "tcp://" not in line:
        raise SystemExit(f"lockd did not start: {line!r}")
    return process, line.strip().split("tcp://", 1)[1]


def start_redis(data_dir: str) -> "tuple[subprocess.Popen[bytes], int]":
    port = free_port()
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            data_dir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis(port=port).ping()
            return process, port
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def measure(
    threads: int, seconds: float, make_worker: Callable[[int], Callable[[], None]]
) -> float:
    """Pairs per second per thread."""
    workers = [make_worker(index) for index in range(threads)]
    counts = [0] * threads
    start = threading.Barrier(threads + 1)
    stop = threading.Event()

    def run(index: int) -> None:
        pair = workers[index]
        pair()  # warm up
        start.wait()
        count = 0
        while not stop.is_set():
            pair()
            count += 1
        counts[index] = count

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    start.wait()
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - began
    return sum(counts) / elapsed / threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument(
        "--lockd", default=os.environ.get("LOCKD_BIN") or str(REPO / "target" / "release" / "lockd")
    )
    parser.add_argument(
        "--lockd-arg",
        action="append",
        default=[],
        help="an extra lockd flag, e.g. --lockd-arg=--worker-threads=1",
    )
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not on PATH (apt-get install redis-server)")
    import redis

    with tempfile.TemporaryDirectory() as tmp:
        lockd_process, addr = start_lockd(args.lockd, os.path.join(tmp, "lockd"), args.lockd_arg)
        redis_process, port = start_redis(tmp)
        clients: List[lockd.Client] = []
        try:

            def lockd_worker(index: int) -> Callable[[], None]:
                client = lockd.Client(addr)
                clients.append(client)
                lock = client.lock(f"bench/{index}")

                def pair() -> None:
                    lock.acquire()
                    lock.release()

                return pair

            def redis_worker(index: int) -> Callable[[], None]:
                lock = redis.Redis(port=port).lock(f"bench/{index}", timeout=15)

                def pair() -> None:
                    lock.acquire()
                    lock.release()

                return pair

            print(
                f"lockd {args.lockd} {' '.join(args.lockd_arg)}; redis-server on port {port}; "
                f"redis-py {redis.__version__}; Python {sys.version.split()[0]}; "
                f"{args.threads} thread(s), {args.seconds} s x {args.rounds} rounds"
            )
            ratios = []
            for round_ in range(args.rounds):
                ours = measure(args.threads, args.seconds, lockd_worker)
                theirs = measure(args.threads, args.seconds, redis_worker)
                ratios.append(ours / theirs)
                print(
                    f"round {round_ + 1}: lockd {ours:8.0f} pairs/s/thread   "
                    f"redis-py Lock {theirs:8.0f} pairs/s/thread   ratio {ours / theirs:.2f}"
                )
                for client in clients:
                    client.close()
                clients.clear()
            print(
                f"median ratio lockd/redis-py: {statistics.median(ratios):.2f} "
                f"(min {min(ratios):.2f}, max {max(ratios):.2f})"
            )
        finally:
            for client in clients:
                client.close()
            lockd_process.terminate()
            redis_process.terminate()
            lockd_process.wait()
            redis_process.wait()


if __name__ == "__main__":
    main()
