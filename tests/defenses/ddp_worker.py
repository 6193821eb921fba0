"""Run by test_adversarial_training.py under ``torchrun --nproc_per_node=2`` (gloo, CPU).

Each rank prints one JSON line: the sample ids its batch losses saw in one plain epoch,
then the history, metrics and a weight checksum of a short FGSM-RS adversarial training
run on digits. Only rank 0 saves the model (to argv[1]).
"""

from __future__ import annotations

import hashlib
import json
import sys

import torch

from dlsec.data import load_dataset
from dlsec.defenses.adversarial import adversarial_train
from dlsec.models import save
from dlsec.training import TrainConfig, fit, is_main_process


def shard_ids() -> list[int]:
    seen: list[int] = []
    ids = torch.arange(100, dtype=torch.float32)
    x = torch.stack([ids, torch.zeros(100)], dim=1)
    y = (ids % 2).long()

    def loss(model: torch.nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        seen.extend(int(i) for i in xb[:, 0])
        return torch.nn.functional.cross_entropy(model(xb), yb)

    cfg = TrainConfig(epochs=1, batch_size=10, schedule="none", device="cpu")
    fit(torch.nn.Linear(2, 2), x, y, config=cfg, batch_loss=loss, progress=False)
    return seen


def main(out: str) -> None:
    seen = shard_ids()
    ds = load_dataset("digits", seed=0)
    cfg = TrainConfig(epochs=2, lr=1e-2, batch_size=64, seed=0, device="cpu")
    model, card, result = adversarial_train(
        ds, "simplenet", method="fgsm-rs", eps=0.1, config=cfg, progress=False
    )
    digest = hashlib.sha256()
    for value in model.state_dict().values():
        digest.update(value.detach().contiguous().numpy().tobytes())
    rank = torch.distributed.get_rank()
    if is_main_process():
        save(model, card, out)
    line = {
        "rank": rank, "world": torch.distributed.get_world_size(), "seen": seen,
        "history": [{k: v for k, v in h.items() if k != "seconds"} for h in result.history],
        "metrics": card.metrics, "weights": digest.hexdigest(),
    }
    # one write per line, newline included: both ranks share stdout (run with -u), and
    # print's separate write of the newline let the other rank's line land in between
    sys.stdout.write("RESULT " + json.dumps(line) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1])
