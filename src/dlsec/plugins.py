"""Registries that the modules of one package fill by being imported.

The audit's sections, the matrix's defenses and the CLI's commands are one module per
entry in a package of their own. The package keeps a :class:`Registry`; each module adds
its entry with the package's decorator when it is imported; :meth:`Registry.entries`
imports every public module of the package once (:func:`import_submodules`), so adding a
capability is adding a file. This module is the one place that imports modules by a name
computed at run time for them, and only modules inside the package it is given.

Example:
    >>> reg: Registry[int] = Registry("dlsec.nothing", [], "number")
    >>> reg.add("one", 1, same=lambda old, new: old == new)
    >>> reg.entries()
    {'one': 1}
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Collection, Iterable
from types import ModuleType
from typing import Generic, TypeVar

T = TypeVar("T")


def import_submodules(package: str, path: Iterable[str], *,
                      skip: Collection[str] = ()) -> list[ModuleType]:
    """Import the modules of ``package`` (whose ``__path__`` is ``path``) in name order,
    leaving out private ones (``_name``) and those in ``skip``."""
    found = sorted(pkgutil.iter_modules(list(path)), key=lambda info: info.name)
    return [importlib.import_module(f"{package}.{info.name}") for info in found
            if not info.name.startswith("_") and info.name not in skip]


class Registry(Generic[T]):
    """Entries by name, added by the modules of ``package`` (``path``: its ``__path__``);
    ``kind`` names an entry in errors ("audit section", "defense")."""

    def __init__(self, package: str, path: Iterable[str], kind: str) -> None:
        self.package, self.kind = package, kind
        self._path = list(path)
        self.items: dict[str, T] = {}
        self._discovered = False

    def add(self, name: str, entry: T, *, same: Callable[[T, T], bool]) -> None:
        """Register ``entry`` as ``name``; registering another entry under a taken name is
        a programming error (``ValueError``); the same one again (``same(old, entry)``,
        e.g. a module imported twice) replaces it."""
        old = self.items.get(name)
        if old is not None and not same(old, entry):
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self.items[name] = entry

    def entries(self) -> dict[str, T]:
        """Every entry, importing the package's modules the first time."""
        if not self._discovered:
            import_submodules(self.package, self._path)
            self._discovered = True
        return dict(self.items)


__all__ = ["Registry", "import_submodules"]
