"""White-box evasion, side by side with torchattacks, ART and Foolbox; the robustness
ensemble against the reference AutoAttack (pyautoattack) and torchattacks' AutoAttack;
the cost of the ensemble's gradient-masking checks.

Usage: python benchmarks/evasion.py [--quick]
Writes benchmarks/results/evasion.md.

Every model is trained here, by the recipe the results state, with a fixed seed on
TRAIN_THREADS thread(s), and the results record its weights' sha256 (the digest dlsec
writes into a model card), so anyone can retrain it and check they measure the same
model. Every timing below is measured in this one process, on the same model, points,
batch and thread count, interleaved over repeats (median reported). "Raw cost" is 40
forward passes plus 40 backward passes to the input on the same batch: the floor for a
fixed 40-step PGD. Peak memory is the peak RSS growth of a fresh subprocess that runs only
that method (on the model this process trained, handed over in a temporary directory).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import describe  # noqa: E402

from dlsec.training import configure_threads  # noqa: E402  (reads torch's default threads first)

ROOT = HERE.parent
OUT = ROOT / "benchmarks" / "results" / "evasion.md"
TRAIN_THREADS = 1  # every model is trained on one thread (bit-reproducible on one machine)
STEPS = 40

warnings.filterwarnings("ignore")


# -- targets: trained here ---------------------------------------------------------------------
RECIPES = {
    "digits-simplenet": "SimpleNet on digits (`load_dataset('digits', seed=0)`), "
    "`train_model(ds, 'simplenet', TrainConfig(epochs=30, lr=3e-3))` (seed 0)",
    "fashion-mnist-smallcnn": "SmallCNN on Fashion-MNIST, `train_model(ds, 'smallcnn', "
    "TrainConfig(epochs=1, lr=1e-3, batch_size=128))` (seed 0)",
    "digits-simplenet-pgd-at": "SimpleNet on digits, `adversarial_train(ds, 'simplenet', "
    "method='pgd', eps=0.2, config=TrainConfig(epochs=30, lr=3e-3))` (PGD-AT: 10 steps of "
    "2.5 eps / 10 from a random start; seed 0)",
}


def weights_sha256(model: nn.Module) -> str:
    """The sha256 dlsec writes into a model card: of the weights' safetensors bytes."""
    from safetensors.torch import save as st_save

    from dlsec.models import inner_network

    state = {k: v.detach().cpu().contiguous() for k, v in inner_network(model).state_dict().items()}
    return hashlib.sha256(st_save(state)).hexdigest()


def _train(name: str):
    from dlsec.data import load_dataset
    from dlsec.defenses.adversarial import adversarial_train
    from dlsec.training import TrainConfig, train_model

    if name == "digits-simplenet-pgd-at":
        ds = load_dataset("digits", seed=0)
        model, card, _ = adversarial_train(ds, "simplenet", method="pgd", eps=0.2,
                                           config=TrainConfig(epochs=30, lr=3e-3), progress=False)
    elif name == "digits-simplenet":
        ds = load_dataset("digits", seed=0)
        model, card, _ = train_model(
            ds, "simplenet", TrainConfig(epochs=30, lr=3e-3), progress=False
        )
    else:
        ds = load_dataset("fashion-mnist", seed=0)
        model, card, _ = train_model(ds, "smallcnn", TrainConfig(epochs=1, lr=1e-3, batch_size=128),
                                     progress=False)
    return ds, model, card


def target(name: str, directory: str | None = None, *, save_to: Path | None = None):
    """(model, card, x, y, eps): the benchmark's model, trained now by ``RECIPES[name]``
    on TRAIN_THREADS thread(s) (or loaded from ``directory``, where this script saved it
    with ``save_to`` for a subprocess), and its points. ``card.weights_sha256`` holds the
    weights' digest."""
    from dlsec.data import load_dataset
    from dlsec.models import load, save

    n, eps = {"digits-simplenet": (359, 0.1), "fashion-mnist-smallcnn": (200, 0.1),
              "digits-simplenet-pgd-at": (359, 0.1)}[name]
    if directory is not None:
        model, card = load(directory)
        ds = load_dataset("digits" if name.startswith("digits") else "fashion-mnist", seed=0)
    else:
        threads = torch.get_num_threads()
        torch.set_num_threads(TRAIN_THREADS)
        try:
            ds, model, card = _train(name)
        finally:
            torch.set_num_threads(threads)
        card.weights_sha256 = weights_sha256(model)
        if save_to is not None:
            save(model, card, save_to)
    model = model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, card, ds.x_test[:n].contiguous(), ds.y_test[:n].contiguous(), eps


