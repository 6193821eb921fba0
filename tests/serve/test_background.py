"""``dlsec.serve.background.serving``: a real uvicorn in a thread, for exactly a block."""

from __future__ import annotations

import socket

import httpx
import pytest
from fastapi import FastAPI

from dlsec.serve.background import ServingError, serving


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict[str, str]:
        return {"pong": "yes"}

    return app


def test_serves_on_loopback_for_the_block_only() -> None:
    with serving(_app()) as url:
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{url}/ping", timeout=10).json() == {"pong": "yes"}
        port = int(url.rsplit(":", 1)[1])
    with socket.socket() as s, pytest.raises(OSError):  # nobody listens there any more
        s.settimeout(2)
        s.connect(("127.0.0.1", port))


def test_an_app_that_cannot_start_is_one_error_not_a_hang() -> None:
    async def broken(scope, receive, send):  # a lifespan that fails: uvicorn never starts
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.failed", "message": "no"})

    with pytest.raises(ServingError, match="did not start"), serving(broken, start_timeout=10):
        pass
