"""Tried, not adopted (README): cross-layer rules for the Dirichlet allocation.

Run after make figures: python bench/tried/allocation_rules.py
"""

import statistics
import sys
from pathlib import Path

import torch

from dplib.budget import choose_widths
from dplib.experiments import compare
from dplib.importance import Importance
from dplib.surgery import prune
from dplib.train import evaluate

ROOT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/cpu/compare")


def rule_importance(d, rule):
    means = d.mean()
    if rule == "K":
        return d
    if rule.startswith("pow"):
        g = float(rule[3:])
        return Importance({n: m**g for n, m in means.items()}, criterion="x")
    if rule == "rank":
        return Importance(
            {n: (m.argsort().argsort().double() + 1) / m.numel() for n, m in means.items()},
            criterion="x",
        )
    if rule == "log":  # log-ratio to the layer's average: shifted to >= 0 by relative_scores
        return Importance({n: torch.log(m * m.numel()) for n, m in means.items()}, criterion="x")
    raise ValueError(rule)


RULES = ["K", "pow0.5", "pow0.25", "rank", "log"]
out = {}
for name in [
    "fashion_mnist-lenet5",
    "fashion_mnist-lenet300",
    "mnist5k-lenet5",
    "mnist5k-lenet300",
]:
    setup = compare.SETUPS[name]
    for seed in [0, 1, 2]:
        ctx = compare.prepare_seed(setup, ROOT, seed, log=lambda *_: None)
        d = compare.compute_importance(ctx, "dirichlet")
        for budget in ["4x", "10x", "20x"]:
            for rule in RULES:
                imp = rule_importance(d, rule)
                w = choose_widths(ctx.model, imp, target_macs=budget, input_shape=ctx.input_shape)
                acc = evaluate(prune(ctx.model, d, w), ctx.loaders.val)["accuracy"]
                out.setdefault((name, budget, rule), []).append(acc)
                print(
                    name,
                    seed,
                    budget,
                    rule,
                    "-".join(map(str, w.values())),
                    f"{100 * acc:.1f}",
                    flush=True,
                )
print("\nsummary (mean pruned val %):")
for name in [
    "fashion_mnist-lenet5",
    "fashion_mnist-lenet300",
    "mnist5k-lenet5",
    "mnist5k-lenet300",
]:
    for budget in ["4x", "10x", "20x"]:
        print(
            name,
            budget,
            " ".join(f"{r}={100 * statistics.mean(out[(name, budget, r)]):.1f}" for r in RULES),
        )
