r"""Learning the Dirichlet posteriors: the negative ELBO, with the network's weights frozen.

A frozen network :math:`f(x; W, K \odot s)` has its unit outputs multiplied by the importance
vectors :math:`s_l` of its layers, with prior :math:`p(s_l) = \mathrm{Dir}(\alpha_0
\mathbf{1}_{K_l})` and likelihood :math:`p(y \mid x, s) = \mathrm{softmax}(f(x; W, K \odot
s))_y`. Variational inference fits :math:`q(s_l) = \mathrm{Dir}(\varphi_l)` by maximising
:math:`\sum_{i=1}^N E_q[\ln p(y_i \mid x_i, s)] - \sum_l \mathrm{KL}(q(s_l) \,\|\, p(s_l))`;
divided by :math:`N` and estimated on a mini-batch :math:`(x_B, y_B)` with :math:`M` samples,
its negative is the loss each step minimises over the gates' parameters :math:`\theta` (Adam):

.. math::

    \mathcal{L}(\theta) = \underbrace{\frac{1}{M} \sum_{m=1}^{M}
        \mathrm{CE}\big(f(x_B;\, W,\, K \odot s^{(m)}),\, y_B\big)}_{\text{cross\_entropy}}
      + \beta\, \frac{1}{Z} \underbrace{\sum_l
        \mathrm{KL}\big(\mathrm{Dir}(\varphi_l)\,\|\,
        \mathrm{Dir}(\alpha_0 \mathbf{1}_{K_l})\big)}_{\text{kl}},
    \qquad s^{(m)} \sim q .

The method as specified has :math:`\beta = 1` and :math:`Z = N` (the negative ELBO proper, per
example); the kit's defaults, the authors' recipe, take :math:`\beta = 0` (the data term alone)
at the posterior mean, one layer's gate at a time (``layerwise``) with the other gates off
(``samples`` = M, ``kl_weight`` = :math:`\beta`, ``kl_normalizer`` = Z). The network is in eval
mode. With ``estimator="sample"`` copy m of the stacked mini-batch is gated by sample
:math:`s^{(m)}` and the cross-entropies are averaged
(never the logits); with ``"point"``, :math:`s` is the posterior mean and only the KL term sees
the distribution.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from .attach import GatedModel
from .checks import check_data
from .gates import stacked_copies
from .importance import Importance
from .loop import Loop, evaluating, set_seed
from .measure import kendall
from .settings import DirichletSettings, with_knobs
from .train import copy_state

SNAPSHOTS = 40  # how many times the posterior means are recorded (how fast the ranking settles)


def elbo_loss(
    gated: GatedModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: DirichletSettings,
    kl_normalizer: float,
    learning: list[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The negative ELBO of one mini-batch: (loss, cross_entropy, kl), as in the docstring.
    ``learning`` names the gates learnt (default: all); the others are left in their mode.
    With ``kl_weight`` 0 the KL is recorded but is not part of the loss (no prior at all)."""
    gates = [gate for name, gate in gated.named_gates() if learning is None or name in learning]
    if settings.estimator == "sample":
        for gate in gates:
            gate.resample(settings.samples)  # s^(m) ~ q, reparameterised
        stacked, targets = stacked_copies(images, labels, settings.samples)
    else:
        for gate in gates:
            gate.set_mode("mean")  # s = E_q[s]
        stacked, targets = images, labels
    cross_entropy = F.cross_entropy(gated(stacked), targets)  # mean over the M copies
    kl = torch.stack([gate.kl(settings.alpha0) for gate in gates]).sum()
    if settings.kl_weight == 0:
        return cross_entropy, cross_entropy, kl.detach()
    return cross_entropy + settings.kl_weight * kl / kl_normalizer, cross_entropy, kl


