"""Run an ASGI app (usually :func:`dlsec.serve.app.create_app`'s) under uvicorn in a thread
of this process, on a loopback port the OS picks, for as long as a ``with`` block lasts.

For tests, benchmarks and notebooks that want a real HTTP server (real sockets, real
uvicorn) without a second process; ``dlsec serve`` is the way to serve a model for others.

Example:
    >>> with serving(create_app("models/digits", store=store)) as url:  # doctest: +SKIP
    ...     with HttpOracle(url, token) as oracle:
    ...         oracle.query(x)
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dlsec.errors import DlsecError


class ServingError(DlsecError):
    """The server did not start (or did not stop) in time."""


@contextmanager
def serving(app: Any, *, start_timeout: float = 20.0, stop_timeout: float = 10.0,
            log_level: str = "warning") -> Iterator[str]:
    """Serve ``app`` on ``127.0.0.1`` and a free port in a daemon thread; yield its base
    URL (``http://127.0.0.1:PORT``). On exit uvicorn is asked to stop, its thread is
    joined and the socket closed.

    Raises:
        ServingError: uvicorn did not report started within ``start_timeout`` seconds, or
            its thread was still running ``stop_timeout`` seconds after the stop request.
    """
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name="dlsec-uvicorn")
    thread.start()
    try:
        deadline = time.monotonic() + start_timeout
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise ServingError(f"uvicorn did not start within {start_timeout:g} s")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=stop_timeout)
        sock.close()
    if thread.is_alive():
        raise ServingError(f"uvicorn did not stop within {stop_timeout:g} s")


__all__ = ["ServingError", "serving"]
