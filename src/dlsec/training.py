"""The one fit/evaluate loop every trainer in dlsec builds on.

Every model dlsec trains goes through :func:`fit`: the audited model, adversarial training
(PGD-AT, FGSM-RS and TRADES swap ``batch_loss``; the robustness monitor is an
``on_epoch_end`` hook), shadow models, extraction and transfer surrogates, retrained
poisoning victims and the sanitizers' cross-validated models. A new trainer changes what
one batch's loss is (``batch_loss``), how the optimizer is made (``make_optimizer``) or
what happens after an epoch (``on_epoch_end``), never the loop.

Example:
    >>> from dlsec.data import load_dataset
    >>> from dlsec.training import TrainConfig, train_model
    >>> ds = load_dataset("digits")
    >>> model, card, result = train_model(ds, "simplenet", TrainConfig(epochs=5), progress=False)
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlsec.errors import DlsecError

BatchLoss = Callable[[nn.Module, Tensor, Tensor], Tensor]
# the index batches of one epoch (called with the epoch number, 1-based); each batch is a
# tensor or sequence of training-set indices
BatchSampler = Callable[[int], Iterable[Tensor | Sequence[int]]]
OptimizerFactory = Callable[[nn.Module, "TrainConfig"], torch.optim.Optimizer]


class TrainingError(DlsecError):
    """Bad training settings."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The device a command computes on, checked against this machine.

    ``auto`` picks CUDA when available, else the CPU. ``cpu``, ``cuda``, ``cuda:N`` and
    ``mps`` are accepted when this machine has them; anything else (``meta``, a GPU that is
    not there, a typo) is a :class:`TrainingError` in one line.
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    choices = "use auto, cpu, cuda, cuda:N or mps"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise TrainingError(f"unknown device {device!r} ({choices})") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError(f"device {device!r} requested but no CUDA GPU is available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise TrainingError(
                f"device {device!r} requested but this machine has "
                f"{torch.cuda.device_count()} CUDA GPU(s) (cuda:0..)"
            )
        return dev
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise TrainingError(f"device {device!r} requested but Apple MPS is not available")
        return dev
    raise TrainingError(f"unsupported device {device!r} ({choices})")


# Seeds reach torch (0..2**64-1), numpy and scikit-learn (random_state 0..2**32-1, e.g. the
# sanitizers' clustering): every command and config accepts the range all of them take.
SEED_MAX = 2**32 - 1

# -- epochs chosen by the training set's size (the audit's rule when none is set) ------------
AUTO_TRAINING_SAMPLES = 45_000


def scaled_epochs(n_train: int) -> int:
    """As many epochs as pass about 45,000 training samples, between 1 and 30: 30 on the
    digits data (1,437 training images), 1 on Fashion-MNIST (60,000), where 30 epochs of
    a CNN alone would take far longer than the audit's attacks."""
    return max(1, min(30, round(AUTO_TRAINING_SAMPLES / max(1, n_train))))


# -- CPU threads: one rule for every command ------------------------------------------------
SMALL_MODEL_PARAMETERS = 100_000
_DEFAULT_THREADS = torch.get_num_threads()  # torch's choice at start-up (OMP_NUM_THREADS, cores)


def thread_limit() -> int:
    """The most CPU threads a command may ask for: 4 per CPU (far more only oversubscribes,
    and a huge count crashes the OpenMP runtime)."""
    return 4 * (os.cpu_count() or 1)


def check_threads(threads: int, *, option: str = "--threads") -> int:
    """``threads`` if it is 0 (automatic) or 1..:func:`thread_limit`, else a one-line error."""
    limit = thread_limit()
    if isinstance(threads, bool) or not isinstance(threads, int) or not 0 <= threads <= limit:
        raise TrainingError(
            f"{option}: must be 0 (automatic) or 1..{limit} (4 per CPU, "
            f"{os.cpu_count() or 1} CPUs), got {threads!r}"
        )
    return threads


