r"""The knobs of the two loops, each with its default written once: training and importance.

:class:`TrainSettings` is what :func:`dplib.fit` takes; :class:`DirichletSettings` what
:func:`dplib.attach_gates` (the gate's knobs) and :func:`dplib.learn_importance` take. Both are
frozen, checked when made, and hashed by the kit's experiments to name cached results. Single
knobs given as keywords override the settings (``fit(model, loader, epochs=3)``); a knob that
does not exist is a ``TypeError`` that lists those that do.

The Dirichlet defaults are the authors' recipe (:meth:`DirichletSettings.authors`, each knob
cited to their code) at 30 times its learning rate: the gate s, the point estimate s = E[s], no
KL term, Adam at lr 3e-2 (theirs: 1e-3) from phi = softplus(-1), one layer's gate at a time.
Chosen over three seeds on four LeNet setups by validation accuracy right after pruning at the
same widths against the best other criterion (``bench/screen.py``,
``figures/study/screen.md``): at lr 1e-3 the posterior barely moves in one pass; 1e-2, 3e-2 and
0.1 were screened. It costs one pass over the data per layer.
:meth:`DirichletSettings.variational` is variational inference proper as the kit ran it before
(samples, a sparse prior); :meth:`DirichletSettings.as_specified` the method as first specified
(:math:`\varphi_{\text{init}} = 1`, :math:`\alpha_0 = 1`, :math:`\beta = 1`, KL / N, samples).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .gates import GATE_SCALES

ESTIMATORS = ("sample", "point")
GATE_POSITIONS = ("after_bn", "before_bn")
BATCHNORM_MODES = ("eval", "train")
SCHEDULES = ("cosine", "onecycle", "constant")
AMP_CHOICES = (True, False, "auto", "bfloat16")
PHI_INIT = math.log1p(math.exp(-1.0))  # softplus(-1), about 0.313: the reference code's theta = -1


class _Settings:
    """What both settings classes share: checked copies, a plain dict, their knobs' names."""

    @classmethod
    def knobs(cls) -> tuple[str, ...]:
        """The names of the knobs, in field order."""
        return tuple(field.name for field in dataclasses.fields(cls))

    def replace(self, **changes: Any) -> Any:
        """A checked copy with some knobs changed; an unknown knob is a TypeError naming it."""
        unknown = sorted(set(changes) - set(self.knobs()))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} has no knob {', '.join(map(repr, unknown))}; "
                f"its knobs are {', '.join(self.knobs())}"
            )
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Every knob, in field order (JSON-ready)."""
        return dataclasses.asdict(self)

    def _check_common(self) -> None:
        _check_positive("epochs", self.epochs)
        _check_positive("lr", self.lr)
        for name in ("epochs", "lr"):  # 3 and 3.0 are one setting (and hash alike)
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.amp not in AMP_CHOICES:
            raise ValueError(f"amp must be True, False, 'auto' or 'bfloat16', got {self.amp!r}")


@dataclass(frozen=True)
class TrainSettings(_Settings):
    """The knobs of :func:`dplib.fit`: SGD with momentum and weight decay, a schedule."""

    epochs: float = 1.0  # passes over the training data (a fraction: part of one pass)
    lr: float = 0.05  # the peak learning rate
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # "cosine" (decay to 0), "onecycle" (a linear warm-up from lr/25 over the first 30% of the
    # steps, then cosine decay to 0) or "constant"
    schedule: str = "cosine"
    keep_best: bool = True  # restore the weights of the epoch with the best *validation* accuracy
    augment: bool = False  # random crops (4-pixel padding) and horizontal flips (CIFAR)
    amp: bool | str = "auto"  # autocast: "auto", "bfloat16", True, False (loop.autocast_dtype)
    # the channels-last memory format while the loop runs (faster convolutions on CPUs)
    channels_last: bool = False

    def __post_init__(self) -> None:
        self._check_common()
        _check_choice("schedule", self.schedule, SCHEDULES)
        if self.momentum < 0 or self.weight_decay < 0:
            raise ValueError(
                f"momentum and weight_decay must be >= 0, got {self.momentum}, {self.weight_decay}"
            )


@dataclass(frozen=True)
class DirichletSettings(_Settings):
    """The knobs of Dirichlet importance (symbols of ``notebooks/METHOD.md``, sections 2-3)."""

    # defaults: the module docstring's recipe; BatchNorm on its running statistics (the
    # screened networks have none)
    scale: str = "none"  # "none": unit k times s_k (the reference code); "K": K s_k (identity)
    position: str = "after_bn"  # the gate after a layer's BatchNorm, or "before_bn"
    phi_init: float = PHI_INIT  # phi_init, every unit's initial concentration (softplus(-1))
    alpha0: float = 2.0  # the symmetric prior's concentration per unit (< 1: sparse)
    kl_weight: float = 0.0  # beta, the weight of the KL term (0: no prior, the data term alone)
    kl_divided_by_n: bool = False  # divide the KL by the data set size N (the method as specified)
    estimator: str = "point"  # "point": s = E[s], the posterior mean; "sample": reparameterised
    samples: int = 1  # M, samples per mini-batch ("sample" estimator)
    lr: float = 3e-2  # Adam's learning rate on the gates' parameters theta (the authors': 1e-3)
    epochs: float = 1.0  # passes over the training data (per layer when layerwise)
    batchnorm: str = "eval"  # running statistics (the method), or "train" (the reference code)
    weights_lr: float = 0.0  # 0 freezes the weights (the method); > 0 trains them jointly (SGD)
    amp: bool | str = False  # amp and channels_last as in TrainSettings
    channels_last: bool = False
    # one layer's gate learnt at a time, the other gates off, each for ``epochs`` (the reference
    # code); False: every gate together
    layerwise: bool = True

    def __post_init__(self) -> None:
        self._check_common()
        _check_choice("gate scale", self.scale, GATE_SCALES)
        _check_choice("gate position", self.position, GATE_POSITIONS)
        _check_choice("estimator", self.estimator, ESTIMATORS)
        _check_choice("batchnorm mode", self.batchnorm, BATCHNORM_MODES)
        _check_positive("phi_init", self.phi_init)
        _check_positive("alpha0", self.alpha0)
        if min(self.kl_weight, self.weights_lr) < 0:
            raise ValueError(
                f"kl_weight and weights_lr must be >= 0, got {self.kl_weight}, {self.weights_lr}"
            )
        if isinstance(self.samples, bool) or int(self.samples) != self.samples or self.samples < 1:
            raise ValueError(f"samples must be a whole number >= 1, got {self.samples!r}")

    @classmethod
    def as_specified(cls) -> DirichletSettings:
        """The method as first specified: gates K s from phi_init 1, samples, alpha0 1, beta 1,
        KL divided by N, Adam at lr 0.1, every gate together."""
        return cls.variational().replace(
            phi_init=1.0, alpha0=1.0, kl_weight=1.0, kl_divided_by_n=True
        )

    @classmethod
    def authors(cls) -> DirichletSettings:
        """The authors' recipe for LeNet (kamadforge/dirichlet_pruning at commit cca8bc2; ``P`` is
        ``methods/lenet5_switch_pointest.py``, ``N`` ``Lenet/lenet_network_pruning.py``): the
        gate multiplies unit k by s_k, not K s_k (P L57-66); phi = softplus(theta) from theta = -1
        (P L55, L64); the point estimate s = E[s] (P L64-66); Adam at lr 1e-3 (P L166) for one
        epoch (N L360); alpha0 = 2 (P L29) with a KL weight of about 6e-9 (P L26-28, L148,
        L189), here none; one layer's gate at a time on the freshly loaded network (N L363-365);
        BatchNorm in train mode (P L177, L183). Ranking by the posterior mean (N L369) is the
        kit's too."""
        return cls(lr=1e-3, batchnorm="train")

    @classmethod
    def variational(cls) -> DirichletSettings:
        """Variational inference proper, as the kit ran it before the multi-seed screen: gates
        K s from phi_init 100, reparameterised samples, a sparse prior alpha0 = 0.1 whose KL is
        weighted by beta = 0.01 (not divided by N), Adam at lr 0.1, every gate together."""
        return cls(
            scale="K",
            phi_init=100.0,
            alpha0=0.1,
            kl_weight=0.01,
            estimator="sample",
            lr=0.1,
            layerwise=False,
        )

    def describe(self) -> str:
        """One line naming the knobs of the objective (printed by the notebooks)."""
        kl = "KL/N" if self.kl_divided_by_n else "KL not divided by N"
        return (
            f"gate scale {self.scale}, phi_init {self.phi_init:g}, alpha0 {self.alpha0:g}, "
            f"kl_weight {self.kl_weight:g} ({kl}), lr {self.lr:g}, {self.estimator} estimator, "
            f"M={self.samples}, {self.epochs:g} epoch(s)"
            + (" per layer, one layer at a time" if self.layerwise else "")
        )


def with_knobs(settings: _Settings | None, default: type, knobs: dict[str, Any]) -> Any:
    """``settings`` (or ``default()``) with the single ``knobs`` given as keywords applied."""
    chosen = settings if settings is not None else default()
    if not isinstance(chosen, default):
        raise TypeError(f"settings must be a dplib.{default.__name__}, got {chosen!r}")
    return chosen.replace(**knobs) if knobs else chosen


def _check_choice(what: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")


def _check_positive(what: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{what} must be positive, got {value}")