def bench_threads(model: nn.Module) -> int:
    """Set and return the thread count dlsec's one rule picks for ``model`` (one thread
    for a small model on CPU, else torch's default), as every dlsec command does."""
    return configure_threads(0, model=model, device=torch.device("cpu"))


def model_line(name: str, card) -> str:
    return f"- `{name}`: {RECIPES[name]}; weights sha256 `{card.weights_sha256}`."


# -- methods ---------------------------------------------------------------------------------
def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def raw_cost(model, x, y, eps):
    def run():
        xx = x.clone()
        for _ in range(STEPS):
            xx.requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(model(xx), y)
            (_g,) = torch.autograd.grad(loss, xx)
            xx = xx.detach()
        return None

    return run


def dlsec_pgd(model, x, y, eps, *, early_stop: bool, sweep=None):
    from dlsec.attacks.evasion import PGD

    atk = PGD(steps=STEPS, early_stop=early_stop)

    def run():
        r = atk(
            model,
            x,
            y,
            eps=sweep or eps,
            bounds=(0.0, 1.0),
            generator=torch.Generator().manual_seed(0),
        )
        return r.robust_accuracy

    return run


def torchattacks_pgd(model, x, y, eps, *, sweep=None):
    import torchattacks

    def run():
        out = []
        for e in sweep or [eps]:
            atk = torchattacks.PGD(
                model, eps=e, alpha=2.5 * e / STEPS, steps=STEPS, random_start=True
            )
            out.append(accuracy(model, atk(x, y), y))
        return out

    return run


def art_pgd(model, x, y, eps):
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                            nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")
    atk = ProjectedGradientDescent(clf, norm="inf", eps=eps, eps_step=2.5 * eps / STEPS, max_iter=STEPS,
                                   num_random_init=1, batch_size=x.shape[0], verbose=False)
    xn, yn = x.numpy(), y.numpy()

    def run():
        return [accuracy(model, torch.from_numpy(atk.generate(xn, yn)), y)]

    return run


def foolbox_pgd(model, x, y, eps):
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0))
    atk = fb.attacks.LinfPGD(abs_stepsize=2.5 * eps / STEPS, steps=STEPS, random_start=True)

    def run():
        _, adv, _ = atk(fmodel, x, y, epsilons=eps)
        return [accuracy(model, adv, y)]

    return run


def methods(model, x, y, eps, sweep) -> dict[str, Callable[[], object]]:
    return {
        "raw 40 fwd+bwd": raw_cost(model, x, y, eps),
        "dlsec PGD-40 (fixed steps)": dlsec_pgd(model, x, y, eps, early_stop=False),
        "torchattacks PGD-40": torchattacks_pgd(model, x, y, eps),
        "ART PGD-40": art_pgd(model, x, y, eps),
        "Foolbox LinfPGD-40": foolbox_pgd(model, x, y, eps),
        "dlsec PGD-40 (early stop)": dlsec_pgd(model, x, y, eps, early_stop=True),
        "dlsec 5-eps sweep": dlsec_pgd(model, x, y, eps, early_stop=True, sweep=sweep),
        "torchattacks 5-eps, once per eps": torchattacks_pgd(model, x, y, eps, sweep=sweep),
    }


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def one(target_name: str, method: str, directory: str) -> None:
    """Subprocess mode: run one method and print its peak RSS growth (MiB).

    The peak is reset just before the run (writing 5 to /proc/self/clear_refs resets
    VmHWM), so the number is the method's own high-water mark above the loaded model.
    """
    model, _card, x, y, eps = target(target_name, directory)
    bench_threads(model)
    sweep = [eps * f for f in (0.25, 0.5, 1.0, 1.5, 2.0)]
    fn = methods(model, x, y, eps, sweep)[method]
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_kib("VmRSS")
    fn()
    print(json.dumps({"peak_mib": (_status_kib("VmHWM") - base) / 1024}))


