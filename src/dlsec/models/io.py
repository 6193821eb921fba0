"""Save and load models as safetensors weights plus a JSON card. Nothing is ever unpickled.

Notes:
    A ``.pt``/``.pth`` weights file is read only with ``torch.load(weights_only=True)``,
    whose restricted unpickler refuses any object other than tensors and plain
    containers, so a file carrying code is rejected before that code can run.
    The sha256 recorded in the card is checked before the weights are parsed.
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
from dlsec.models.card import ModelCard
from dlsec.models.nets import Normalized
from dlsec.models.registry import ModelError, build_network

CARD_FILE = "card.json"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def inner_network(model: nn.Module) -> nn.Module:
    """The network whose state dict is saved (the model without its normalization wrapper)."""
    return model.net if isinstance(model, Normalized) else model


def build_model(card: ModelCard) -> nn.Module:
    """An untrained model for a card: the network, wrapped to normalize inputs if needed."""
    net = build_network(card.architecture, input_shape=card.input_shape, num_classes=card.num_classes)
    if card.normalization:
        return Normalized(net, card.normalization["mean"], card.normalization["std"])
    return net


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
    path = Path(directory) / CARD_FILE
    if not Path(directory).is_dir():
        raise ModelError(f"{directory}: model directory not found")
    if not path.is_file():
        raise ModelError(f"{path}: no model card (expected card.json beside the weights)")
    return ModelCard.from_json(path.read_text(encoding="utf-8"), source=str(path))


def read_state_dict(path: str | Path, *, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read weights from safetensors, or from ``.pt``/``.pth`` with ``weights_only=True`` only."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: weights file not found")
    blob = path.read_bytes()
    if expected_sha256 and sha256_bytes(blob) != expected_sha256:
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
    directory: str | Path, *, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelCard]:
    """Load ``(model, card)`` from a directory written by :func:`save`, in eval mode."""
    card = read_card(directory)
    state = read_state_dict(Path(directory) / card.weights_file, expected_sha256=card.weights_sha256 or None)
    model = build_model(card)
    try:
        inner_network(model).load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"{directory}: weights do not fit {card.architecture!r} ({first})") from exc
    return model.to(device).eval(), card
