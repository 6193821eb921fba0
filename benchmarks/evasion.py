"""White-box evasion, side by side with torchattacks, ART and Foolbox.

Usage: python benchmarks/evasion.py [--quick]
Writes benchmarks/results/evasion.md.

Every timing below is measured in this one process, on the same model, points, batch and
thread count, interleaved over repeats (median reported). "Raw cost" is 40 forward passes
plus 40 backward passes to the input on the same batch: the floor for a fixed 40-step PGD.
Peak memory is the peak RSS growth of a fresh subprocess that runs only that method.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"
OUT = ROOT / "benchmarks" / "results" / "evasion.md"
THREADS = 2
STEPS = 40

warnings.filterwarnings("ignore")


# -- targets ---------------------------------------------------------------------------------
def target(name: str):
    """(model, card, x, y, eps): the benchmark's model (trained once, cached) and points."""
    from dlsec.data import load_dataset
    from dlsec.models import load, save
    from dlsec.training import TrainConfig, train_model

    if name == "digits-simplenet":
        spec, arch, cfg, n, eps = "digits", "simplenet", TrainConfig(epochs=30, lr=3e-3), 359, 0.1
    else:
        spec, arch, cfg, n, eps = "fashion-mnist", "smallcnn", TrainConfig(epochs=1, lr=1e-3, batch_size=128), 200, 0.1
    ds = load_dataset(spec, seed=0)
    d = CACHE / name
    try:
        model, card = load(d)
    except Exception:
        model, card, _ = train_model(ds, arch, cfg, progress=False)
        save(model, card, d)
    model = model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, card, ds.x_test[:n].contiguous(), ds.y_test[:n].contiguous(), eps


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
        r = atk(model, x, y, eps=sweep or eps, bounds=(0.0, 1.0), generator=torch.Generator().manual_seed(0))
        return r.robust_accuracy

    return run


def torchattacks_pgd(model, x, y, eps, *, sweep=None):
    import torchattacks

    def run():
        out = []
        for e in sweep or [eps]:
            atk = torchattacks.PGD(model, eps=e, alpha=2.5 * e / STEPS, steps=STEPS, random_start=True)
            out.append(accuracy(model, atk(x, y), y))
        return out

    return run


def art_pgd(model, x, y, eps):
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                            nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")  # fmt: skip
    atk = ProjectedGradientDescent(clf, norm="inf", eps=eps, eps_step=2.5 * eps / STEPS, max_iter=STEPS,
                                   num_random_init=1, batch_size=x.shape[0], verbose=False)  # fmt: skip
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


def one(target_name: str, method: str) -> None:
    """Subprocess mode: run one method and print its peak RSS growth (MiB).

    The peak is reset just before the run (writing 5 to /proc/self/clear_refs resets
    VmHWM), so the number is the method's own high-water mark above the loaded model.
    """
    torch.set_num_threads(THREADS)
    model, _card, x, y, eps = target(target_name)
    sweep = [eps * f for f in (0.25, 0.5, 1.0, 1.5, 2.0)]
    fn = methods(model, x, y, eps, sweep)[method]
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_kib("VmRSS")
    fn()
    print(json.dumps({"peak_mib": (_status_kib("VmHWM") - base) / 1024}))


def bench(target_name: str, repeat: int) -> list[dict]:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    model, _card, x, y, eps = target(target_name)
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
        mem = subprocess.run([sys.executable, __file__, "--one", target_name, k], capture_output=True, text=True)
        peak = json.loads(mem.stdout.strip().splitlines()[-1])["peak_mib"] if mem.returncode == 0 else float("nan")
        rows.append({"method": k, "seconds": statistics.median(times[k]), "result": results[k], "peak_mib": peak})
    return rows, accuracy(model, x, y), eps, sweep, len(y)