def configure_threads(threads: int, *, model: nn.Module | None, device: torch.device) -> int:
    """Set torch's CPU thread count for a command; return the number set.

    ``threads > 0``: that many (at most :func:`thread_limit`, else :class:`TrainingError`).
    ``0`` (automatic): one thread for a small model (fewer than
    ``SMALL_MODEL_PARAMETERS`` parameters) on CPU, else torch's default at start-up. A
    model of a few thousand parameters computes a step in microseconds; a second thread
    only adds synchronisation (measured: adversarial training of the digits SimpleNet took
    82 s with 2 threads against 5.9 s with 1 on a loaded 2-core machine). Pass the model
    the command computes with (a loaded model directory's, never one built from an
    untrusted card just to count); ``model=None`` with ``0`` keeps torch's default.
    """
    check_threads(threads)
    if threads == 0:
        small = (
            model is not None
            and torch.device(device).type == "cpu"
            and sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMETERS
        )
        threads = 1 if small else _DEFAULT_THREADS
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


@dataclass
class TrainConfig:
    """Settings of one training run; saved into the model card."""

    epochs: int = 30
    batch_size: int = 64
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["none", "cosine", "step"] = "cosine"
    step_every: int = 10
    step_gamma: float = 0.1
    val_fraction: float = 0.1
    patience: int | None = None
    restore_best: bool = True
    seed: int = 0
    device: str = "auto"
    # an accuracy pass over the training set after every epoch (the history's
    # train_accuracy); models no one reads it from (shadows, surrogates, retrained victims)
    # skip it: it costs about a third of an epoch
    measure_train_accuracy: bool = True
    # mixed precision for the forward pass and loss (autocast): "bf16" on any device that
    # supports it, "fp16" on CUDA only (with a gradient scaler); weights stay float32
    amp: Literal["off", "bf16", "fp16"] = "off"

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "lr": self.lr > 0 and math.isfinite(self.lr),
            "optimizer": self.optimizer in ("adam", "sgd"),
            "schedule": self.schedule in ("none", "cosine", "step"),
            "val_fraction": 0.0 <= self.val_fraction < 1.0,
            "patience": self.patience is None or self.patience >= 1,
            "weight_decay": self.weight_decay >= 0,
            "amp": self.amp in AMP_MODES,
        }
        for key, ok in checks.items():
            if not ok:
                raise TrainingError(f"bad training setting {key}={getattr(self, key)!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


AMP_MODES = ("off", "bf16", "fp16")
"""``TrainConfig.amp``: off, bfloat16 autocast, or float16 autocast with a gradient scaler."""


def check_amp(amp: str, device: torch.device) -> None:
    """Refuse, in one line, an ``amp`` mode that is not one of :data:`AMP_MODES` or that
    ``device`` lacks: ``fp16`` needs CUDA (float16 matmuls on a CPU are slow and its
    gradients need the scaler CUDA provides); ``bf16`` needs a device with bfloat16
    autocast (CUDA from Ampere on, CPUs through oneDNN)."""
    if amp not in AMP_MODES:
        raise TrainingError(f"bad amp setting amp={amp!r} (choose from {', '.join(AMP_MODES)})")
    if amp == "fp16" and device.type != "cuda":
        raise TrainingError(f"amp=fp16 needs a CUDA device (the model is on {device}); "
                            "use amp=bf16")
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainingError(f"amp=bf16: {device} has no bfloat16 support; use amp=fp16")


def autocast(amp: str, device: torch.device) -> Any:
    """The autocast context for ``amp`` on ``device`` (a no-op context for ``"off"``); a
    mode the device lacks is refused in one line (:func:`check_amp`)."""
    import contextlib

    check_amp(amp, device)
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class AutocastModel(nn.Module):
    """``model`` run under :func:`autocast` (``amp``: bf16 or fp16), returning float32 logits.

    For the forward and backward passes that only *search* (e.g. an attack's steps): the
    matmuls and convolutions run in half precision, and the logits come back as float32 so
    that the loss, its gradient and any rule on loss values (APGD's step size, the DLR loss)
    work in full precision. It holds ``model`` as its only submodule (same parameters, same
    device, ``eval()`` reaches it); ``amp="off"`` is a plain float32 pass-through.

    Notes:
        Half-precision logits can put a point on the wrong side of the decision boundary.
        Whatever decides that an input is misclassified must ask ``model`` itself, outside
        autocast (``self.model``), never this wrapper. ``fp16`` needs CUDA; its gradients
        are not loss-scaled here (an underflowing gradient makes a step weaker, not wrong).

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        >>> AutocastModel(net, "bf16")(torch.zeros(2, 1, 8, 8)).dtype
        torch.float32
    """

    def __init__(self, model: nn.Module, amp: str) -> None:
        super().__init__()
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        check_amp(amp, device)
        self.model = model
        self.amp = amp

    # The wrapper has no mode of its own: ``training`` is the wrapped model's, so code that
    # saves a module's mode and restores it later (``module_mode``) restores the model's.
    @property
    def training(self) -> bool:
        inner = self.__dict__.get("_modules", {}).get("model")
        return True if inner is None else bool(inner.training)

    @training.setter
    def training(self, mode: bool) -> None:
        inner = self.__dict__.get("_modules", {}).get("model")
        if inner is not None:
            inner.training = mode

    def forward(self, x: Tensor) -> Tensor:
        with autocast(self.amp, x.device):
            out = self.model(x)
        return out.float()


@dataclass
class TrainResult:
    """What happened: one record per epoch, and which epoch's weights were kept."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- distributed data parallel (torchrun) -----------------------------------------------------
@dataclass(frozen=True)
class DistributedContext:
    """This process's place in a ``torch.distributed`` job (DDP under ``torchrun``)."""

    rank: int
    world_size: int
    device: torch.device


def distributed_context(device: torch.device | None = None) -> DistributedContext | None:
    """The DDP context of this process, or None for a plain single-process run.

    Under ``torchrun`` (environment ``RANK`` and ``WORLD_SIZE``, world size above 1) the
    process group is initialised here if nobody did it yet: gloo on CPU, nccl on CUDA.
    On CUDA each rank takes the GPU of its ``LOCAL_RANK``.
    """
    import torch.distributed as dist

    if not dist.is_available():
        return None
    if not dist.is_initialized() and (
        "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1
    ):
        return None
    device = device or torch.device("cpu")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    world = dist.get_world_size()
    if world <= 1:
        return None
    return DistributedContext(dist.get_rank(), world, device)


def is_main_process() -> bool:
    """True except on the non-zero ranks of a DDP job (only rank 0 writes files)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (or ``model`` itself).

    A ``batch_loss`` gets the DDP wrapper under ``torchrun``; extra forward/backward
    passes that must not synchronise gradients (e.g. crafting adversarial inputs) go
    through the unwrapped module.
    """
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def _rank_slice(idx: Tensor, ddp: DistributedContext) -> Tensor:
    """This rank's share of one global batch; a batch smaller than the world is padded by
    repeating its indices, so every rank takes part in every gradient all-reduce."""
    if idx.numel() < ddp.world_size:
        idx = idx.repeat(math.ceil(ddp.world_size / idx.numel()))[: ddp.world_size]
    return idx[ddp.rank :: ddp.world_size]


def default_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def _scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig
) -> torch.optim.lr_scheduler.LRScheduler | None:
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, config.step_every, config.step_gamma)
    return None


