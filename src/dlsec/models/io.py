"""Save and load models as safetensors weights plus a JSON card. Nothing is ever unpickled.

Notes:
    A ``.pt``/``.pth`` weights file is read only with ``torch.load(weights_only=True)``,
    whose restricted unpickler refuses any object other than tensors and plain
    containers, so a file carrying code is rejected before that code can run.
    The sha256 recorded in the card is checked before the weights are parsed; a card
    without one is refused. A card naming a ``module:factory`` architecture is refused
    unless the caller consents (``trust_code=True`` or the same ``factory``), because
    building it would import that module and so run its code.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from dlsec.files import atomic_write_bytes, atomic_write_text
from dlsec.models.card import MAX_CARD_BYTES, ModelCard
from dlsec.models.nets import Normalized
from dlsec.models.registry import ModelError, build_network, check_code_allowed, code_module

CARD_FILE = "card.json"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def inner_network(model: nn.Module) -> nn.Module:
    """The network whose state dict is saved (the model without its normalization wrapper)."""
    return model.net if isinstance(model, Normalized) else model


def build_model(
    card: ModelCard, *, trust_code: bool = False, factory: str | None = None
) -> nn.Module:
    """An untrained model for a card: the network, wrapped to normalize inputs if needed.

    A built-in (registered) architecture is built freely. A ``module:factory`` one imports
    and runs that module, so it is built only with consent: ``trust_code=True``, or
    ``factory`` equal to the card's architecture (the user named the same factory).
    Consent stays with this card object (not with its file): building it again, e.g. a
    fresh copy for shadow models, needs no second consent.
    """
    arch = card.architecture
    if card._allowed_code != arch:
        check_code_allowed(arch, trust_code=trust_code, factory=factory,
                           source=card._source or "model card")
        if code_module(arch) is not None:
            card._allowed_code = arch
    net = build_network(arch, input_shape=card.input_shape, num_classes=card.num_classes)
    net = _replace_fixed_layers(net, card)
    if card.normalization:
        return Normalized(net, card.normalization["mean"], card.normalization["std"])
    return net


def _replace_fixed_layers(net: nn.Module, card: ModelCard) -> nn.Module:
    """``net`` with the layers DP training replaced replaced again, so its weights fit.

    A DP-SGD record (``card.training["dp"]``) whose ``fixed_layers`` is not empty says the
    network went through Opacus's ``ModuleValidator.fix`` before training (``--dp-fix``:
    BatchNorm -> GroupNorm); the same function runs here (Opacus is imported only then).
    Each entry, ``"name: Old -> New"``, is checked against what the fix did to this
    architecture: a record that does not match is a one-line :class:`ModelError`.
    """
    dp = card.training.get("dp") if isinstance(card.training, dict) else None
    fixed = dp.get("fixed_layers") if isinstance(dp, dict) else None
    if not fixed:
        return net
    where = card._source or "model card"
    try:
        from opacus.validators import ModuleValidator
    except ImportError:
        raise ModelError(f"{where}: DP training replaced layers ({', '.join(fixed)}) with "
                         "Opacus's ModuleValidator.fix; loading the model needs opacus "
                         "(pip install opacus)") from None
    before = {name or "<model>": type(m).__name__ for name, m in net.named_modules()}
    fixed_net = ModuleValidator.fix(net)
    after = {name or "<model>": type(m).__name__ for name, m in fixed_net.named_modules()}
    did = [f"{n}: {t} -> {after[n]}" if n in after else f"{n}: {t}"
           for n, t in before.items() if after.get(n) != t]
    for entry in fixed:
        if entry not in did:
            raise ModelError(
                f"{where}: the DP record's fixed layer {entry!r} is not what Opacus's "
                f"ModuleValidator.fix does to {card.architecture!r} "
                f"({', '.join(did) or 'it replaces nothing'})")
    return fixed_net


def save(model: nn.Module, card: ModelCard, directory: str | Path) -> ModelCard:
    """Write ``model.safetensors`` and ``card.json`` atomically; returns the card with its sha256."""
    directory = Path(directory)
    state = {
        k: v.detach().to("cpu").contiguous() for k, v in inner_network(model).state_dict().items()
    }
    blob = st_save(state)
    card.weights_file = "model.safetensors"
    card.weights_sha256 = sha256_bytes(blob)
    atomic_write_bytes(directory / card.weights_file, blob)
    atomic_write_text(directory / CARD_FILE, card.to_json())
    return card


def read_card(directory: str | Path) -> ModelCard:
    """The checked card of a model directory. Nothing is imported or built."""
    path = Path(directory) / CARD_FILE
    if not Path(directory).is_dir():
        raise ModelError(f"{directory}: model directory not found")
    if not path.is_file():
        raise ModelError(f"{path}: no model card (expected card.json beside the weights)")
    try:
        size = path.stat().st_size
        if size > MAX_CARD_BYTES:
            raise ModelError(f"{path}: {size:,} bytes, more than a model card may hold")
        blob = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model card ({exc.strerror or exc})") from exc
    return ModelCard.from_json(blob, source=str(path))


def read_state_dict(
    path: str | Path, *, expected_sha256: str | None = None
) -> dict[str, torch.Tensor]:
    """Read weights from safetensors, or from ``.pt``/``.pth`` with ``weights_only=True`` only."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: weights file not found")
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the weights ({exc.strerror or exc})") from exc
    if expected_sha256 and sha256_bytes(blob) != expected_sha256.lower():
        raise ModelError(f"{path}: sha256 does not match the model card (file changed or corrupt)")
    if path.suffix == ".safetensors":
        try:
            return st_load(blob)
        except (SafetensorError, ValueError) as exc:
            raise ModelError(f"{path}: not a valid safetensors file ({exc})") from exc
    if path.suffix in (".pt", ".pth"):
        import io

        try:
            obj = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe pickle"
            raise ModelError(
                f"{path}: refused to load: the file holds objects other than tensors "
                f"and loading it could run code ({first})"
            ) from exc
        except (RuntimeError, EOFError, ValueError) as exc:
            raise ModelError(f"{path}: not a readable PyTorch weights file ({exc})") from exc
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise ModelError(f"{path}: expected a state dict of tensors")
        return obj
    raise ModelError(f"{path}: unsupported weights format (use .safetensors, .pt or .pth)")


def load(
    directory: str | Path,
    *,
    device: str | torch.device = "cpu",
    trust_code: bool = False,
    factory: str | None = None,
) -> tuple[nn.Module, ModelCard]:
    """Load ``(model, card)`` from a directory written by :func:`save`, in eval mode.

    The card is checked first, then consent for a ``module:factory`` architecture (see
    :func:`build_model`; nothing is imported without it), then the weights' sha256,
    and only then is the network built and the weights loaded.
    """
    card = read_card(directory)
    check_code_allowed(card.architecture, trust_code=trust_code, factory=factory,
                       source=card._source or str(directory))
    if not card.weights_sha256:
        raise ModelError(f"{card._source}: the card has no weights_sha256")
    state = read_state_dict(
        Path(directory) / card.weights_file, expected_sha256=card.weights_sha256
    )
    model = build_model(card, trust_code=trust_code, factory=factory)
    try:
        inner_network(model).load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(
            f"{directory}: weights do not fit {card.architecture!r} ({first})"
        ) from exc
    return model.to(device).eval(), card
