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

The knobs and their defaults are :class:`dplib.DirichletSettings` (``dplib/settings.py``). The
defaults are not the ELBO proper (:math:`\beta = 1`, :math:`\alpha_0 = 1`, KL divided by N) but
what the kit's study measured best: a sparse prior :math:`\alpha_0 = 0.1` whose KL is *not*
divided by N, weighted by :math:`\beta = 0.01`, so that the prior competes with the data term
and the units compete for the posterior mass; ``DirichletSettings.as_specified()`` is the
method as specified (the method page ``notebooks/METHOD.md``, sections 3 and 7).

- ``estimator="sample"``: :math:`s^{(m)} \sim q` by reparameterised sampling. The M copies of the
  mini-batch are stacked on the batch axis, copy m gated by sample m, and the cross-entropy of
  every image under every sample is averaged (the logits are never averaged).
- ``estimator="point"``: :math:`s` is the posterior mean :math:`\varphi / \varphi_0`; only the KL
  term sees the distribution.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from . import distributed
from .attach import GatedModel
from .checks import check_data
from .data import reseed
from .importance import Importance
from .progress import progress
from .settings import ESTIMATORS, DirichletSettings
from .train import autocast_dtype, copy_state, resolve_device, set_seed

__all__ = ["ESTIMATORS", "elbo_loss", "learn_importance", "phi_init_of"]


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
    epochs: float | None = None,
    *,
    settings: DirichletSettings | None = None,
    device: str | torch.device = "auto",
    seed: int = 0,
    dataset_size: int | None = None,
    snapshots: int = 40,
    amp: bool | str = False,
    channels_last: bool = False,
    show_progress: bool = True,
    **knobs: Any,
) -> Importance:
    """Learn each gate's Dirichlet posterior by maximising the ELBO with the weights frozen.

    Args:
        gated: the network from :func:`dplib.attach_gates`.
        loader: training data (labels needed); its data set size is N unless ``dataset_size``.
            Under ``torchrun`` it is sharded over the processes and the gate gradients are
            averaged (:mod:`dplib.distributed`): the result equals a single process's.
        epochs: passes over ``loader`` (fractions allowed; the paper: one); overrides
            ``settings.epochs``.
        settings: the knobs (:class:`dplib.DirichletSettings`; default: the kit's defaults).
            When given, its gate knobs must be those ``gated`` was attached with.
        knobs: single knobs of :class:`dplib.DirichletSettings` that override ``settings``
            (``alpha0``, ``kl_weight``, ``samples``, ``lr``, ``batchnorm``, ``weights_lr``, ...;
            BatchNorm's running statistics are restored in every mode).
        seed: seeds the samples (and anything else drawn from torch's global generator).
        snapshots: how many times the posterior means are recorded (how fast ranking settles).
        amp, channels_last: autocast and the channels-last format, as for :func:`dplib.fit`.

    Returns:
        An :class:`~dplib.Importance` (criterion ``"dirichlet"``) keyed by the layers' module
        names in the original model, with ``history`` holding the per-step ``loss``,
        ``cross_entropy`` and ``kl``, the ``snapshots`` of the means with their ``steps``, and
        ``seconds``. The weights' ``requires_grad``, every module's train/eval mode and the gates'
        modes are restored; the gates end in ``"mean"`` mode holding the learned posterior.
    """
    settings = _settings_for(gated, settings, epochs, knobs)
    check_data(gated, loader, "learn_importance")
    device = resolve_device(device)
    dataset_size = dataset_size or len(loader.dataset)
    loader = distributed.shard(loader, seed)
    total_steps = max(1, math.ceil(settings.epochs * len(loader)))
    set_seed(seed)
    with _learning_mode(gated, settings, device, channels_last):
        history = _optimise(
            gated,
            loader,
            settings,
            device=device,
            precision=(autocast_dtype(device, amp), channels_last),
            seed=seed,
            total_steps=total_steps,
            kl_normalizer=dataset_size if settings.kl_divided_by_n else 1,
            snapshot_every=max(1, total_steps // max(1, snapshots)),
            show_progress=show_progress,
        )
    history["epochs"] = total_steps / len(loader)
    return _importance_of(gated, settings, history, seed=seed, dataset_size=dataset_size)


def _settings_for(
    gated: GatedModel,
    settings: DirichletSettings | None,
    epochs: float | None,
    knobs: dict[str, Any],
) -> DirichletSettings:
    """The settings of this run, checked against the gates (before any work starts)."""
    if not isinstance(gated, GatedModel):
        raise TypeError("learn_importance needs the model returned by dplib.attach_gates(model)")
    gate_knobs = {"phi_init", "scale", "position"} & set(knobs)
    if gate_knobs:
        raise ValueError(
            f"{sorted(gate_knobs)} are knobs of the gates: give them to dplib.attach_gates"
        )
    chosen = settings or DirichletSettings()
    if epochs is not None:
        knobs = {**knobs, "epochs": epochs}
    chosen = chosen.replace(**{k: v for k, v in knobs.items() if v is not None})
    gate = next(gate for _, gate in gated.named_gates())
    attached = {"phi_init": gate.phi_init, "scale": gate.scale, "position": gated.position}
    wanted = {knob: getattr(chosen, knob) for knob in attached}
    if settings is not None and attached != wanted:
        raise ValueError(
            f"the gates were attached with {attached} but the settings say {wanted}: attach "
            "them with dplib.attach_gates(model, settings=settings)"
        )
    return chosen.replace(**attached)


@contextmanager
def _learning_mode(
    gated: GatedModel, settings: DirichletSettings, device: torch.device, channels_last: bool
) -> Iterator[None]:
    """Freeze the weights (or not, for joint training), eval mode, gates trainable; restore
    the weights' flags, every module's mode, BatchNorm statistics and the device afterwards."""
    weights = _weights(gated)
    thetas = [gate.theta for _, gate in gated.named_gates()]
    saved_requires_grad = [p.requires_grad for p in weights]
    saved_modes = {module: module.training for module in gated.modules()}
    norms = [m for m in gated.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved_statistics = [copy_state(norm) for norm in norms]
    original_device = thetas[0].device
    try:
        for parameter in weights:
            parameter.requires_grad_(settings.weights_lr > 0)
        gated.to(device).eval()
        if channels_last:
            gated.to(memory_format=torch.channels_last)
        if settings.batchnorm == "train":
            for norm in norms:
                norm.train()
        for theta in thetas:
            theta.requires_grad_(True)
        yield
    finally:
        for parameter, requires_grad in zip(weights, saved_requires_grad):
            parameter.requires_grad_(requires_grad)
        for module, training in saved_modes.items():
            module.train(training)
        for norm, statistics in zip(norms, saved_statistics):
            norm.load_state_dict(statistics)
        if settings.weights_lr > 0:
            gated.zero_grad(set_to_none=True)
        gated.to(original_device)
        if channels_last:
            gated.to(memory_format=torch.contiguous_format)
        gated.set_mode("mean")


def _weights(gated: GatedModel) -> list[nn.Parameter]:
    return [p for name, p in gated.named_parameters() if not name.startswith("gates.")]


def _optimise(
    gated: GatedModel,
    loader: DataLoader,
    settings: DirichletSettings,
    *,
    device: torch.device,
    precision: tuple[torch.dtype | None, bool],
    seed: int,
    total_steps: int,
    kl_normalizer: int,
    snapshot_every: int,
    show_progress: bool,
) -> dict[str, Any]:
    """Adam on the gates (and SGD on the weights when joint) for ``total_steps`` mini-batches."""
    thetas = [gate.theta for _, gate in gated.named_gates()]
    weights = _weights(gated)
    optimizer = torch.optim.Adam(thetas, lr=settings.lr)
    weight_optimizer = None
    if settings.weights_lr > 0:
        weight_optimizer = torch.optim.SGD(weights, lr=settings.weights_lr, momentum=0.9)
    history: dict[str, Any] = {k: [] for k in ("loss", "cross_entropy", "kl", "steps")}
    history["snapshots"] = []
    step, epoch, started = 0, 0, time.perf_counter()
    bar = progress(
        total=total_steps, desc="importance", enabled=show_progress and distributed.is_main()
    )
    while step < total_steps:
        # Epoch e is shuffled with seed + e, on one process or many (DistributedSampler).
        reseed(loader, seed + epoch)
        distributed.set_epoch(loader, epoch)
        epoch += 1
        for images, labels in loader:
            if step >= total_steps:
                break
            loss, cross_entropy, kl = _batch_loss(
                gated, images, labels, settings, device, precision, kl_normalizer
            )
            _update(loss, (optimizer, thetas), (weight_optimizer, weights))
            step += 1
            _record(
                history,
                gated,
                step,
                (loss, cross_entropy, kl),
                snapshot=step % snapshot_every == 0 or step == total_steps,
            )
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(ce=f"{cross_entropy.item():.3f}")
    bar.close()
    history["seconds"] = time.perf_counter() - started
    return history


def _batch_loss(
    gated: GatedModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: DirichletSettings,
    device: torch.device,
    precision: tuple[torch.dtype | None, bool],
    kl_normalizer: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`elbo_loss` of one mini-batch on ``device``, in the run's precision and format."""
    autocast, channels_last = precision
    images = images.to(device)
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
        return elbo_loss(
            gated,
            images,
            labels.to(device),
            samples=settings.samples,
            estimator=settings.estimator,
            alpha0=settings.alpha0,
            kl_weight=settings.kl_weight,
            dataset_size=kl_normalizer,
        )


def _update(
    loss: torch.Tensor,
    gates: tuple[torch.optim.Optimizer, list[nn.Parameter]],
    weights: tuple[torch.optim.Optimizer | None, list[nn.Parameter]],
) -> None:
    """One step: gradients averaged over the processes, then Adam on the gates (and SGD on
    the weights when they are trained jointly)."""
    (optimizer, thetas), (weight_optimizer, weight_list) = gates, weights
    optimizer.zero_grad(set_to_none=True)
    if weight_optimizer is not None:
        weight_optimizer.zero_grad(set_to_none=True)
    loss.backward()
    distributed.average_gradients(thetas)
    optimizer.step()
    if weight_optimizer is not None:
        distributed.average_gradients(weight_list)
        weight_optimizer.step()


def _record(
    history: dict[str, Any],
    gated: GatedModel,
    step: int,
    terms: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    snapshot: bool,
) -> None:
    """Append one step's loss terms; every ``snapshot`` step, the posterior means too."""
    for key, value in zip(("loss", "cross_entropy", "kl"), terms):
        history[key].append(value.item())
    if snapshot:
        history["steps"].append(step)
        history["snapshots"].append(
            {name: gate.mean().detach().cpu() for name, gate in gated.named_gates()}
        )


def _importance_of(
    gated: GatedModel,
    settings: DirichletSettings,
    history: dict[str, Any],
    *,
    seed: int,
    dataset_size: int,
) -> Importance:
    """The learned posteriors as an :class:`Importance`, with the run's settings."""
    return Importance(
        scores={name: gate.mean().detach().cpu() for name, gate in gated.named_gates()},
        criterion="dirichlet",
        concentration={
            name: gate.concentration().detach().cpu() for name, gate in gated.named_gates()
        },
        history=history,
        config={
            **settings.to_dict(),
            "seed": seed,
            "dataset_size": dataset_size,
        },
    )
