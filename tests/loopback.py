"""Servers on 127.0.0.1 for tests (loopback only, bounded): uvicorn in a thread, Milvus Lite in
a process of its own, and a Milvus standalone server."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def milvus_lite_server(
    data_dir: Path, port: int | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A Milvus Lite server in a process of its own, as a Milvus server would be; yields its URI
    and the process (kill it to lose the server mid-test; start another on the same ``port``
    and ``data_dir`` to bring it back)."""
    port = port or free_port()
    command = [
        sys.executable,
        "-m",
        "milvus_lite",
        "server",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.kill()
        proc.wait()


@contextmanager
def milvus_standalone(data_dir: Path) -> Iterator[str]:
    """A real Milvus standalone server (PyPI's ``milvus``: the server binary with its own etcd
    and local storage under ``data_dir``) on free ports; yields its URI, stops it afterwards."""
    from milvus import MilvusServer

    server = MilvusServer()
    server.set_base_dir(str(data_dir))
    server.start()  # waits for its /healthz
    try:
        yield f"http://127.0.0.1:{server.listen_port}"
    finally:
        server.stop()


@contextmanager
def serving(app: Any, settings: Any = None) -> Iterator[str]:
    """Serve ``app`` on a free loopback port as `recsys-infer serve` does (its HTTP protocol
    bounded by ``settings``, default the defaults); yields its base URL and stops it afterwards."""
    import uvicorn

    from recsys_infer.serve import ServeSettings
    from recsys_infer.serve.protocol import bounded_http

    port = free_port()
    http = bounded_http(settings or ServeSettings())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical", http=http))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(400):
            if server.started:
                break
            time.sleep(0.05)
        assert server.started, "the server did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
