r"""The synthetic check of the method (figure 2): recover a known importance vector.

A small MLP :math:`x \mapsto W_2\, \mathrm{relu}((K s^*) \odot (W_1 x + b_1)) + b_2` with :math:`K`
hidden units labels random inputs; its hidden units are scaled by a known :math:`s^* \sim
\mathrm{Dir}(0.01\, \mathbf{1}_K)` (sparse: a few units carry almost all the mass). The same
network with the same weights, its hidden layer gated by a Dirichlet gate (scale ``K``, so the
start is the uniform :math:`s = 1/K`), then learns :math:`q(s)` by the ELBO. If the method works
the posterior mean lands on :math:`s^*`, with a small standard deviation where the data pin it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.distributions import Dirichlet

from .. import progress
from ..attach import attach_gates
from ..data import make_loader
from ..files import atomic_torch_save, read_json
from ..importance import Importance
from ..measure import spearman
from ..settings import DirichletSettings
from ..vi import learn_importance
from . import paths
from .cache import cached, code_version, config_hash

# the method modules the check runs: a changed statement in them reruns it
SYNTHETIC_CODE = ("data", "loop", "settings", "gates", "attach", "vi", "importance")


class SyntheticMLP(nn.Module):
    """inputs -> hidden (ReLU) -> classes; the hidden layer is the one gated."""

    def __init__(self, inputs: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(inputs, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def make_task(
    hidden: int,
    *,
    inputs: int = 10,
    classes: int = 4,
    size: int = 5000,
    alpha_star: float = 0.01,
    seed: int = 0,
) -> tuple[SyntheticMLP, torch.Tensor, torch.utils.data.TensorDataset]:
    """The teacher, its true importance s* ~ Dir(alpha_star) and ``size`` inputs labelled by
    draws from its softmax (the likelihood is well specified: the ELBO should recover s*)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = SyntheticMLP(inputs, hidden, classes)
    s_star = Dirichlet(torch.full((hidden,), alpha_star)).sample()
    s_star = s_star.clamp_min(1e-12) / s_star.clamp_min(1e-12).sum()
    x = torch.randn(size, inputs, generator=generator)
    with torch.no_grad():
        logits = net.fc2(torch.relu(hidden * s_star * net.fc1(x)))
        labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=generator).flatten()
    return net, s_star, torch.utils.data.TensorDataset(x, labels)


def recover(
    hidden: int,
    estimator: str = "sample",
    *,
    steps: int = 1500,
    batch_size: int = 256,
    lr: float = 0.1,
    alpha0: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Learn q(s) on the synthetic task of ``hidden`` units: its :func:`summary`."""
    net, s_star, dataset = make_task(hidden, seed=seed)
    loader = make_loader(dataset, batch_size, shuffle=True, seed=seed)
    # the ELBO proper (phi_init 1, beta 1, KL/N): the check tests the method's mathematics
    settings = DirichletSettings.as_specified().replace(
        epochs=steps / len(loader), estimator=estimator, lr=lr, alpha0=alpha0
    )
    gated = attach_gates(net, settings=settings)
    with progress.hidden():
        learned = learn_importance(gated, loader, settings, device="cpu", seed=seed)
    gated.remove()
    return summary(hidden, estimator, s_star, learned, steps, seed)


def summary(
    hidden: int, estimator: str, s_star: torch.Tensor, learned: Importance, steps: int, seed: int
) -> dict[str, Any]:
    """One run of the check as stored: its settings, s*, the posterior and how close it is."""
    mean, std = learned.mean("fc1"), learned.std("fc1")
    return {
        "hidden": hidden,
        "estimator": estimator,
        "steps": steps,
        "seed": seed,
        "s_star": s_star,
        "mean": mean,
        "std": std,
        "loss": torch.tensor(learned.history["loss"]),
        "spearman": spearman(mean, s_star),
        "pearson": float(torch.corrcoef(torch.stack([mean, s_star]))[0, 1]),
        "l1_error": float((mean - s_star).abs().sum()),
    }


def synthetic_check(
    profile: str,
    hidden_sizes: tuple[int, ...] = (20, 200, 500),
    estimators: tuple[str, ...] = ("sample", "point"),
    *,
    steps: int = 1500,
    seed: int = 0,
    done: Iterable[dict[str, Any]] = (),
    log=print,
) -> list[dict[str, Any]]:
    """Every (hidden size, estimator) of the check, cached in ``runs/<profile>/synthetic/`` and
    run again when :data:`SYNTHETIC_CODE` changes; ``done``: runs already made (each a
    :func:`summary` of the same steps and seed), stored as they are instead of run again."""
    ready = {(r["hidden"], r["estimator"]): r for r in done}
    for run in ready.values():
        if (run["steps"], run["seed"]) != (steps, seed):
            raise ValueError(
                f"a run given as done took {run['steps']} steps with seed {run['seed']}; the "
                f"check takes {steps} steps with seed {seed}"
            )
    results = []
    folder = paths.profile_dir(profile) / "synthetic"
    for hidden in hidden_sizes:
        for estimator in estimators:
            config = {"hidden": hidden, "estimator": estimator, "steps": steps, "seed": seed}
            config["code"] = code_version(*SYNTHETIC_CODE)

            def make() -> tuple[dict[str, Any], dict[str, Any]]:
                run = ready.get((hidden, estimator)) or recover(
                    hidden, estimator, steps=steps, seed=seed
                )
                return run, {"pearson": run["pearson"], "spearman": run["spearman"]}

            result = cached(
                folder / f"synthetic-{hidden}-{estimator}-{config_hash(config)}.pt",
                config,
                make,
                save=atomic_torch_save,
                load=lambda path, _: torch.load(path, map_location="cpu", weights_only=True),
                log=log,
            ).value
            log(
                f"[dplib] hidden {hidden:>4}, {estimator:>6} estimator: Pearson(E[s], s*) = "
                f"{result['pearson']:.3f}, Spearman {result['spearman']:.3f}, "
                f"sum |E[s] - s*| = {result['l1_error']:.3f}"
            )
            results.append(result)
    return results


def load_results(profile: str) -> list[dict[str, Any]]:
    """Every stored synthetic result of ``profile`` made by the current method code (for the
    figures notebook): results of older code stay on disk but are not drawn."""
    folder = paths.profile_dir(profile) / "synthetic"
    results, current = [], code_version(*SYNTHETIC_CODE)
    for path in sorted(folder.glob("synthetic-*.pt")):
        try:
            if read_json(path.with_suffix(".json"))["config"].get("code") != current:
                continue
            results.append(torch.load(path, map_location="cpu", weights_only=True))
        except Exception:  # a corrupt file is rebuilt by synthetic_check; skip it here
            continue
    return sorted(results, key=lambda r: (r["hidden"], r["estimator"]))