def bench(target_name: str, repeat: int, trained, directory: Path) -> tuple:
    torch.manual_seed(0)
    model, _card, x, y, eps = trained
    threads = bench_threads(model)
    sweep = [eps * f for f in (0.25, 0.5, 1.0, 1.5, 2.0)]
    ms = methods(model, x, y, eps, sweep)
    for fn in ms.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in ms}
    results: dict[str, object] = {}
    for _ in range(repeat):
        for k, fn in ms.items():
            t0 = time.perf_counter()
            results[k] = fn()
            times[k].append(time.perf_counter() - t0)
    rows = []
    for k in ms:
        mem = subprocess.run([sys.executable, __file__, "--one", target_name, k, str(directory)],
                             capture_output=True, text=True)
        peak = (
            json.loads(mem.stdout.strip().splitlines()[-1])["peak_mib"]
            if mem.returncode == 0
            else float("nan")
        )
        rows.append(
            {
                "method": k,
                "seconds": statistics.median(times[k]),
                "result": results[k],
                "peak_mib": peak,
            }
        )
    return rows, accuracy(model, x, y), eps, sweep, len(y), threads


def table(
    target_name: str, rows, clean: float, eps: float, sweep, n: int, threads: int, card
) -> list[str]:
    t = {r["method"]: r["seconds"] for r in rows}
    raw, ta = t["raw 40 fwd+bwd"], t["torchattacks PGD-40"]
    lines = [
        f"### {target_name}: {n} test points, clean accuracy {clean:.4f}, Linf eps {eps:g}",
        "",
        model_line(target_name, card),
        f"- {threads} thread{'s' if threads > 1 else ''} (dlsec's rule for this model).",
        "",
        "| method | wall (s) | × raw cost | × torchattacks | robust accuracy | peak RSS growth (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        res = r["result"]
        ra = "—" if res is None else ", ".join(f"{v:.4f}" for v in res)
        lines.append(
            f"| {r['method']} | {r['seconds']:.3f} | {r['seconds'] / raw:.2f} | "
            f"{r['seconds'] / ta:.2f} | {ra} | {r['peak_mib']:.0f} |"
        )
    sweep_ratio = t["dlsec 5-eps sweep"] / t["torchattacks 5-eps, once per eps"]
    lines += [
        "",
        f"- Fixed 40-step PGD: dlsec {t['dlsec PGD-40 (fixed steps)'] / raw:.2f}× the raw cost "
        f"(target ≤ 1.02×); torchattacks {ta / raw:.2f}×, ART {t['ART PGD-40'] / raw:.2f}×, "
        f"Foolbox {t['Foolbox LinfPGD-40'] / raw:.2f}×.",
        f"- Robust-accuracy PGD-40 with early stop: {t['dlsec PGD-40 (early stop)'] / ta:.2f}× "
        "torchattacks' time (target ≤ 0.5×).",
        f"- 5-epsilon sweep ({', '.join(f'{e:g}' for e in sweep)}): {sweep_ratio:.2f}× torchattacks "
        "run once per epsilon (target ≤ 0.4×).",
        "",
    ]
    return lines


# -- the ensemble against AutoAttack ----------------------------------------------------------
class _StageLog(logging.Handler):
    """Reads the reference AutoAttack's per-stage robust accuracy from its debug log."""

    PATTERN = re.compile(r"robust accuracy after (\S+): ([0-9.]+)%")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.stages: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        m = self.PATTERN.search(record.getMessage())
        if m:
            self.stages[m.group(1).lower()] = float(m.group(2)) / 100


def reference_autoattack(model, x, y, eps: float) -> tuple[torch.Tensor, dict[str, float]]:
    """pyautoattack's AutoAttack, version "standard" (seed 0): the adversarials and the
    robust accuracy after each of its stages."""
    import pyautoattack

    log = logging.getLogger("auto-attack")
    handler = _StageLog()
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.DEBUG)
    log.propagate = False
    try:
        aa = pyautoattack.AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=0)
        x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=len(y))
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    return x_adv, handler.stages


