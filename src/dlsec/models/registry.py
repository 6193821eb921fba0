"""Architectures by name, plus user factories given as ``module:factory``.

A factory is a Python function (or an ``nn.Module`` subclass) returning an ``nn.Module``
that produces logits. dlsec calls it with the arguments it declares among those dlsec
can supply (:data:`FACTORY_ARGUMENTS`): ``input_shape`` (a tuple), ``num_classes``, and
for image inputs (``C x H x W``, or ``H x W`` with one channel) ``in_channels``,
``height`` and ``width``. A factory that requires any other argument is refused before
it is called, and the built network is checked with one forward pass on a batch of one
zero input: it must return ``1 x num_classes`` logits.

Register your own with :func:`register_model`. Importing a ``module:factory`` runs that
module's code, so a model card may name one only with the caller's consent (see
:func:`check_code_allowed`).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import itertools
import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from dlsec.errors import DlsecError
from dlsec.models.nets import ResNet18, SimpleNet, SmallCNN, TanhCNN

ModelFactory = Callable[..., nn.Module]

_MODELS: dict[str, ModelFactory] = {}

FACTORY_ARGUMENTS = ("input_shape", "num_classes", "in_channels", "height", "width")
"""The parameters dlsec supplies to a factory that declares them."""

MAX_INPUT_ELEMENTS = 2**26
"""The most values one input may hold (64 Mi: a 3 x 4096 x 4096 image is under it)."""


class ModelError(DlsecError):
    """A model could not be built, saved or loaded."""


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: make ``factory(input_shape=..., num_classes=...)`` buildable by ``name``."""

    def deco(factory: ModelFactory) -> ModelFactory:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = factory
        return factory

    return deco


def model_names() -> list[str]:
    return sorted(_MODELS)


