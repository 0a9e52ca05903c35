"""The networks people bring: torchvision's classification zoo pruned to 2x fewer MACs.

    python bench/zoo.py                       # the 25 networks below (random weights, 10 classes)
    python bench/zoo.py --networks mobilenet_v2 efficientnet_b0

Each network, at a small input (64x64; 224 for the ViT, 299 for Inception v3), is pruned four
ways: L1 scores and Dirichlet importance (one epoch of 16 random images), each allocated by
dplib.choose_widths to 2x fewer MACs and pruned by dplib.prune; the pruned output must equal the
unpruned network's with the removed units switched off by the gates. Beside it, Torch-Pruning's
MetaPruner (L2 magnitude, iterative steps until 2x fewer MACs) as its users call it. A network
dplib cannot prune is reported with the reason it gives. The table goes to figures/bench/zoo.md,
the rows to figures/bench/zoo.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
import torchvision

import dplib
from dplib.files import atomic_write_text, read_json, write_json

ROOT = Path(__file__).resolve().parent.parent
NETWORKS = (
    "resnet18 resnet34 resnet50 wide_resnet50_2 densenet121 vgg11_bn vgg16 alexnet squeezenet1_0 "
    "squeezenet1_1 googlenet inception_v3 efficientnet_v2_s mobilenet_v2 mobilenet_v3_small "
    "mobilenet_v3_large efficientnet_b0 efficientnet_b1 mnasnet0_5 regnet_x_400mf regnet_y_400mf "
    "resnext50_32x4d convnext_tiny vit_b_16 shufflenet_v2_x0_5"
).split()
SIZES = {"vit_b_16": 224, "inception_v3": 299}  # the others: 64x64


def build(name: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """The network with random weights (seed 0) and 10 classes, in eval mode, and its input."""
    torch.manual_seed(0)
    options = (
        {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
    )
    model = getattr(torchvision.models, name)(num_classes=10, **options).eval()
    as_trained(model)  # torchvision starts some scales at zero or 1e-6
    with torch.no_grad():
        for key, parameter in model.named_parameters():
            if key.endswith("layer_scale") or key == "heads.head.weight":
                parameter.normal_(1.0 if key.endswith("layer_scale") else 0.0, 0.1)
    return model, (1, 3, SIZES.get(name, 64), SIZES.get(name, 64))


def as_trained(model: torch.nn.Module) -> torch.nn.Module:
    """Give every BatchNorm of ``model`` statistics and an affine map as after training."""
    with torch.no_grad():
        for norm in model.modules():
            if isinstance(norm, torch.nn.modules.batchnorm._BatchNorm):
                norm.running_mean.uniform_(-0.5, 0.5), norm.running_var.uniform_(0.5, 2.0)
                norm.weight.uniform_(0.5, 1.5), norm.bias.uniform_(-0.2, 0.2)
    return model


def dplib_case(model: torch.nn.Module, shape: tuple[int, ...], criterion: str) -> dict[str, Any]:
    """Prune ``model`` to 2x fewer MACs by ``criterion`` (l1 or dirichlet); check the output."""
    if criterion == "dirichlet":
        images = torch.randn(16, *shape[1:], generator=torch.Generator().manual_seed(0))
        labels = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(1))
        dataset = torch.utils.data.TensorDataset(images, labels)
        gated = dplib.attach_gates(model)
        try:
            importance = dplib.learn_importance(
                gated, dplib.data.make_loader(dataset, 8, shuffle=True, seed=0), epochs=1
            )
        finally:
            gated.remove()
    else:
        importance = dplib.criteria.compute("l1", model)
    widths = dplib.choose_widths(model, importance, "2x", input_shape=shape)
    small = dplib.prune(model, importance, widths)
    images = torch.randn(2, *shape[1:], generator=torch.Generator().manual_seed(2))
    gated = dplib.attach_gates(model)
    masks = dplib.unit_mask(importance, widths, model)
    for name, gate in gated.named_gates():
        gate.set_mode("fixed", masks[name])
    with torch.no_grad():
        expected, output = gated(images), small(images)
    gated.remove()
    error = float((output - expected).abs().max() / expected.abs().max().clamp_min(1e-30))
    ratio = dplib.count(model, shape).macs / dplib.count(small, shape).macs
    return {"ratio": ratio, "relative_error": error, "layers": len(widths)}


def torch_pruning_case(model: torch.nn.Module, shape: tuple[int, ...]) -> dict[str, Any]:
    """Torch-Pruning's MetaPruner (L2 magnitude, 100 steps) until 2x fewer MACs, its output
    layers (10 outputs) ignored as its benchmark does."""
    from dplib.torch_pruning import require_torch_pruning

    tp = require_torch_pruning()
    example = torch.zeros(shape)
    classifier = [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.Linear)
        and m.out_features == 10
        or isinstance(m, torch.nn.Conv2d)
        and m.out_channels == 10
    ]
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=1.0,
        iterative_steps=100,
        ignored_layers=classifier,
    )
    full = dplib.count(model, shape).macs
    while dplib.count(model, shape).macs > full / 2 and pruner.current_step < 100:
        pruner.step()
    with torch.no_grad():
        classes = model(example).shape[-1]
    if classes != 10:
        raise ValueError(f"the pruned network gives {classes} outputs instead of 10")
    return {"ratio": full / dplib.count(model, shape).macs}


def run(name: str) -> dict[str, Any]:
    """One network's row: each way's result or the error it stopped with."""
    row: dict[str, Any] = {"network": name}
    for way in ("l1", "dirichlet", "torch_pruning"):
        model, shape = build(name)
        started = time.perf_counter()
        try:
            found = (
                torch_pruning_case(model, shape)
                if way == "torch_pruning"
                else dplib_case(model, shape, way)
            )
            row[way] = found | {"seconds": time.perf_counter() - started}
        except Exception as error:  # the table reports why a way fails, whatever the error
            row[way] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
    return row


def cell(result: dict[str, Any], failed: str = "refused") -> str:
    """``2.00x, output error 3e-07``, or why it stopped."""
    if "error" in result:
        return f"{failed}: {result['error']}"
    error = f", output error {result['relative_error']:.0e}" if "relative_error" in result else ""
    return f"{result['ratio']:.2f}x{error}"


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table: one network a line, each way's MAC ratio or its error."""
    lines = [
        "# torchvision's classification networks pruned to 2x fewer MACs",
        "",
        "Random weights, 10 classes, `python bench/zoo.py`. Each cell: the MAC ratio reached and "
        "the pruned output's largest difference from the gated network with the removed units "
        "switched off (relative to its largest output), or why it was refused.",
        "",
        "| network | L1 | Dirichlet | Torch-Pruning |",
        "|---|---|---|---|",
    ]
    for row in rows:
        cells = [cell(row["l1"]), cell(row["dirichlet"]), cell(row["torch_pruning"], "failed")]
        lines.append(
            f"| {row['network']} | " + " | ".join(c.replace("|", "/") for c in cells) + " |"
        )
    ways = ("l1", "dirichlet", "torch_pruning")
    pruned = [sum("error" not in row[way] for row in rows) for way in ways]
    lines += [
        "",
        f"Pruned to 2x fewer MACs, of {len(rows)}: L1 {pruned[0]}, Dirichlet "
        f"{pruned[1]}, Torch-Pruning {pruned[2]}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    parser.add_argument("--out", type=Path, default=ROOT / "figures" / "bench")
    args = parser.parse_args()
    rows, path = [], args.out / "zoo.json"
    kept = {row["network"]: row for row in read_json(path)["rows"]} if path.exists() else {}
    for name in args.networks:
        rows.append(run(name))
        kept[name] = rows[-1]
        print(
            f"{name}: "
            + "; ".join(cell(rows[-1][w]) for w in ("l1", "dirichlet", "torch_pruning")),
            flush=True,
        )
    rows = [kept[name] for name in NETWORKS if name in kept]  # the networks run before stay
    write_json(path, {"rows": rows})
    atomic_write_text(args.out / "zoo.md", markdown(rows))


if __name__ == "__main__":
    main()
