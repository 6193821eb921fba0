"""Output paths: checked before any work (one line, exit 2, nothing written), written
atomically, and an ``OSError`` while writing is a one-line :class:`OutputError`."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dlsec.cli import main
from dlsec.files import OutputError, atomic_open, atomic_write_text, check_output

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
PROC = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")


@pytest.fixture
def place(tmp_path: Path) -> dict[str, Path]:
    """An existing file and an existing directory (with one file in it) under tmp_path."""
    f = tmp_path / "afile.txt"
    f.write_text("keep me")
    d = tmp_path / "adir"
    d.mkdir()
    (d / "inside.txt").write_text("inside")
    return {"file": f, "dir": d, "tmp": tmp_path}


def _tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


# -- check_output ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "kind", "words"),
    [
        ("{file}", "dir", ["--out: ", "afile.txt is a file; expected a directory"]),
        ("{dir}", "file", ["--out: ", "adir is a directory; expected a file"]),
        ("/dev/null", "file", ["/dev/null is a device"]),
        ("/dev/null", "dir", ["/dev/null is a device; expected a directory"]),
        ("{file}/sub.npz", "file", ["afile.txt is a file, not a directory"]),
        ("{file}/a/b", "dir", ["afile.txt is a file, not a directory"]),
        # /proc takes no new files, for root too
        pytest.param("/proc/dlsec-test-out.json", "file", ["cannot create files in /proc"], marks=PROC),
        pytest.param("/proc/dlsec-test-dir/x", "dir", ["cannot create files in /proc"], marks=PROC),
        ("", "file", ["empty path"]),
        ("{tmp}/" + "n" * 300, "file", ["cannot write"]),
    ],
)
def test_check_output_refuses(place, path: str, kind: str, words: list[str]) -> None:
    before = _tree(place["tmp"])
    with pytest.raises(OutputError) as info:
        check_output(path.format(**place), kind=kind, option="--out")  # type: ignore[arg-type]
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("--out: ")
    for w in words:
        assert w in msg
    assert _tree(place["tmp"]) == before


@pytest.mark.parametrize(
    ("path", "kind"),
    [("{file}", "file"), ("{dir}", "dir"), ("{tmp}/new.npz", "file"), ("{tmp}/a/b/c", "dir"),
     ("{dir}/new.json", "file")],
)
def test_check_output_accepts_without_creating_anything(place, path: str, kind: str) -> None:
    before = _tree(place["tmp"])
    p = path.format(**place)
    assert check_output(p, kind=kind, option="--out") == Path(p)  # type: ignore[arg-type]
    assert _tree(place["tmp"]) == before  # no directory made, no probe file left


@pytest.mark.skipif(IS_ROOT, reason="root ignores permission bits (the /proc cases cover root)")
def test_check_output_refuses_a_read_only_directory(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="cannot create files in"):
            check_output(ro / "m", kind="dir", option="--out")
    finally:
        ro.chmod(0o755)


# -- atomic writers ----------------------------------------------------------------------------
def test_atomic_write_under_a_file_is_one_line(place) -> None:
    with pytest.raises(OutputError, match="cannot write") as info:
        atomic_write_text(place["file"] / "x.json", "{}")
    assert "\n" not in str(info.value)
    assert place["file"].read_text() == "keep me"


def test_atomic_write_failed_rename_leaves_nothing(place, monkeypatch) -> None:
    def fail(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "replace", fail)
    before = _tree(place["tmp"])
    with pytest.raises(OutputError, match="Invalid cross-device link"):
        atomic_write_text(place["tmp"] / "out.json", "{}")
    assert _tree(place["tmp"]) == before  # the temporary file is gone too


@pytest.mark.parametrize(
    ("exc", "expected"),
    [(OSError(errno.ENOSPC, "No space left on device"), OutputError),
     (OSError(errno.EDQUOT, "Disk quota exceeded"), OutputError),
     (FileNotFoundError(errno.ENOENT, "the caller's own read"), FileNotFoundError)],
)
def test_atomic_open_maps_write_errors_only(place, exc: OSError, expected: type) -> None:
    before = _tree(place["tmp"])
    with pytest.raises(expected), atomic_open(place["tmp"] / "out.bin", "wb") as fh:
        fh.write(b"partial")
        raise exc
    assert _tree(place["tmp"]) == before


# -- every output option of every command ------------------------------------------------------
def _boom(*args, **kwargs):
    raise AssertionError("work began before the output path was checked")


MODEL = ["--model-dir", "{model}"]
CASES = [
    # (arguments, the function that starts the work, words in the error)
    (["train", "--out", "{file}"], "dlsec.data.load_dataset", ["--out", "is a file; expected a directory"]),
    (["train", "--out", "/dev/null"], "dlsec.data.load_dataset", ["--out", "/dev/null is a device"]),
    (["train", "--out", "{file}/m"], "dlsec.data.load_dataset", ["--out", "afile.txt is a file, not a directory"]),
    pytest.param(["train", "--out", "/proc/dlsec-model"], "dlsec.data.load_dataset", ["--out", "cannot create files in /proc"], marks=PROC),
    (["train", "--adversarial", "pgd", "--eps", "0.1", "--out", "{file}"], "dlsec.data.load_dataset", ["--out", "is a file"]),
    (["audit", "--out", "{file}"], "dlsec.audit.runner.run_audit", ["--out", "is a file; expected a directory"]),
    (["audit", "--out", "/dev/null"], "dlsec.audit.runner.run_audit", ["--out", "/dev/null is a device"]),
    (["attack", "pgd", *MODEL, "--eps", "0.1", "--out", "{dir}"], "dlsec.models.load", ["--out", "adir is a directory; expected a file"]),
    (["attack", "square", *MODEL, "--eps", "0.1", "--out", "/dev/null"], "dlsec.models.load", ["--out", "/dev/null is a device"]),
    (["attack", "hsja", *MODEL, "--out", "{file}/adv.npz"], "dlsec.models.load", ["--out", "not a directory"]),
    (["evaluate", *MODEL, "--eps", "0.1", "--out", "{dir}"], "dlsec.models.load", ["--out", "is a directory"]),
    (["evaluate", *MODEL, "--eps", "0.1", "--state", "{dir}"], "dlsec.models.load", ["--state", "is a directory"]),
    (["poison", "random-flip", "--out", "{dir}"], "dlsec.data.load_dataset", ["--out", "is a directory"]),
    (["poison", "backdoor", "--out", "/dev/null"], "dlsec.data.load_dataset", ["--out", "/dev/null is a device"]),
    (["poison", "feature-collision", "--out", "{file}/p.npz"], "dlsec.data.load_dataset", ["--out", "not a directory"]),
    pytest.param(["poison", "optimized-flip", "--out", "/proc/dlsec.npz"], "dlsec.data.load_dataset", ["--out", "cannot create files in /proc"], marks=PROC),
    (["sanitize", "--dataset", "digits", "--out", "{dir}"], "dlsec.data.load_dataset", ["--out", "is a directory"]),
    (["sanitize", "--dataset", "digits", "--out", "{tmp}/k.npz", "--scores-out", "{dir}"], "dlsec.data.load_dataset", ["--scores-out", "is a directory"]),
    (["sanitize", "--dataset", "digits", "--out", "{tmp}/k.npz", "--scores-out", "{tmp}/k.npz"], "dlsec.data.load_dataset", ["--scores-out", "must differ from --out"]),
    (["privacy", "invert", *MODEL, "--out", "{file}"], "dlsec.models.load", ["--out", "is a file; expected a directory"]),
    (["privacy", "membership", *MODEL, "--attack", "loss", "--out", "{dir}"], "dlsec.models.load", ["--out", "is a directory"]),
    (["extract", *MODEL, "--save-to", "{file}"], "dlsec.models.load", ["--save-to", "is a file; expected a directory"]),
    (["extract", *MODEL, "--out", "{dir}"], "dlsec.models.load", ["--out", "is a directory"]),
    (["data", "fetch", "mnist", "--to", "{file}"], "dlsec.data.fetch.fetch_mnist", ["--to", "is a file; expected a directory"]),
]


@pytest.mark.parametrize(("args", "work", "words"), CASES, ids=[f"{i}" for i in range(len(CASES))])
def test_bad_output_is_one_line_before_any_work(
    args: list[str], work: str, words: list[str], place, model_dir: Path, monkeypatch, capsys,
    one_line_error,
) -> None:
    monkeypatch.setattr(work, _boom)
    monkeypatch.chdir(place["tmp"])
    before = _tree(place["tmp"])
    argv = [a.format(model=model_dir, **place) for a in args]
    assert main(argv) == 2
    one_line_error(capsys.readouterr().err, *words)
    assert _tree(place["tmp"]) == before  # nothing written, nothing half-written


# -- evaluate --state never overwrites a file that is not its state ----------------------------
def _foreign_text(path: Path) -> None:
    path.write_text("my notes, not a state")


def _foreign_safetensors(path: Path) -> None:
    save_file({"w": torch.zeros(3)}, str(path))  # safetensors, but no state metadata


@pytest.mark.parametrize("make", [_foreign_text, _foreign_safetensors])
def test_evaluate_refuses_a_foreign_state_file(
    make, model_dir: Path, tmp_path: Path, monkeypatch, capsys, one_line_error
) -> None:
    state = tmp_path / "state.bin"
    make(state)
    before = state.read_bytes()
    monkeypatch.setattr("dlsec.models.load", _boom)
    args = ["evaluate", "--model-dir", str(model_dir), "--eps", "0.1", "--samples", "10",
            "--state", str(state), "-q"]
    assert main(args) == 2
    one_line_error(capsys.readouterr().err, "state.bin is not a dlsec evaluation state")
    assert state.read_bytes() == before


def test_evaluate_state_resumes_and_replaces_its_own(model_dir: Path, tmp_path: Path, capsys) -> None:
    state = tmp_path / "state.safetensors"
    base = ["evaluate", "--model-dir", str(model_dir), "--samples", "20", "--attacks", "apgd-ce",
            "--state", str(state), "-q"]
    assert main([*base, "--eps", "0.1"]) == 0
    first = capsys.readouterr().out
    assert state.is_file()
    assert main([*base, "--eps", "0.1"]) == 0  # resumed from the state: the same figures
    assert capsys.readouterr().out == first
    assert main([*base, "--eps", "0.05"]) == 0  # another evaluation's state is replaced
    assert "eps 0.05: robust accuracy" in capsys.readouterr().out
