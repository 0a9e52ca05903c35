"""Tried, not adopted (README): fold the posterior scale into the pruned network.

Run after make figures: python bench/tried/fold_posterior_scale.py
"""

import copy
import statistics
from pathlib import Path

import torch

from dplib.experiments import compare
from dplib.graph import find_prunable_layers
from dplib.surgery import prune
from dplib.train import evaluate

ROOT = Path("runs/cpu/compare")


def folded(model, imp, widths, renorm):
    m = copy.deepcopy(model)
    mods = dict(m.named_modules())
    for layer in find_prunable_layers(m).layers:
        mean = imp.mean(layer.name).double()
        K = mean.numel()
        scale = K * mean
        if renorm:
            kept = mean.argsort(descending=True)[: widths[layer.name]]
            scale = scale / mean[kept].sum()
        for t in layer.gate_targets("after_bn"):
            mod = mods[t]
            shape = (-1,) + (1,) * (mod.weight.dim() - 1)
            with torch.no_grad():
                mod.weight.mul_(scale.view(shape).to(mod.weight.dtype))
                if mod.bias is not None:
                    mod.bias.mul_(scale.to(mod.bias.dtype))
    return prune(m, imp, widths)


res = {}
for name in [
    "fashion_mnist-lenet5",
    "fashion_mnist-lenet300",
    "mnist5k-lenet5",
    "mnist5k-lenet300",
]:
    for seed in [0, 1, 2]:
        ctx = compare.prepare_seed(compare.SETUPS[name], ROOT, seed, log=lambda *_: None)
        d = compare.compute_importance(ctx, "dirichlet")
        for budget in ["4x", "10x", "20x"]:
            for alloc in ["same", "own"]:
                w = compare.widths_for(ctx, d, budget, alloc)
                for variant in ["plain", "fold", "renorm"]:
                    net = (
                        prune(ctx.model, d, w)
                        if variant == "plain"
                        else folded(ctx.model, d, w, variant == "renorm")
                    )
                    res.setdefault((name, budget, alloc, variant), []).append(
                        evaluate(net, ctx.loaders.val)["accuracy"]
                    )
for key in sorted({k[:3] for k in res}):
    print(
        *key,
        " ".join(
            f"{v}={100 * statistics.mean(res[(*key, v)]):.1f}" for v in ["plain", "fold", "renorm"]
        ),
    )