def learn_importance(
    gated: GatedModel,
    loader: DataLoader,
    settings: DirichletSettings | None = None,
    *,
    device: str | torch.device = "auto",
    seed: int = 0,
    **knobs: Any,
) -> Importance:
    """Learn each gate's Dirichlet posterior by minimising the negative ELBO, weights frozen.

    Args:
        gated: the network from :func:`dplib.attach_gates` (whose gate knobs it keeps).
        loader: training data, N images.
        settings: the knobs (:class:`dplib.DirichletSettings`); single ``knobs`` given as
            keywords override them (``epochs=0.5``).
        seed: seeds the samples (and anything else drawn from torch's global generator).

    Returns an :class:`~dplib.Importance` whose ``history`` holds the per-step ``loss``,
    ``cross_entropy`` and ``kl``, :data:`SNAPSHOTS` ``snapshots`` of the means at ``steps``, and
    ``seconds``. The model is left as it was; the gates end in ``"mean"`` mode.
    """
    settings = _settings_for(gated, settings, knobs)
    check_data(gated, loader, "learn_importance")
    kl_normalizer = len(loader.dataset) if settings.kl_divided_by_n else 1
    loop = Loop.plan(loader, settings, device)
    # layerwise: one gate learnt at a time, the others off, each for the whole schedule
    phases = [[name] for name in gated.layers] if settings.layerwise else [None]
    set_seed(seed)
    with _learning_mode(gated, settings, loop):
        histories = []
        for learning in phases:
            if learning is not None:
                gated.set_mode("identity")
            phase = Loop.plan(loader, settings, device)
            histories.append(
                _optimise(gated, loader, settings, phase, seed, kl_normalizer, learning)
            )
    history = _joined(histories)
    history["epochs"] = len(phases) * loop.total_steps / loop.steps_per_epoch
    _warn_if_flat(history["spread"])
    config = {**settings.to_dict(), "seed": seed, "dataset_size": len(loader.dataset)}
    return Importance(
        scores={name: gate.mean().detach().cpu() for name, gate in gated.named_gates()},
        criterion="dirichlet",
        concentration={
            name: gate.concentration().detach().cpu() for name, gate in gated.named_gates()
        },
        history=history,
        config=config,
    )