@register_model("simplenet")
def _simplenet(*, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    return SimpleNet(math.prod(input_shape), 128, num_classes)


@register_model("smallcnn")
def _smallcnn(*, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    if len(input_shape) != 3:
        raise ModelError(f"smallcnn needs C x H x W inputs, got shape {tuple(input_shape)}")
    c, h, w = input_shape
    if h < 4 or w < 4:
        raise ModelError(f"smallcnn needs inputs of at least 4 x 4, got {h} x {w}")
    return SmallCNN(c, h, w, num_classes)


@register_model("tanhcnn")
def _tanhcnn(*, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Papernot et al.'s tempered-sigmoid (tanh) CNN for DP-SGD (see :class:`TanhCNN`)."""
    if len(input_shape) != 3:
        raise ModelError(f"tanhcnn needs C x H x W inputs, got shape {tuple(input_shape)}")
    c, h, w = input_shape
    if min(h, w) < TanhCNN.MIN_SIZE:
        raise ModelError(f"tanhcnn needs inputs of at least {TanhCNN.MIN_SIZE} x "
                         f"{TanhCNN.MIN_SIZE} (two strided convolutions and two poolings), "
                         f"got {h} x {w}; use smallcnn or simplenet for smaller images")
    return TanhCNN(c, h, w, num_classes)


RESNET_NARROW_WIDTH = 0.125
"""``resnet18-narrow``'s width factor: 8, 16, 32, 64 channels (fast enough for tests)."""


def _resnet(name: str, input_shape: Sequence[int], num_classes: int, width: float) -> nn.Module:
    if len(input_shape) != 3:
        raise ModelError(f"{name} needs C x H x W inputs, got shape {tuple(input_shape)}")
    return ResNet18(input_shape[0], num_classes, width=width)


@register_model("resnet18")
def _resnet18(*, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """ResNet-18, CIFAR variant (3x3 stem, no max-pool, BatchNorm; see :class:`ResNet18`)."""
    return _resnet("resnet18", input_shape, num_classes, 1.0)


@register_model("resnet18-narrow")
def _resnet18_narrow(*, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """:class:`ResNet18` at width 1/8 (8 to 64 channels): the same graph, for quick runs."""
    return _resnet("resnet18-narrow", input_shape, num_classes, RESNET_NARROW_WIDTH)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def parse_spec(architecture: str) -> tuple[str, str]:
    """``"pkg.mod:build"`` -> ``("pkg.mod", "build")``; nothing is imported."""
    module_name, _, attr = architecture.partition(":")
    dotted = (module_name, attr)
    if not all(part and all(p.isidentifier() for p in part.split(".")) for part in dotted):
        raise ModelError(
            f"model {architecture!r}: expected a built-in name ({', '.join(model_names())}) "
            "or module:factory with a dotted module path and a factory name"
        )
    return module_name, attr


def code_module(architecture: str) -> str | None:
    """The module building ``architecture`` would import, or None for a registered name."""
    if architecture in _MODELS or ":" not in architecture:
        return None
    return parse_spec(architecture)[0]


def check_code_allowed(
    architecture: str,
    *,
    trust_code: bool = False,
    factory: str | None = None,
    source: str = "model card",
) -> None:
    """Refuse a card's ``module:factory`` architecture unless the caller consented.

    Consent is ``trust_code=True`` (``--trust-code``) or ``factory`` equal to the
    architecture (the user named the same factory, ``--model pkg.mod:build``). Built-in
    and registered names need no consent. Nothing is imported here.
    """
    module = code_module(architecture)
    if module is None or trust_code or factory == architecture:
        return
    raise ModelError(
        f"{source}: the card's architecture {architecture!r} would import and run module "
        f"{module!r}; refused (allow it with --trust-code or --model {architecture}, "
        "or in Python load(directory, trust_code=True))"
    )


def resolve_factory(architecture: str) -> ModelFactory:
    """A registered name, or ``package.module:factory`` imported from the user's path.

    Importing runs the module's code: callers building from a model card check
    :func:`check_code_allowed` first.
    """
    if architecture in _MODELS:
        return _MODELS[architecture]
    if ":" not in architecture:
        raise ModelError(
            f"unknown model {architecture!r} (choose from {', '.join(model_names())}, "
            "or give module:factory)"
        )
    module_name, attr = parse_spec(architecture)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(
            f"model {architecture!r}: cannot import {module_name!r} ({_first_line(exc)})"
        ) from exc
    except (Exception, SystemExit) as exc:
        raise ModelError(
            f"model {architecture!r}: importing {module_name!r} raised {_first_line(exc)}"
        ) from exc
    obj: Any = module
    for name in attr.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            raise ModelError(f"model {architecture!r}: {module_name} has no callable {attr!r}")
    if not callable(obj):
        raise ModelError(
            f"model {architecture!r}: {attr} is a {type(obj).__name__}, not a callable factory"
        )
    return obj


def factory_arguments(input_shape: Sequence[int], num_classes: int) -> dict[str, Any]:
    """The values dlsec can supply to a factory, by parameter name."""
    shape = tuple(input_shape)
    args: dict[str, Any] = {"input_shape": shape, "num_classes": num_classes}
    if len(shape) in (2, 3):
        c, h, w = shape if len(shape) == 3 else (1, *shape)
        args.update(in_channels=c, height=h, width=w)
    return args


def _is_python_factory(obj: Any) -> bool:
    if isinstance(obj, functools.partial):
        return _is_python_factory(obj.func)
    if inspect.ismethod(obj):
        obj = obj.__func__
    return inspect.isfunction(obj) or (inspect.isclass(obj) and issubclass(obj, nn.Module))


def call_arguments(
    architecture: str, factory: ModelFactory, available: dict[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """``(args, kwargs)`` for ``factory``: what it declares among ``available``.

    Refuses (before any call) a class that is not an ``nn.Module``, a callable whose
    signature cannot be read, one requiring a parameter dlsec cannot supply, and built-in
    or other non-Python callables.
    """
    name = getattr(factory, "__qualname__", None) or type(factory).__name__
    if inspect.isclass(factory) and not issubclass(factory, nn.Module):
        raise ModelError(
            f"model {architecture!r}: {name} is a class but not an nn.Module; a factory is a "
            "function returning an nn.Module, or an nn.Module subclass"
        )
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError) as exc:
        raise ModelError(
            f"model {architecture!r}: cannot read the parameters of {name} ({exc}); "
            "a factory is a Python function returning an nn.Module"
        ) from exc
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    missing: list[str] = []
    positional = True  # positional-only known values go in order until one is skipped
    for p in params.values():
        known = p.name in available
        if p.kind is p.POSITIONAL_ONLY:
            if known and positional:
                args.append(available[p.name])
                continue
            positional = False
            if p.default is p.empty:
                missing.append(p.name)
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            if known:
                kwargs[p.name] = available[p.name]
            elif p.default is p.empty:
                missing.append(p.name)
        elif p.kind is p.VAR_KEYWORD:
            for key in ("input_shape", "num_classes"):
                if key not in params:
                    kwargs[key] = available[key]
    if missing:
        raise ModelError(
            f"model {architecture!r}: {name} requires {', '.join(repr(m) for m in missing)}, "
            f"which dlsec cannot supply (a factory may declare {', '.join(_supplied(available))})"
        )
    if not _is_python_factory(factory):
        raise ModelError(
            f"model {architecture!r}: {name} is a built-in or non-Python callable, not a model "
            "factory (a Python function returning an nn.Module, or an nn.Module subclass)"
        )
    return args, kwargs


def _supplied(available: dict[str, Any]) -> list[str]:
    return [k for k in FACTORY_ARGUMENTS if k in available]


def _integer(v: Any) -> int:
    if isinstance(v, bool):
        raise TypeError("a bool is not a size")
    return operator.index(v)


def _short(v: Any, limit: int = 60) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_input_shape(input_shape: Sequence[int], *, what: str = "input shape") -> tuple[int, ...]:
    """Positive integer sizes whose product is at most :data:`MAX_INPUT_ELEMENTS`."""
    try:
        shape = tuple(_integer(s) for s in input_shape)
    except TypeError:
        raise ModelError(
            f"{what} must be a non-empty list of integers, got {_short(input_shape)}"
        ) from None
    if not shape:
        raise ModelError(f"{what} must be a non-empty list of integers, got []")
    if min(shape) < 1:
        raise ModelError(f"{what} sizes must be at least 1, got {list(shape)}")
    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        raise ModelError(
            f"{what} {list(shape)} holds {math.prod(shape):,} values per input, "
            f"more than the {MAX_INPUT_ELEMENTS:,} dlsec accepts"
        )
    return shape


def check_output(
    architecture: str, net: nn.Module, input_shape: Sequence[int], num_classes: int
) -> None:
    """One forward pass on a zero input: the network must return ``1 x num_classes`` logits.

    Runs in eval mode without gradients; every submodule's training flag is restored.
    """
    first = next(itertools.chain(net.parameters(), net.buffers()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    x = torch.zeros(1, *input_shape, device=device, dtype=dtype)
    flags = [(m, m.training) for m in net.modules()]
    try:
        net.eval()
        with torch.no_grad():
            out = net(x)
    except Exception as exc:
        raise ModelError(
            f"model {architecture!r}: a forward pass on one input of shape "
            f"{tuple(input_shape)} failed ({_first_line(exc)})"
        ) from exc
    finally:
        for m, flag in flags:
            m.training = flag
    if not isinstance(out, torch.Tensor):
        raise ModelError(
            f"model {architecture!r}: the network returned a value of type "
            f"{type(out).__name__}, not a tensor of logits"
        )
    if tuple(out.shape) != (1, num_classes):
        raise ModelError(
            f"model {architecture!r}: on one input of shape {tuple(input_shape)} the network "
            f"outputs shape {tuple(out.shape)}, expected (1, {num_classes}) for "
            f"{num_classes} classes"
        )


def build_network(architecture: str, *, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Build an untrained network (without the normalization wrapper), checked by one forward.

    ``architecture`` is taken as the caller's own choice: a ``module:factory`` is imported
    without asking. Building from a model card goes through
    :func:`dlsec.models.build_model`, which asks for consent first.
    """
    shape = check_input_shape(input_shape)
    try:
        num_classes = _integer(num_classes)
    except TypeError:
        num_classes = 0
    if num_classes < 1:
        raise ModelError(f"model {architecture!r}: num_classes must be a positive integer")
    factory = resolve_factory(architecture)
    args, kwargs = call_arguments(architecture, factory, factory_arguments(shape, num_classes))
    try:
        net = factory(*args, **kwargs)
    except DlsecError:
        raise
    except Exception as exc:
        raise ModelError(f"model {architecture!r}: the factory raised {_first_line(exc)}") from exc
    if not isinstance(net, nn.Module):
        raise ModelError(
            f"model {architecture!r}: the factory returned a value of type "
            f"{type(net).__name__}, not an nn.Module"
        )
    check_output(architecture, net, shape, num_classes)
    return net