def bench_ensemble(eps_list: list[float], trained) -> list[str]:
    """dlsec's ensemble vs the reference AutoAttack and torchattacks' AutoAttack (both
    "standard") on the PGD-AT model, each once per epsilon, side by side."""
    import torchattacks

    from dlsec.scenarios.whitebox import evaluate_robustness

    model, card, x, y, _ = trained
    threads = bench_threads(model)
    rows, details = [], []
    for e in eps_list:
        t0 = time.perf_counter()
        rep = evaluate_robustness(model, x, y, norm="linf", eps=[e], card=card, checks=False,
                                  generator=torch.Generator().manual_seed(0), progress=False)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        x_ref, ref_stages = reference_autoattack(model, x, y, e)
        t_ref = time.perf_counter() - t0
        t0 = time.perf_counter()
        ta = torchattacks.AutoAttack(
            model, norm="Linf", eps=e, version="standard", n_classes=10, seed=0
        )
        x_ta = ta(x, y)
        t_ta = time.perf_counter() - t0
        with torch.no_grad():
            ref_ok, ta_ok = model(x_ref).argmax(1) == y, model(x_ta).argmax(1) == y
        ours_ok = rep.robust[0]
        ref, tacc = float(ref_ok.double().mean()), float(ta_ok.double().mean())
        rows.append(f"| {e:g} | {rep.robust_accuracy[0]:.4f} | {t_ours:.1f} | {ref:.4f} | {t_ref:.1f} | "
                    f"{t_ours / t_ref:.2f} | {tacc:.4f} | {t_ta:.1f} | {t_ours / t_ta:.2f} |")
        ours_txt = ", ".join(f"{k} {v[0]:.4f}" for k, v in rep.stage_accuracy.items())
        ref_txt = ", ".join(f"{k} {v:.4f}" for k, v in ref_stages.items())
        details.append(
            f"- eps {e:g}: dlsec after each stage: {ours_txt}. Reference AutoAttack after each "
            f"stage: {ref_txt}. Points the reference fooled and dlsec did not: "
            f"{int((ours_ok & ~ref_ok).sum())}; dlsec fooled and the reference did not: "
            f"{int((~ours_ok & ref_ok).sum())}."
        )
    return [
        f"### Ensemble vs AutoAttack: digits SimpleNet after PGD-AT (eps 0.2), {len(y)} test points",
        "",
        model_line("digits-simplenet-pgd-at", card),
        f"- Measured on {describe(threads=threads)} (the thread count dlsec's rule picks for "
        "a model this small); each method once per epsilon, one after another.",
        "",
        "| eps | dlsec ensemble robust acc | time (s) | reference AutoAttack robust acc | time (s) "
        "| time ratio | torchattacks AutoAttack robust acc | time (s) | time ratio |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        *details,
        "",
        "dlsec: APGD-CE (100 iterations), APGD-T (9 targets x 100 iterations), boundary restarts "
        "(two more runs of APGD-CE and of APGD-T on each target, from new random starts, on the "
        "tenth of the survivors nearest the decision boundary), then Square (Linf, a total "
        "budget of 20,000 queries), each on the points still robust. The reference AutoAttack "
        "(`pyautoattack`, `version='standard'`): APGD-CE (100 iterations, 1 restart), APGD-T "
        "(9 targets x 100 iterations), FAB-T (9 targets x 100 iterations) and Square (5,000 "
        "queries). torchattacks' `AutoAttack(version='standard')` runs the same four with "
        "torchattacks' default of 10 APGD steps, a weaker, cheaper ensemble. Time ratio: dlsec "
        "/ that AutoAttack.",
        "",
    ]