def _settings_for(
    gated: GatedModel, settings: DirichletSettings | None, knobs: dict[str, Any]
) -> DirichletSettings:
    """The settings of this run, checked against the gates (before any work starts)."""
    if not isinstance(gated, GatedModel):
        raise TypeError("learn_importance needs the model returned by dplib.attach_gates(model)")
    gate_knobs = {"phi_init", "scale", "position"} & set(knobs)
    if gate_knobs:
        raise ValueError(
            f"{sorted(gate_knobs)} are knobs of the gates: give them to dplib.attach_gates"
        )
    chosen = with_knobs(settings, DirichletSettings, knobs)
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
def _learning_mode(gated: GatedModel, settings: DirichletSettings, loop: Loop) -> Iterator[None]:
    """Freeze the weights (unless joint training), eval mode on the loop's device, gates
    trainable; restore it all afterwards."""
    weights = _weights(gated)
    saved_requires_grad = [p.requires_grad for p in weights]
    norms = [m for m in gated.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved_statistics = [copy_state(norm) for norm in norms]
    with evaluating(gated, loop.device, loop.channels_last):
        try:
            for parameter in weights:
                parameter.requires_grad_(settings.weights_lr > 0)
            for norm in norms if settings.batchnorm == "train" else []:
                norm.train()
            for _, gate in gated.named_gates():
                gate.theta.requires_grad_(True)
            yield
        finally:
            for parameter, requires_grad in zip(weights, saved_requires_grad):
                parameter.requires_grad_(requires_grad)
            for norm, statistics in zip(norms, saved_statistics):
                norm.load_state_dict(statistics)
            if settings.weights_lr > 0:
                gated.zero_grad(set_to_none=True)
            gated.set_mode("mean")


def _weights(gated: GatedModel) -> list[nn.Parameter]:
    return [p for name, p in gated.named_parameters() if not name.startswith("gates.")]


def _optimise(
    gated: GatedModel,
    loader: DataLoader,
    settings: DirichletSettings,
    loop: Loop,
    seed: int,
    kl_normalizer: float,
    learning: list[str] | None = None,
) -> dict[str, Any]:
    """Adam on the gates named ``learning`` (default all; SGD on the weights when joint) for the
    loop's steps; the history holds each learnt layer's :func:`movement`."""
    learnt = [(n, gate) for n, gate in gated.named_gates() if learning is None or n in learning]
    optimizers = [torch.optim.Adam([gate.theta for _, gate in learnt], lr=settings.lr)]
    if settings.weights_lr > 0:
        optimizers.append(torch.optim.SGD(_weights(gated), lr=settings.weights_lr, momentum=0.9))
    record = _Record(gated, max(1, loop.total_steps // SNAPSHOTS), loop.total_steps)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        with loop.autocast():
            inputs = loop.formatted(images)
            terms = elbo_loss(gated, inputs, labels, settings, kl_normalizer, learning)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        terms[0].backward()
        for optimizer in optimizers:
            optimizer.step()
        record.step(loop.step + 1, terms)

    started = time.perf_counter()
    loop.run(loader, seed, step, record.read, "importance")
    history = record.history | {"seconds": time.perf_counter() - started}
    finals = {name: gate.mean().detach().cpu() for name, gate in learnt}
    return history | movement(history["snapshots"], finals)


LATE = 0.25  # the last part of learning over which the ranking's change is measured
FLAT_SPREAD = 0.05  # a posterior whose K E[s] has a smaller standard deviation is near flat


def movement(
    snapshots: list[dict[str, torch.Tensor]], finals: dict[str, torch.Tensor]
) -> dict[str, dict[str, float]]:
    """How far each layer's posterior moved: ``spread``, the standard deviation of K E[s] at the
    end (0: still uniform), and ``late_change``, 1 - Kendall's tau between the ranking at the
    snapshot a fraction :data:`LATE` before the end and the final ranking (0: settled)."""
    earlier = snapshots[min(len(snapshots) - 1, int(len(snapshots) * (1 - LATE)))]
    spread, change = {}, {}
    for name, mean in finals.items():
        spread[name] = float((mean * mean.numel()).std()) if mean.numel() > 1 else 0.0
        tau = kendall(earlier[name], mean)
        change[name] = 1.0 - tau if tau == tau else 0.0  # NaN: one unit, nothing to rank
    return {"spread": spread, "late_change": change}


def _joined(histories: list[dict[str, Any]]) -> dict[str, Any]:
    """One history of phases run one after another (layerwise learning): lists concatenated,
    steps continued, seconds added, per-layer measurements merged."""
    joined: dict[str, Any] = {"seconds": sum(h["seconds"] for h in histories)}
    offset = 0
    for history in histories:
        for key in ("loss", "cross_entropy", "kl", "snapshots"):
            joined.setdefault(key, []).extend(history[key])
        joined.setdefault("steps", []).extend(step + offset for step in history["steps"])
        offset += history["steps"][-1]
        for key in ("spread", "late_change"):
            joined.setdefault(key, {}).update(history[key])
    return joined


def _warn_if_flat(spread: dict[str, float]) -> None:
    flat = [f"{name} ({value:.3f})" for name, value in spread.items() if value < FLAT_SPREAD]
    if flat:
        warnings.warn(
            f"the posterior of {', '.join(flat)} ended near flat (standard deviation of K E[s] "
            f"under {FLAT_SPREAD}): its ranking is close to noise. Let it move: raise lr, lower "
            "phi_init (dplib.attach_gates) or learn for more epochs.",
            stacklevel=3,
        )


class _Record:
    """The loss terms of every step and the posterior means at snapshot steps, kept on the device
    and read once per epoch (reading every step would make a GPU wait)."""

    def __init__(self, gated: GatedModel, every: int, last: int) -> None:
        self.gated, self.every, self.last = gated, every, last
        self.sizes = [gate.num_units for _, gate in gated.named_gates()]
        self.terms: list[torch.Tensor] = []
        self.means: list[torch.Tensor] = []
        self.history: dict[str, list[Any]] = {
            key: [] for key in ("loss", "cross_entropy", "kl", "steps", "snapshots")
        }

    def step(self, step: int, terms: tuple[torch.Tensor, ...]) -> None:
        """Keep one step's (loss, cross_entropy, kl), and the means at a snapshot step."""
        self.terms.append(torch.stack([term.detach().float() for term in terms]))
        if step % self.every == 0 or step == self.last:
            self.history["steps"].append(step)
            self.means.append(
                torch.cat([gate.mean().detach() for _, gate in self.gated.named_gates()])
            )

    def read(self) -> dict[str, str]:
        """The epoch's one read: its loss terms and snapshots; the progress bar's postfix."""
        terms = torch.stack(self.terms).cpu().tolist()
        for key, values in zip(("loss", "cross_entropy", "kl"), zip(*terms)):
            self.history[key].extend(values)
        if self.means:
            for means in torch.stack(self.means).cpu():
                parts = [part.clone() for part in means.split(self.sizes)]
                self.history["snapshots"].append(dict(zip(self.gated.layers, parts)))
        self.terms, self.means = [], []
        return {"ce": f"{self.history['cross_entropy'][-1]:.3f}"}
