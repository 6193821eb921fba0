"""fetch_mnist against a local HTTP server: hashes, resume, bad hashes, outages, skips.

No test touches the internet: the server listens on 127.0.0.1 and serves small fake
``.gz`` files whose sha256 the tests pass in ``files=``.
"""

from __future__ import annotations

import gzip
import hashlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from dlsec.data.core import DatasetError
from dlsec.data.fetch import MNIST_BASE_URL, MNIST_FILES, fetch_mnist


def _fake_files() -> dict[str, bytes]:
    rng = np.random.default_rng(3)
    sizes = {"train-images-idx3-ubyte.gz": 150_000, "train-labels-idx1-ubyte.gz": 1_000}
    return {name: gzip.compress(rng.bytes(n)) for name, n in sizes.items()}


FILES = _fake_files()
HASHES = {name: hashlib.sha256(data).hexdigest() for name, data in FILES.items()}


@dataclass
class Behaviour:
    """What the fake server does; tests change it between calls."""

    honor_range: bool = True
    cut_after: int | None = None  # send only this many body bytes, then hang up
    requests: list[tuple[str, str | None]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    behaviour: Behaviour  # set on a per-server subclass

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        name = self.path.lstrip("/")
        range_header = self.headers.get("Range")
        self.behaviour.requests.append((name, range_header))
        data = FILES.get(name)
        if data is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        if range_header and self.behaviour.honor_range:
            start = int(range_header.removeprefix("bytes=").rstrip("-"))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/gzip")
        self.end_headers()
        if self.behaviour.cut_after is not None:
            self.wfile.write(body[: self.behaviour.cut_after])
            self.close_connection = True
            return
        self.wfile.write(body)


@dataclass
class Server:
    url: str
    behaviour: Behaviour


@pytest.fixture
def server() -> Iterator[Server]:
    behaviour = Behaviour()
    handler = type("Handler", (_Handler,), {"behaviour": behaviour})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{httpd.server_address[1]}/", behaviour)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _fetch(to: Path, server: Server, **kwargs: object) -> list[Path]:
    options: dict = {"base_url": server.url, "files": HASHES, "progress": False, "timeout": 5}
    options.update(kwargs)
    return fetch_mnist(to, **options)


def _assert_complete(to: Path) -> None:
    for name, data in FILES.items():
        assert (to / name).read_bytes() == data
        assert not (to / f"{name}.part").exists()
    assert sorted(p.name for p in to.iterdir()) == sorted(FILES)


def test_full_download(tmp_path: Path, server: Server) -> None:
    to = tmp_path / "mnist"
    paths = _fetch(to, server, progress=True)
    assert paths == [to / name for name in FILES]
    _assert_complete(to)
    assert [name for name, _ in server.behaviour.requests] == list(FILES)
    assert all(rng is None for _, rng in server.behaviour.requests)


def test_resume_sends_range(tmp_path: Path, server: Server) -> None:
    name = "train-images-idx3-ubyte.gz"
    half = len(FILES[name]) // 2
    (tmp_path / f"{name}.part").write_bytes(FILES[name][:half])
    _fetch(tmp_path, server)
    _assert_complete(tmp_path)
    assert (name, f"bytes={half}-") in server.behaviour.requests


def test_server_ignoring_range_restarts(tmp_path: Path, server: Server) -> None:
    server.behaviour.honor_range = False
    name = "train-images-idx3-ubyte.gz"
    (tmp_path / f"{name}.part").write_bytes(FILES[name][:1000])
    _fetch(tmp_path, server)
    _assert_complete(tmp_path)
    assert (name, "bytes=1000-") in server.behaviour.requests  # asked, got a 200


def test_part_longer_than_file_restarts(tmp_path: Path, server: Server) -> None:
    name = "train-labels-idx1-ubyte.gz"
    (tmp_path / f"{name}.part").write_bytes(b"\x00" * (len(FILES[name]) + 10))
    _fetch(tmp_path, server)  # 416 -> start over without Range
    _assert_complete(tmp_path)


def test_interrupted_download_keeps_part_then_resumes(tmp_path: Path, server: Server) -> None:
    name = "train-images-idx3-ubyte.gz"
    server.behaviour.cut_after = 70_000
    with pytest.raises(DatasetError) as info:
        _fetch(tmp_path, server, files={name: HASHES[name]})
    assert str(info.value).startswith(f"{server.url}{name}: download failed")
    part = tmp_path / f"{name}.part"
    assert 0 < part.stat().st_size <= 70_000
    assert not (tmp_path / name).exists()
    kept = part.stat().st_size

    server.behaviour.cut_after = None
    _fetch(tmp_path, server)
    _assert_complete(tmp_path)
    assert (name, f"bytes={kept}-") in server.behaviour.requests


def test_wrong_hash_deletes_download(tmp_path: Path, server: Server) -> None:
    name = "train-labels-idx1-ubyte.gz"
    wrong = "0" * 64
    with pytest.raises(DatasetError) as info:
        _fetch(tmp_path, server, files={name: wrong})
    message = str(info.value)
    assert message.startswith(str(tmp_path / name))
    assert "sha256 mismatch" in message and wrong in message and HASHES[name] in message
    assert not (tmp_path / name).exists()
    assert not (tmp_path / f"{name}.part").exists()


def test_server_down(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    with pytest.raises(DatasetError) as info:
        fetch_mnist(tmp_path, base_url=url, files=HASHES, progress=False, timeout=5)
    assert str(info.value).startswith(f"{url}train-images-idx3-ubyte.gz: download failed")
    assert not any(tmp_path.iterdir()) or all(p.suffix == ".part" for p in tmp_path.iterdir())


def test_http_error(tmp_path: Path, server: Server) -> None:
    with pytest.raises(DatasetError) as info:
        _fetch(tmp_path, server, files={"absent.gz": "0" * 64})
    assert str(info.value).startswith(f"{server.url}absent.gz: download failed")
    assert "404" in str(info.value)


def test_present_files_are_not_downloaded_again(tmp_path: Path, server: Server) -> None:
    _fetch(tmp_path, server)
    assert len(server.behaviour.requests) == len(FILES)
    _fetch(tmp_path, server)
    assert len(server.behaviour.requests) == len(FILES)
    _assert_complete(tmp_path)


def test_corrupt_present_file_is_replaced(tmp_path: Path, server: Server) -> None:
    name = "train-labels-idx1-ubyte.gz"
    (tmp_path / name).write_bytes(b"stale")
    _fetch(tmp_path, server)
    _assert_complete(tmp_path)
    assert [n for n, _ in server.behaviour.requests].count(name) == 1


def test_finished_part_is_renamed_without_request(tmp_path: Path, server: Server) -> None:
    name = "train-labels-idx1-ubyte.gz"
    (tmp_path / f"{name}.part").write_bytes(FILES[name])
    _fetch(tmp_path, server, files={name: HASHES[name]})
    assert (tmp_path / name).read_bytes() == FILES[name]
    assert server.behaviour.requests == []


def test_rejects_unsafe_names_and_schemes(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="plain file name"):
        fetch_mnist(tmp_path, base_url="http://127.0.0.1:9/", files={"../x": "0" * 64})
    with pytest.raises(DatasetError, match="http"):
        fetch_mnist(tmp_path, base_url="file:///etc/", files={"passwd": "0" * 64})


def test_default_mnist_files_are_the_known_hashes() -> None:
    """sha256 values from TensorFlow Datasets' url_checksums/mnist.txt."""
    assert MNIST_BASE_URL.startswith("https://")
    assert MNIST_FILES == {
        "train-images-idx3-ubyte.gz": (
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
        ),
        "train-labels-idx1-ubyte.gz": (
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
        ),
        "t10k-images-idx3-ubyte.gz": (
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
        ),
        "t10k-labels-idx1-ubyte.gz": (
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
        ),
    }
