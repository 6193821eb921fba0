"""Evaluations sharded across ``torchrun`` ranks: which points a rank takes, and the
gather of the per-point results back into the original order on every rank.

The points are cut into blocks of ``block`` consecutive indices (the last one shorter;
by default one block per rank, ``ceil(n / world)``: the attacks stay batched, which on a
small model is most of the speed);
rank ``r`` of ``w`` takes the whole blocks ``[nb * r // w, nb * (r + 1) // w)`` (``nb`` the
number of blocks), i.e. one contiguous range of points, so a gather is a concatenation
in rank order. A sharded evaluation attacks each block as one batch with a generator
seeded from the stage's seed and the block's *global* index, so a point's randomness
does not depend on how the blocks are shared out: a run with any number of ranks
gives the result of the one-process run with the same ``block`` (the per-block path,
``block_size=`` in :func:`dlsec.scenarios.whitebox.evaluate_robustness`; the report
says the block it used). The plain one-process run (no blocks) draws differently.

Only rank 0 writes outputs (:attr:`Shard.is_main`); each rank keeps its own resume
state (:meth:`Shard.state_path`).

Example (under ``torchrun --nproc-per-node 2``):
    >>> shard = current_shard()                      # doctest: +SKIP
    >>> lo, hi = shard.bounds(359)                   # rank 0: (0, 192), rank 1: (192, 359)
    >>> full = shard.gather(local_mask, dim=0)       # the 359 masks, in order, on both ranks
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dlsec.errors import DlsecError
from dlsec.training import distributed_context


class ShardingError(DlsecError):
    """A sharding setting that cannot work (a block size below 1, a rank out of range)."""


def block_seed(seed: int, block: int) -> int:
    """The seed of block ``block`` of a stage seeded ``seed`` (a 62-bit mix of both)."""
    return (int(seed) * 6364136223846793005 + (int(block) + 1) * 1442695040888963407) % (2**62)


def block_ranges(n: int, block: int) -> list[tuple[int, int]]:
    """The ``[start, stop)`` of every block of ``n`` points."""
    if block < 1:
        raise ShardingError(f"block size must be at least 1, got {block}")
    return [(s, min(s + block, n)) for s in range(0, n, block)]


@dataclass(frozen=True)
class Shard:
    """This process's share of a sharded evaluation: rank ``rank`` of ``world_size``, in
    blocks of ``block`` points (``None``: one block per rank, see :meth:`resolve`)."""

    rank: int
    world_size: int
    block: int | None = None

    def __post_init__(self) -> None:
        if self.block is not None and self.block < 1:
            raise ShardingError(f"block size must be at least 1, got {self.block}")
        if not 0 <= self.rank < self.world_size:
            raise ShardingError(f"rank {self.rank} is not in 0..{self.world_size - 1}")

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes outputs."""
        return self.rank == 0

    def resolve(self, n: int) -> Shard:
        """This shard with its block size fixed for ``n`` points (``ceil(n / world)`` when
        none was given)."""
        if self.block is not None:
            return self
        return Shard(self.rank, self.world_size, max(1, -(-n // self.world_size)))

    @property
    def size(self) -> int:
        """The block size (:meth:`resolve` first when none was given)."""
        if self.block is None:
            raise ShardingError("the block size is not fixed yet: call resolve(n) first")
        return self.block

    def bounds(self, n: int) -> tuple[int, int]:
        """The ``[lo, hi)`` of the points this rank takes (whole blocks; maybe empty)."""
        block = self.resolve(n).size
        nb = -(-n // block)
        first = nb * self.rank // self.world_size
        last = nb * (self.rank + 1) // self.world_size
        return min(first * block, n), min(last * block, n)

    def state_path(self, path: str | Path) -> Path:
        """This rank's own resume file: ``<path>.rank<k>-of-<n>``."""
        path = Path(path)
        return path.with_name(f"{path.name}.rank{self.rank}-of-{self.world_size}")

    def gather_objects(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order, on every rank."""
        import torch.distributed as dist

        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def gather(self, local: Tensor, dim: int = 0) -> Tensor:
        """The per-point tensors of every rank (points along ``dim``) concatenated in rank
        order, i.e. back in the points' original order, on every rank (on ``local``'s
        device). The ranks may hold different numbers of points (none, too) but the same
        dtype and other dimensions: the counts travel first, then one tensor per rank
        padded to the largest count (``dist.all_gather``: no pickling; gloo on CPU, nccl on
        the rank's GPU)."""
        if self.world_size == 1:
            return local
        import torch.distributed as dist

        rows = local.movedim(dim, 0)
        wire = torch.device("cuda", torch.cuda.current_device()) \
            if dist.get_backend() == "nccl" else torch.device("cpu")
        count = torch.tensor([rows.shape[0]], dtype=torch.int64, device=wire)
        counts = [torch.zeros_like(count) for _ in range(self.world_size)]
        dist.all_gather(counts, count)
        sizes = [int(c) for c in counts]
        flat = _as_wire(rows.detach().to(wire))
        padded = pad_rows(flat, max(sizes))
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded.contiguous())
        joined = unpad_rows(parts, sizes)
        return _from_wire(joined, local.dtype).to(local.device).movedim(0, dim)


def pad_rows(t: Tensor, rows: int) -> Tensor:
    """``t`` with zero rows appended along dim 0 up to ``rows`` rows (what one rank sends
    in a padded gather)."""
    if t.shape[0] > rows:
        raise ShardingError(f"cannot pad {t.shape[0]} rows down to {rows}")
    return torch.cat([t, t.new_zeros((rows - t.shape[0], *t.shape[1:]))])


def unpad_rows(parts: list[Tensor], sizes: list[int]) -> Tensor:
    """The first ``sizes[r]`` rows of each padded ``parts[r]``, concatenated in rank
    order (the inverse of :func:`pad_rows` over all ranks)."""
    return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)])


def _as_wire(t: Tensor) -> Tensor:
    # gloo moves no bool tensors: as bytes
    return t.to(torch.uint8) if t.dtype == torch.bool else t


def _from_wire(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t.to(torch.bool) if dtype == torch.bool else t


def launched_shard(block: int | None = None) -> Shard | None:
    """The shard ``torchrun`` gave this process (its RANK / WORLD_SIZE environment; no
    process group is started), or ``None`` outside a multi-process launch: what a command
    checks before any work (e.g. this rank's state file)."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if "RANK" not in os.environ or world <= 1:
        return None
    return Shard(int(os.environ["RANK"]), world, block)


def current_shard(device: torch.device | None = None, block: int | None = None) -> Shard | None:
    """The shard of this process under ``torchrun`` (RANK / WORLD_SIZE; the process group
    is initialised: gloo on CPU, nccl on CUDA), or ``None`` in a plain one-process run."""
    ctx = distributed_context(device)
    if ctx is None:
        return None
    return Shard(ctx.rank, ctx.world_size, block)


__all__ = [
    "Shard", "ShardingError", "block_ranges", "block_seed", "current_shard", "launched_shard",
    "pad_rows", "unpad_rows",
]
