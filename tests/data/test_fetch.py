"""fetch_mnist against a local HTTP server: hashes, resume, bad hashes, outages, skips.

No test touches the internet: the server listens on 127.0.0.1 and serves small fake
``.gz`` files whose sha256 the tests pass in ``files=``.
"""

from __future__ import annotations

import gzip
import hashlib
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from dlsec.data.core import DatasetError
from dlsec.data.fetch import MNIST_BASE_URL, MNIST_FILES, MNIST_SIZES, check_base_url, fetch_mnist


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
    extra: int = 0  # zero bytes streamed after the file's own
    announce_extra: bool = True  # Content-Length counts them (else none is sent)
    watch: Path | None = None  # a file whose size is sampled after each chunk sent
    largest_seen: int = -1  # the largest size of ``watch`` seen (-1: never existed)
    sent: int = 0  # body bytes the server managed to send


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
        if self.behaviour.extra:
            if self.behaviour.announce_extra:
                self.send_header("Content-Length", str(len(body) + self.behaviour.extra))
            self.end_headers()
            self._stream(body)
            return
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/gzip")
        self.end_headers()
        if self.behaviour.cut_after is not None:
            self.wfile.write(body[: self.behaviour.cut_after])
            self.close_connection = True
            return
        self.wfile.write(body)

    def _stream(self, body: bytes) -> None:
        """Send ``body`` then ``extra`` zero bytes in 64 KiB chunks until the client hangs up."""
        behaviour = self.behaviour
        payload = memoryview(body + bytes(behaviour.extra))
        self.close_connection = True
        for i in range(0, len(payload), 1 << 16):
            if behaviour.watch is not None and behaviour.watch.exists():
                size = behaviour.watch.stat().st_size
                behaviour.largest_seen = max(behaviour.largest_seen, size)
            try:
                self.wfile.write(payload[i : i + (1 << 16)])
            except OSError:  # the client stopped reading and closed the connection
                return
            behaviour.sent += len(payload[i : i + (1 << 16)])


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


SIZES = {name: len(data) for name, data in FILES.items()}
LABELS = "train-labels-idx1-ubyte.gz"  # the small one: 1,000 random bytes, gzip'd


def _assert_refused(info: pytest.ExceptionInfo[DatasetError], server: Server, *words: str) -> None:
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{server.url}{LABELS}: download refused"), message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


@pytest.mark.parametrize("announce", [False, True], ids=["no-length", "honest-length"])
def test_body_longer_than_the_expected_size_is_never_written_past_it(
    tmp_path: Path, server: Server, announce: bool
) -> None:
    """A hostile mirror streaming 64 MB after a 1 KB file: the part file stays within the
    size, the server could not push the 64 MB, and nothing is left behind."""
    server.behaviour.extra = 64 << 20
    server.behaviour.announce_extra = announce
    server.behaviour.watch = tmp_path / f"{LABELS}.part"
    with pytest.raises(DatasetError) as info:
        _fetch(tmp_path, server, files={LABELS: HASHES[LABELS]}, sizes=SIZES)
    size = f"{SIZES[LABELS]:,}"
    if announce:  # refused from the Content-Length, before reading the body
        _assert_refused(info, server, f"announces {SIZES[LABELS] + (64 << 20):,} bytes", size)
        assert server.behaviour.largest_seen == -1  # no part file was ever created
    else:
        _assert_refused(info, server, f"sent more than the {size} bytes expected", "deleted")
        assert server.behaviour.largest_seen <= SIZES[LABELS]
    assert server.behaviour.sent < 32 << 20
    assert list(tmp_path.iterdir()) == []


def test_resume_whose_total_exceeds_the_size_is_refused(tmp_path: Path, server: Server) -> None:
    half = SIZES[LABELS] // 2
    part = tmp_path / f"{LABELS}.part"
    part.write_bytes(FILES[LABELS][:half])
    sizes = {LABELS: SIZES[LABELS] - 1}  # the server's file is one byte longer than expected
    with pytest.raises(DatasetError) as info:
        _fetch(tmp_path, server, files={LABELS: HASHES[LABELS]}, sizes=sizes)
    _assert_refused(info, server, f"announces {SIZES[LABELS]:,} bytes")
    assert server.behaviour.requests == [(LABELS, f"bytes={half}-")]
    assert part.read_bytes() == FILES[LABELS][:half]  # kept as it was
    assert not (tmp_path / LABELS).exists()


