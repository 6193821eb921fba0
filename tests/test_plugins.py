"""The registries the audit's sections, the matrix's defenses and the commands share."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dlsec.plugins import Registry, import_submodules


def _package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> Path:
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from dlsec.plugins import Registry\n"
        "REG = Registry(__name__, __path__, 'thing')\n"
        "def add(n, v):\n    REG.add(n, v, same=lambda a, b: a == b)\n")
    (pkg / "beta.py").write_text(f"from {name} import add\nadd('b', 2)\nIMPORTED = True\n")
    (pkg / "alpha.py").write_text(f"from {name} import add\nadd('a', 1)\n")
    (pkg / "_private.py").write_text(f"from {name} import add\nadd('p', 0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return pkg


def test_entries_import_the_public_modules_once(tmp_path, monkeypatch) -> None:
    _package(tmp_path, monkeypatch, "plugpkg_one")
    import plugpkg_one  # type: ignore[import-not-found]

    assert plugpkg_one.REG.items == {}  # nothing imported before it is asked for
    assert plugpkg_one.REG.entries() == {"a": 1, "b": 2}  # _private is left out
    sys.modules["plugpkg_one.beta"].IMPORTED = False
    assert plugpkg_one.REG.entries() == {"a": 1, "b": 2}
    assert sys.modules["plugpkg_one.beta"].IMPORTED is False  # not imported a second time


def test_a_taken_name_is_refused_and_the_same_entry_is_not(tmp_path, monkeypatch) -> None:
    reg: Registry[int] = Registry("nowhere", [], "thing")
    reg.add("x", 1, same=lambda a, b: a == b)
    reg.add("x", 1, same=lambda a, b: a == b)  # a module imported twice
    with pytest.raises(ValueError, match="thing 'x' is already registered"):
        reg.add("x", 2, same=lambda a, b: a == b)
    assert reg.entries() == {"x": 1}


def test_import_submodules_in_name_order_with_skips(tmp_path, monkeypatch) -> None:
    pkg = _package(tmp_path, monkeypatch, "plugpkg_two")
    mods = import_submodules("plugpkg_two", [str(pkg)], skip=("beta",))
    assert [m.__name__ for m in mods] == ["plugpkg_two.alpha"]
