r"""Learning the Dirichlet posteriors: the ELBO with the network's weights frozen.

For a data set of :math:`N` examples, a mini-batch :math:`(x_B, y_B)`, :math:`M` samples and
gates on layers :math:`l = 1..L`, each step minimises

.. math::

    \mathcal{L}(\theta) = \frac{1}{M} \sum_{m=1}^{M}
        \mathrm{CE}\big(f(x_B;\, W,\, K \odot s^{(m)}),\, y_B\big)
      + \beta\, \frac{1}{N} \sum_l
        \mathrm{KL}\big(\mathrm{Dir}(\varphi_l)\,\|\,\mathrm{Dir}(\alpha_0)\big)

over the gate parameters :math:`\theta` only, with Adam. :math:`W` are the frozen weights (no
gradient, no weight decay), the network is in eval mode (BatchNorm uses its running statistics,
dropout is off). Code symbols: ``samples`` = M, ``kl_weight`` = :math:`\beta`, ``alpha0`` =
:math:`\alpha_0`, ``dataset_size`` = N.

The defaults are not the ELBO proper (:math:`\beta = 1`, :math:`\alpha_0 = 1`, KL divided by N)
but what the kit's study measured best (``notebooks/05_study``, ``figures/study/``): a sparse
prior :math:`\alpha_0 = 0.1` whose KL is *not* divided by N, weighted by :math:`\beta = 0.01`,
so that the prior competes with the data term and the units compete for the posterior mass;
with gates created at :math:`\varphi_{\text{init}} = 100` by :func:`dplib.attach_gates`.
``kl_divided_by_n=True, kl_weight=1, alpha0=1`` with ``phi_init=1`` is the method as specified.

- ``estimator="sample"``: :math:`s^{(m)} \sim q` by reparameterised sampling. The M copies of the
  mini-batch are stacked on the batch axis, copy m gated by sample m, and the cross-entropy of
  every image under every sample is averaged (the logits are never averaged).
- ``estimator="point"``: :math:`s` is the posterior mean :math:`\varphi / \varphi_0`; only the KL
  term sees the distribution.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from .attach import GatedModel
from .data import reseed
from .importance import Importance
from .progress import progress
from .train import resolve_device, set_seed

ESTIMATORS = ("sample", "point")


def elbo_loss(
    gated: GatedModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    samples: int,
    estimator: str,
    alpha0: float,
    kl_weight: float,
    dataset_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One mini-batch of the negative ELBO: (loss, cross-entropy, summed KL)."""
    if estimator == "sample":
        for _, gate in gated.named_gates():
            gate.resample(samples)
        stacked = images.repeat(samples, *([1] * (images.dim() - 1)))
        targets = labels.repeat(samples)
    else:
        gated.set_mode("mean")
        stacked, targets = images, labels
    cross_entropy = F.cross_entropy(gated(stacked), targets)
    kl = torch.stack([gate.kl(alpha0) for _, gate in gated.named_gates()]).sum()
    return cross_entropy + kl_weight * kl / dataset_size, cross_entropy, kl


def phi_init_of(gated: GatedModel) -> float | None:
    """The initial concentration the gates were created with (None if unknown)."""
    return next(gate.phi_init for _, gate in gated.named_gates())