def test_part_file_as_long_as_the_size_is_dropped(tmp_path: Path, server: Server) -> None:
    (tmp_path / f"{LABELS}.part").write_bytes(b"\xff" * SIZES[LABELS])  # complete, yet wrong
    _fetch(tmp_path, server, files={LABELS: HASHES[LABELS]}, sizes=SIZES)
    assert (tmp_path / LABELS).read_bytes() == FILES[LABELS]
    assert server.behaviour.requests == [(LABELS, None)]  # started over, no Range


def test_exact_size_downloads(tmp_path: Path, server: Server) -> None:
    _fetch(tmp_path, server, sizes=SIZES)
    _assert_complete(tmp_path)


def test_mnist_sizes_are_the_known_ones() -> None:
    assert MNIST_SIZES == {
        "train-images-idx3-ubyte.gz": 9_912_422,
        "train-labels-idx1-ubyte.gz": 28_881,
        "t10k-images-idx3-ubyte.gz": 1_648_877,
        "t10k-labels-idx1-ubyte.gz": 4_542,
    }
    assert list(MNIST_SIZES) == list(MNIST_FILES)


BAD_URLS = {
    "garbage": ("garbage", "only http(s)"),
    "file": ("file:///etc/", "only http(s)"),
    "ftp": ("ftp://example.com/mnist/", "only http(s)"),
    "no-host": ("http:///mnist/", "no host"),
    "empty": ("", "not a valid mirror URL"),
    "bad-ipv6": ("http://[::1/", "Invalid IPv6"),
    "bad-port": ("http://example.com:99999/", "Port out of range"),
    "port-0": ("http://example.com:0/", "port 0"),
    "space": ("https://exa mple.com/", "spaces"),
    "newline": ("https://example.com/\nx", "control characters"),
    "bad-idna": ("http://a..b/", "host name"),
    "query": ("https://example.com/?q=1", "no query"),
}


@pytest.mark.parametrize("url,word", list(BAD_URLS.values()), ids=list(BAD_URLS))
def test_bad_base_url_is_refused_before_any_request(tmp_path: Path, url: str, word: str) -> None:
    to = tmp_path / "mnist"
    with pytest.raises(DatasetError) as info:
        fetch_mnist(to, base_url=url, files=HASHES, progress=False, timeout=1)
    message = str(info.value)
    assert word in message and "\n" not in message, message
    assert not to.exists()


@pytest.mark.parametrize(
    "url,expected",
    [("https://host/mnist", "https://host/mnist/"), ("HTTP://h:8080/a/", "HTTP://h:8080/a/")],
)
def test_good_base_url_gets_a_trailing_slash(url: str, expected: str) -> None:
    assert check_base_url(url) == expected


def test_target_that_is_a_file_is_one_line(tmp_path: Path, server: Server) -> None:
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(DatasetError, match="exists and is not a folder"):
        _fetch(tmp_path / "file", server)
    with pytest.raises(DatasetError, match="cannot create the folder"):
        _fetch(tmp_path / "file" / "sub", server)


def test_destination_that_is_a_directory_is_one_line(tmp_path: Path, server: Server) -> None:
    (tmp_path / LABELS).mkdir()
    with pytest.raises(DatasetError, match="is a directory"):
        _fetch(tmp_path, server, files={LABELS: HASHES[LABELS]})
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


@pytest.mark.parametrize(
    "url,word",
    [("garbage", "only http(s)"), ("", "not a valid mirror URL"), ("file:///tmp/", "only http(s)")],
)
def test_cli_bad_base_url_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, word: str
) -> None:
    from dlsec.cli import main

    to = tmp_path / "mnist"
    code = main(["data", "fetch", "mnist", "--base-url", url, "--to", str(to), "-q"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert word in lines[0]
    assert not to.exists()


def test_cli_garbage_base_url_in_a_real_process(tmp_path: Path) -> None:
    to = tmp_path / "mnist"
    proc = subprocess.run(
        [sys.executable, "-m", "dlsec.cli", "data", "fetch", "mnist", "--base-url", "garbage",
         "--to", str(to)],
        capture_output=True, text=True, timeout=120,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert lines == ["error: garbage: only http(s) URLs can be fetched (got no scheme); "
                     "give one like https://host/path/"]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not to.exists()