def table(target_name: str, rows, clean: float, eps: float, sweep, n: int) -> list[str]:
    t = {r["method"]: r["seconds"] for r in rows}
    raw, ta = t["raw 40 fwd+bwd"], t["torchattacks PGD-40"]
    lines = [
        f"### {target_name}: {n} test points, clean accuracy {clean:.4f}, Linf eps {eps:g}",
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


def pgd_at_target():
    """A PGD-AT digits SimpleNet (eps 0.2), trained once and cached."""
    from dlsec.data import load_dataset
    from dlsec.defenses.adversarial_training import adversarial_train
    from dlsec.models import load, save
    from dlsec.training import TrainConfig

    ds = load_dataset("digits", seed=0)
    d = CACHE / "digits-simplenet-pgd-at"
    try:
        model, card = load(d)
    except Exception:
        model, card, _ = adversarial_train(ds, "simplenet", method="pgd", eps=0.2,
                                           config=TrainConfig(epochs=30, lr=3e-3), progress=False)  # fmt: skip
        save(model, card, d)
    model = model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, card, ds.x_test, ds.y_test


def bench_ensemble(eps_list: list[float]) -> list[str]:
    """dlsec's ensemble vs torchattacks' AutoAttack (standard) on a PGD-AT model."""
    import torchattacks

    from dlsec.attacks.evasion.ensemble import evaluate_robustness

    torch.set_num_threads(THREADS)
    model, card, x, y = pgd_at_target()
    lines = [
        f"### Ensemble vs AutoAttack: digits SimpleNet after PGD-AT (eps 0.2), {len(y)} test points",
        "",
        "| eps | dlsec ensemble robust acc | time (s) | torchattacks AutoAttack robust acc | time (s) | time ratio |",
        "|---|---|---|---|---|---|",
    ]
    for e in eps_list:
        t0 = time.perf_counter()
        rep = evaluate_robustness(model, x, y, norm="linf", eps=[e], card=card, checks=False,
                                  generator=torch.Generator().manual_seed(0), progress=False)  # fmt: skip
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        aa = torchattacks.AutoAttack(model, norm="Linf", eps=e, version="standard", n_classes=10, seed=0)
        theirs = accuracy(model, aa(x, y), y)
        t_theirs = time.perf_counter() - t0
        lines.append(f"| {e:g} | {rep.robust_accuracy[0]:.4f} | {t_ours:.1f} | {theirs:.4f} | "
                     f"{t_theirs:.1f} | {t_ours / t_theirs:.2f} |")  # fmt: skip
    lines += [
        "",
        "dlsec: APGD-CE (100 iterations), then APGD-T (9 targets x 100 iterations), then Square "
        "(Linf, a total budget of 20,000 queries), each on the "
        "points still robust. torchattacks' `AutoAttack(version='standard')` runs APGD-CE, "
        "APGD-T, FAB-T and Square, but with torchattacks' default of 10 APGD steps (not "
        "AutoAttack's 100), so it is a weaker, cheaper ensemble than the reference one.",
        "",
    ]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="digits only, one repeat")
    parser.add_argument("--one", nargs=2, metavar=("TARGET", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(*args.one)
        return 0
    targets = ["digits-simplenet"] if args.quick else ["digits-simplenet", "fashion-mnist-smallcnn"]
    lines = [
        "## White-box evasion: PGD against torchattacks, ART and Foolbox",
        "",
        f"Command: `python benchmarks/evasion.py{' --quick' if args.quick else ''}` "
        f"({THREADS} threads, {platform.machine()}, torch {torch.__version__}, "
        f"measured {time.strftime('%Y-%m-%d')}). Robust accuracy is on the same points; "
        "dlsec's fixed-step run keeps each point's best iterate, the peers their last.",
        "",
    ]
    for name in targets:
        repeat = 1 if args.quick or name.startswith("fashion") else 3
        rows, clean, eps, sweep, n = bench(name, repeat=repeat)
        lines += table(name, rows, clean, eps, sweep, n)
    lines += bench_ensemble([0.1] if args.quick else [0.1, 0.2])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