def learn_importance(
    gated: GatedModel,
    loader: DataLoader,
    epochs: float = 1.0,
    *,
    alpha0: float = 0.1,
    kl_weight: float = 0.01,
    kl_divided_by_n: bool = False,
    samples: int = 1,
    estimator: str = "sample",
    lr: float = 0.1,
    device: str | torch.device = "auto",
    seed: int = 0,
    dataset_size: int | None = None,
    snapshots: int = 40,
    batchnorm: str = "eval",
    weights_lr: float = 0.0,
    show_progress: bool = True,
) -> Importance:
    """Learn each gate's Dirichlet posterior by maximising the ELBO with the weights frozen.

    Args:
        gated: the network from :func:`dplib.attach_gates`.
        loader: training data (labels needed); its data set size is N unless ``dataset_size``.
            Under ``torchrun`` it is sharded over the processes and the gate gradients are
            averaged (:mod:`dplib.distributed`): the result equals a single process's.
        epochs: passes over ``loader`` (fractions allowed; the paper: one).
        alpha0: concentration of the symmetric Dirichlet prior (< 1 favours sparse importance).
            Default 0.1: the study's choice (figures/study/study_factors.png).
        kl_weight: beta, the weight of the KL term (0 = no prior). Default 0.01 (the study's).
        kl_divided_by_n: divide the KL by N as the ELBO of one mini-batch does (True, the method
            as specified) or not (False, the default: the prior then matters; the study found
            it the largest single improvement).
        samples: M, samples per mini-batch (sample estimator).
        estimator: ``"sample"`` (reparameterised samples) or ``"point"`` (posterior mean).
        lr: Adam's learning rate on theta.
        seed: seeds the samples (and anything else drawn from torch's global generator).
        snapshots: how many times the posterior means are recorded during learning (to see how
            fast the ranking settles).
        batchnorm: ``"eval"`` (the method: running statistics) or ``"train"`` (batch statistics,
            as the reference code; a gate placed before such a BatchNorm is then cancelled by
            the normalisation). The running statistics are restored afterwards either way.
        weights_lr: 0 freezes the weights (the method). A positive value trains the weights
            jointly with the gates by SGD at that learning rate: the weights then change.

    Returns:
        An :class:`~dplib.Importance` (criterion ``"dirichlet"``) keyed by the layers' module
        names in the original model, with ``history`` holding the per-step ``loss``,
        ``cross_entropy`` and ``kl``, the ``snapshots`` of the means with their ``steps``, and
        ``seconds``. The weights' ``requires_grad``, every module's train/eval mode and the gates'
        modes are restored; the gates end in ``"mean"`` mode holding the learned posterior.
    """
    if not isinstance(gated, GatedModel):
        raise TypeError("learn_importance needs the model returned by dplib.attach_gates(model)")
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")
    if samples < 1 or int(samples) != samples:
        raise ValueError(f"samples must be a whole number >= 1, got {samples}")
    if epochs <= 0:
        raise ValueError(f"epochs must be positive, got {epochs}")
    if alpha0 <= 0:
        raise ValueError(f"alpha0 must be positive, got {alpha0}")
    if len(loader) == 0:
        raise ValueError("the loader is empty")
    if batchnorm not in ("eval", "train"):
        raise ValueError(f"batchnorm must be 'eval' or 'train', got {batchnorm!r}")
    if weights_lr < 0:
        raise ValueError(f"weights_lr must be >= 0, got {weights_lr}")
    from . import distributed

    device = resolve_device(device)
    dataset_size = dataset_size or len(loader.dataset)
    kl_normalizer = dataset_size if kl_divided_by_n else 1
    loader = distributed.shard(loader, seed)
    total_steps = max(1, math.ceil(epochs * len(loader)))
    snapshot_every = max(1, total_steps // max(1, snapshots))

    weights = [p for name, p in gated.named_parameters() if not name.startswith("gates.")]
    thetas = [gate.theta for _, gate in gated.named_gates()]
    saved_requires_grad = [p.requires_grad for p in weights]
    saved_modes = {module: module.training for module in gated.modules()}
    norms = [m for m in gated.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved_statistics = [{k: v.clone() for k, v in m.state_dict().items()} for m in norms]
    original_device = thetas[0].device
    set_seed(seed)
    history: dict[str, Any] = {
        "loss": [],
        "cross_entropy": [],
        "kl": [],
        "steps": [],
        "snapshots": [],
    }
    try:
        for parameter in weights:
            parameter.requires_grad_(weights_lr > 0)
        gated.to(device).eval()
        if batchnorm == "train":
            for norm in norms:
                norm.train()
        for theta in thetas:
            theta.requires_grad_(True)
        optimizer = torch.optim.Adam(thetas, lr=lr)
        weight_optimizer = (
            torch.optim.SGD(weights, lr=weights_lr, momentum=0.9) if weights_lr > 0 else None
        )
        step, started = 0, time.perf_counter()
        main = distributed.is_main()
        bar = progress(total=total_steps, desc="importance", enabled=show_progress and main)
        epoch = 0
        while step < total_steps:
            # Epoch e is shuffled with seed + e, on one process or many (DistributedSampler).
            reseed(loader, seed + epoch)
            distributed.set_epoch(loader, epoch)
            epoch += 1
            for images, labels in loader:
                if step >= total_steps:
                    break
                loss, cross_entropy, kl = elbo_loss(
                    gated,
                    images.to(device),
                    labels.to(device),
                    samples=samples,
                    estimator=estimator,
                    alpha0=alpha0,
                    kl_weight=kl_weight,
                    dataset_size=kl_normalizer,
                )
                optimizer.zero_grad(set_to_none=True)
                if weight_optimizer is not None:
                    weight_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                distributed.average_gradients(thetas)
                optimizer.step()
                if weight_optimizer is not None:
                    distributed.average_gradients(weights)
                    weight_optimizer.step()
                history["loss"].append(loss.item())
                history["cross_entropy"].append(cross_entropy.item())
                history["kl"].append(kl.item())
                step += 1
                if step % snapshot_every == 0 or step == total_steps:
                    history["steps"].append(step)
                    history["snapshots"].append(
                        {name: gate.mean().detach().cpu() for name, gate in gated.named_gates()}
                    )
                bar.update(1)
                if step % 20 == 0:
                    bar.set_postfix(ce=f"{cross_entropy.item():.3f}")
        bar.close()
        history["seconds"] = time.perf_counter() - started
    finally:
        for parameter, requires_grad in zip(weights, saved_requires_grad):
            parameter.requires_grad_(requires_grad)
        for module, training in saved_modes.items():
            module.train(training)
        for norm, statistics in zip(norms, saved_statistics):
            norm.load_state_dict(statistics)
        if weights_lr > 0:
            gated.zero_grad(set_to_none=True)
        gated.to(original_device)
        gated.set_mode("mean")
    history["epochs"] = total_steps / len(loader)
    return Importance(
        scores={name: gate.mean().detach().cpu() for name, gate in gated.named_gates()},
        criterion="dirichlet",
        concentration={
            name: gate.concentration().detach().cpu() for name, gate in gated.named_gates()
        },
        history=history,
        config={
            "epochs": epochs,
            "alpha0": alpha0,
            "kl_weight": kl_weight,
            "samples": samples,
            "estimator": estimator,
            "lr": lr,
            "seed": seed,
            "dataset_size": dataset_size,
            "kl_divided_by_n": kl_divided_by_n,
            "scale": next(gate.scale for _, gate in gated.named_gates()),
            "position": gated.position,
            "phi_init": phi_init_of(gated),
            "batchnorm": batchnorm,
            "weights_lr": weights_lr,
        },
    )