# -- the cost of the gradient-masking checks ---------------------------------------------------
class BNSmallCNN(nn.Module):
    """A user's 28x28 CNN with BatchNorm: conv(32)-BN-ReLU-pool, conv(64)-BN-ReLU-pool,
    then two linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.conv2, self.bn2 = nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64)
        self.fc1, self.fc2 = nn.Linear(64 * 7 * 7, 128), nn.Linear(128, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


BN_TRAIN = 1400
BN_POINTS = 397
BN_RECIPE = (f"`BNSmallCNN` (this script) on a seeded sample of {BN_TRAIN:,} Fashion-MNIST training "
             "images, `fit(model, x, y, config=TrainConfig(epochs=5, lr=1e-3))`, initial weights "
             "under `torch.manual_seed(0)`, seed 0")


def bn_target():
    """(model, x, y): the BatchNorm CNN, trained now on TRAIN_THREADS thread(s)."""
    from dlsec.data import load_dataset
    from dlsec.training import TrainConfig, fit

    ds = load_dataset("fashion-mnist", seed=0)
    idx = torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(0))[:BN_TRAIN]
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = BNSmallCNN()
        fit(model, ds.x_train[idx], ds.y_train[idx], config=TrainConfig(epochs=5, lr=1e-3),
            progress=False)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, ds.x_test[:BN_POINTS].contiguous(), ds.y_test[:BN_POINTS].contiguous()


def bench_checks(eps_runs: list[list[float]]) -> list[str]:
    """evaluate_robustness with and without its sanity checks, side by side (off, then on,
    for each epsilon list), on the BatchNorm CNN."""
    from dlsec.scenarios.whitebox import evaluate_robustness

    model, x, y = bn_target()
    threads = bench_threads(model)
    rows = []
    for eps in eps_runs:
        reps = {}
        for checks in (False, True):
            reps[checks] = evaluate_robustness(model, x, y, eps=eps, bounds=(0.0, 1.0), checks=checks,
                                               generator=torch.Generator().manual_seed(0), progress=False)
        off, on = reps[False], reps[True]
        same = torch.equal(off.fooled_by, on.fooled_by)
        rows.append(
            f"| {', '.join(f'{e:g}' for e in eps)} | {', '.join(f'{a:.4f}' for a in on.robust_accuracy)} "
            f"| {off.seconds:.1f} | {on.seconds:.1f} | {on.check_seconds:.2f} | "
            f"{on.check_seconds / (on.seconds - on.check_seconds):.3f} | {on.seconds / off.seconds:.2f} | "
            f"{'yes' if same else 'no'} | {len(on.warnings)} |"
        )
    return [
        f"### The ensemble's gradient-masking checks: BatchNorm CNN on Fashion-MNIST, {BN_POINTS} test points",
        "",
        f"- Model: {BN_RECIPE}; weights sha256 `{weights_sha256(model)}`; clean accuracy "
        f"{on.clean_accuracy:.4f}.",
        f"- Measured on {describe(threads=threads)}. Per epsilon list, `evaluate_robustness` "
        "(default stages, seed 0) with `checks=False`, then with `checks=True`.",
        "",
        "| eps | robust accuracy | ensemble, checks off (s) | checks on (s) | time in the checks (s) "
        "| checks / ensemble | on / off | same result | warnings |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "*checks / ensemble*: the time `evaluate_robustness` reports for its checks "
        "(`check_seconds`) over the rest of the same run (target ≤ 0.2, AutoAttack's share). The "
        "checks: probabilities and randomness on the clean pass's logits (one more forward "
        "pass), input gradients, a 20-step PGD at half the input range on the check points "
        "the ensemble left robust, FGSM and PGD-10 on up to 32 survivors per epsilon, the "
        "robust-accuracy curve, and the black-box-stage comparison; 32 check points.",
        "",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="digits only, one repeat")
    parser.add_argument(
        "--one", nargs=3, metavar=("TARGET", "METHOD", "DIR"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.one:
        one(*args.one)
        return 0
    targets = ["digits-simplenet"] if args.quick else ["digits-simplenet", "fashion-mnist-smallcnn"]
    lines = [
        "## White-box evasion: PGD against torchattacks, ART and Foolbox",
        "",
        f"Command: `python benchmarks/evasion.py{' --quick' if args.quick else ''}` "
        f"({describe(threads='threads as dlsec chooses them, per model')}). Robust accuracy is on the same points; dlsec's "
        "fixed-step run keeps each point's best iterate, the peers their last. Every model "
        f"is trained by this script ({TRAIN_THREADS} thread, seed 0) by the recipe below.",
        "",
    ]
    with tempfile.TemporaryDirectory(prefix="dlsec-bench-evasion-") as work:
        for name in targets:
            repeat = 1 if args.quick or name.startswith("fashion") else 3
            trained = target(name, save_to=Path(work) / name)
            rows, clean, eps, sweep, n, threads = bench(name, repeat, trained, Path(work) / name)
            lines += table(name, rows, clean, eps, sweep, n, threads, trained[1])
    lines += bench_ensemble([0.1] if args.quick else [0.1, 0.2], target("digits-simplenet-pgd-at"))
    if not args.quick:
        lines += bench_checks([[0.1], [0.2]])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
