"""The audit's sections: a registry filled by the modules of this package.

A capability adds itself to the audit by adding one module here that decorates a
function with :func:`register_section`; the runner discovers it, runs it in ``order``,
caches its result and renders it. Nothing else changes.

Example:
    >>> @register_section("my-check", title="My check", order=90)     # doctest: +SKIP
    ... def run(ctx: AuditContext, options: None) -> SectionResult:
    ...     return SectionResult(name="my-check", title="My check", metrics={"score": 1.0})
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dlsec.audit.result import SectionResult
from dlsec.plugins import Registry

if TYPE_CHECKING:
    from dlsec.audit.context import AuditContext

SectionFn = Callable[["AuditContext", Any], SectionResult]


@dataclass(frozen=True)
class SectionSpec:
    """A registered section.

    ``version`` is part of the cache key: bump it when the section's output changes.
    ``default`` sections run when the config names none. ``options`` is a dataclass
    whose fields are the keys of the section's TOML table.
    """

    name: str
    title: str
    order: int
    fn: SectionFn
    options: type | None = None
    default: bool = True
    version: int = 1


_REGISTRY: Registry[SectionSpec] = Registry(__name__, __path__, "audit section")
_SECTIONS = _REGISTRY.items


def register_section(
    name: str,
    *,
    title: str,
    order: int,
    options: type | None = None,
    default: bool = True,
    version: int = 1,
) -> Callable[[SectionFn], SectionFn]:
    def deco(fn: SectionFn) -> SectionFn:
        _REGISTRY.add(name, SectionSpec(name, title, order, fn, options, default, version),
                      same=lambda old, new: old.fn is new.fn)
        return fn

    return deco


def registry() -> dict[str, SectionSpec]:
    """All sections, importing every module of this package once."""
    return dict(sorted(_REGISTRY.entries().items(), key=lambda kv: (kv[1].order, kv[0])))


def selected(names: list[str] | None) -> list[SectionSpec]:
    """The sections to run, in order: the named ones, or every default one."""
    specs = registry()
    if names is None:
        return [s for s in specs.values() if s.default]
    chosen = set(names)
    return [s for s in specs.values() if s.name in chosen]