def cross_entropy_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(model(x), y)


@torch.inference_mode()
def predict_logits(model: nn.Module, x: Tensor, *, batch_size: int = 1024) -> Tensor:
    """Logits for ``x`` in batches, on the model's device."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = [model(x[i : i + batch_size].to(device)) for i in range(0, x.shape[0], batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def evaluate(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 1024) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``."""
    logits = predict_logits(model, x, batch_size=batch_size)
    y = y.to(logits.device)
    return {
        "loss": float(F.cross_entropy(logits, y)),
        "accuracy": float((logits.argmax(1) == y).float().mean()),
    }


def fit(
    model: nn.Module,
    x_train: Tensor,
    y_train: Tensor,
    *,
    config: TrainConfig,
    x_val: Tensor | None = None,
    y_val: Tensor | None = None,
    batch_loss: BatchLoss = cross_entropy_loss,
    make_optimizer: OptimizerFactory = default_optimizer,
    on_epoch_end: Callable[[int, nn.Module, dict[str, float]], bool | None] | None = None,
    sampler: BatchSampler | None = None,
    progress: bool = True,
    description: str = "training",
) -> TrainResult:
    """Train ``model`` in place and return its history.

    Shuffling uses a generator seeded by ``config.seed``: the same seed and the same
    initial weights give bit-identical weights on CPU. With validation data, the
    weights of the best validation epoch are restored at the end (``restore_best``)
    and training stops after ``patience`` epochs without a better validation loss.
    ``on_epoch_end(epoch, model, record)`` may add keys to ``record`` and returns
    True to stop training.

    ``sampler(epoch)`` yields the index batches of one epoch; the default draws
    fixed-size batches from one seeded permutation per epoch (the behaviour above).
    DP-SGD passes Opacus's Poisson sampler (:mod:`dlsec.defenses.dp`), whose batches
    vary in size; the recorded ``train_loss`` stays a sum over batches divided by ``n``.

    Under ``torchrun`` (or in an initialised process group) the model is wrapped in
    ``DistributedDataParallel``: every rank draws the same seeded permutation, and each
    global batch of ``batch_size`` is split across the ranks, so the number of optimizer
    steps and the learning-rate schedule match the single-process run. ``batch_loss``
    then gets the DDP wrapper (see :func:`unwrap_model`). Evaluation runs on the full
    data on every rank and the recorded train loss is all-reduced, so every rank returns
    the same history; only rank 0 shows progress.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    device = resolve_device(config.device)
    ddp = distributed_context(device)
    if ddp is not None:
        device = ddp.device
    model.to(device)
    x_train, y_train = x_train.to(device), y_train.to(device)
    has_val = x_val is not None and y_val is not None and len(y_val) > 0
    if has_val:
        assert x_val is not None and y_val is not None
        x_val, y_val = x_val.to(device), y_val.to(device)
    n = x_train.shape[0]
    if n == 0:
        raise TrainingError("no training data")
    gen = torch.Generator().manual_seed(config.seed)
    optimizer = make_optimizer(model, config)
    train_module = model
    if ddp is not None:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        train_module = DistributedDataParallel(model, device_ids=ids)
        progress = progress and ddp.rank == 0
    scheduler = _scheduler(optimizer, config)
    result = TrainResult()
    best_loss, best_state, since_best = math.inf, None, 0
    steps = math.ceil(n / config.batch_size)

    def shuffled(epoch: int) -> Iterator[Tensor]:
        perm = torch.randperm(n, generator=gen).to(device)
        for s in range(steps):
            yield perm[s * config.batch_size : (s + 1) * config.batch_size]

    draw = sampler if sampler is not None else shuffled
    t0 = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn())
    autocast(config.amp, device)  # refuses an amp mode this device lacks, before any step
    scaler = torch.amp.GradScaler("cuda") if config.amp == "fp16" else None
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task(description, total=config.epochs, status="")
        for epoch in range(1, config.epochs + 1):
            t_epoch = time.perf_counter()
            model.train()
            total_loss = torch.zeros((), device=device)
            for batch in draw(epoch):
                idx = torch.as_tensor(batch, dtype=torch.long).to(device)
                if ddp is not None:
                    idx = _rank_slice(idx, ddp)
                optimizer.zero_grad(set_to_none=True)
                with autocast(config.amp, device):
                    loss = batch_loss(train_module, x_train[idx], y_train[idx])
                if scaler is not None:  # fp16: scale the loss so small gradients survive
                    scaler.scale(loss.float()).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                if idx.numel():  # a Poisson batch may be empty: still a (noised) DP step
                    total_loss += loss.detach() * idx.numel()
            lr = optimizer.param_groups[0]["lr"]
            if ddp is not None:  # the ranks' sums together cover the n samples
                torch.distributed.all_reduce(total_loss)
            if scheduler is not None:
                scheduler.step()
            record: dict[str, float] = {"epoch": epoch, "lr": lr, "train_loss": float(total_loss) / n}
            if config.measure_train_accuracy:
                record["train_accuracy"] = evaluate(model, x_train, y_train)["accuracy"]
            if has_val:
                assert x_val is not None and y_val is not None
                val = evaluate(model, x_val, y_val)
                record["val_loss"], record["val_accuracy"] = val["loss"], val["accuracy"]
            stop = bool(on_epoch_end(epoch, model, record)) if on_epoch_end else False
            if ddp is not None:  # every rank must stop together
                flag = torch.tensor(float(stop), device=device)
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                stop = bool(flag)
            record["seconds"] = time.perf_counter() - t_epoch
            result.history.append(record)
            status = f"loss {record['train_loss']:.3f}"
            if has_val:
                status += f" val acc {record['val_accuracy']:.3f}"
                if record["val_loss"] < best_loss:
                    best_loss, since_best, result.best_epoch = record["val_loss"], 0, epoch
                    if config.restore_best:
                        best_state = copy.deepcopy(model.state_dict())
                else:
                    since_best += 1
                    if config.patience is not None and since_best >= config.patience:
                        result.stopped_early = True
                        stop = True
            else:
                result.best_epoch = epoch
            bar.update(task, advance=1, status=status)
            if stop:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - t0
    return result


def train_model(
    dataset: Any,
    architecture: str,
    config: TrainConfig | None = None,
    *,
    normalization: dict[str, list[float]] | None = None,
    progress: bool = True,
    **fit_kwargs: Any,
) -> tuple[nn.Module, Any, TrainResult]:
    """Build ``architecture`` for ``dataset``, train it with :func:`fit`, return ``(model, card, result)``.

    Initial weights are drawn under ``config.seed`` (without touching the global RNG), and
    the validation set is a stratified split of the training set by the same seed.
    """
    from dlsec.data import stratified_split
    from dlsec.models import ModelCard, build_model

    config = config or TrainConfig()
    card = ModelCard(
        architecture=architecture,
        input_shape=list(dataset.input_shape),
        classes=list(dataset.classes),
        bounds=tuple(dataset.bounds),
        normalization=normalization,
        dataset=dataset.name,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(card, factory=architecture)  # the caller named it
    x_tr, y_tr, x_val, y_val = dataset.x_train, dataset.y_train, None, None
    if config.val_fraction > 0:
        tr_idx, val_idx = stratified_split(y_tr, test_size=config.val_fraction, seed=config.seed)
        x_tr, y_tr, x_val, y_val = x_tr[tr_idx], y_tr[tr_idx], x_tr[val_idx], y_tr[val_idx]
    result = fit(
        model, x_tr, y_tr, config=config, x_val=x_val, y_val=y_val, progress=progress, **fit_kwargs
    )
    test = evaluate(model, dataset.x_test, dataset.y_test)
    card.training = {**config.to_dict(), "best_epoch": result.best_epoch}
    card.metrics = {"test_accuracy": test["accuracy"], "test_loss": test["loss"]}
    if result.history:
        last = result.history[result.best_epoch - 1] if result.best_epoch else result.history[-1]
        if "train_accuracy" in last:
            card.metrics["train_accuracy"] = last["train_accuracy"]
        if "val_accuracy" in last:
            card.metrics["val_accuracy"] = last["val_accuracy"]
    return model, card, result
