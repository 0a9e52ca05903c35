"""Tried, not adopted (README): other prior strengths, pruned validation accuracy.

Run after make figures: python bench/tried/prior_strength.py
"""

import statistics
import sys
import time
from pathlib import Path

from dplib.attach import attach_gates
from dplib.experiments import compare
from dplib.gates import DirichletGate
from dplib.importance import Importance
from dplib.surgery import prune
from dplib.train import evaluate
from dplib.vi import learn_importance

ROOT = Path("runs/cpu/compare")
OUT = Path("runs/cpu/tried-prior-strength")
OUT.mkdir(exist_ok=True)
original_kl = DirichletGate.kl


def per_unit_kl(self, alpha0):
    return original_kl(self, alpha0) / self.num_units


VARIANTS = {
    "perunit": dict(kl_weight=0.01),
    "beta0.001": dict(kl_weight=0.001),
    "beta0": dict(kl_weight=0.0),
    "perunit_b0.1": dict(kl_weight=0.1),
}
chosen = sys.argv[1:] or list(VARIANTS)
res = {}
for name in [
    "fashion_mnist-lenet5",
    "fashion_mnist-lenet300",
    "mnist5k-lenet5",
    "mnist5k-lenet300",
]:
    setup = compare.SETUPS[name]
    for seed in [0, 1, 2]:
        ctx = compare.prepare_seed(setup, ROOT, seed, log=lambda *_: None)
        imps = {"default": compare.compute_importance(ctx, "dirichlet")}
        for v in chosen:
            path = OUT / f"{name}-{seed}-{v}.pt"
            if path.exists():
                imps[v] = Importance.load(path)
                continue
            DirichletGate.kl = per_unit_kl if v.startswith("perunit") else original_kl
            gated = attach_gates(ctx.model)
            t = time.perf_counter()
            imps[v] = learn_importance(
                gated,
                ctx.loaders.train,
                epochs=setup.importance_epochs,
                seed=seed,
                show_progress=False,
                **VARIANTS[v],
            )
            gated.remove()
            DirichletGate.kl = original_kl
            imps[v].save(path)
        for budget in ["4x", "10x", "20x"]:
            for alloc in ["own", "same"]:
                for v, imp in imps.items():
                    w = compare.widths_for(ctx, imp, budget, alloc)
                    acc = evaluate(prune(ctx.model, imp, w), ctx.loaders.val)["accuracy"]
                    res.setdefault((name, budget, alloc, v), []).append(acc)
                    if alloc == "own" and seed == 0:
                        print(
                            name,
                            seed,
                            budget,
                            v,
                            "-".join(map(str, w.values())),
                            f"{100 * acc:.1f}",
                            flush=True,
                        )
variants = ["default", *chosen]
for key in sorted({k[:3] for k in res}):
    print(*key, " ".join(f"{v}={100 * statistics.mean(res[(*key, v)]):.1f}" for v in variants))
