r"""The Dirichlet settings: every knob of importance learning, and its default, in one place.

:class:`DirichletSettings` is taken by :func:`dplib.attach_gates` (the gate's knobs) and
:func:`dplib.learn_importance` (the ELBO's and the optimiser's), held by the kit's profiles,
varied by its study and hashed by its stages. Each default below is written nowhere else.

The defaults are not the ELBO proper but what the kit's study measured best (``notebooks/05_study``,
``figures/study/``; the method page ``notebooks/METHOD.md``, section 7): gates :math:`K s`
created at :math:`\varphi_{\text{init}} = 100`, a sparse prior :math:`\alpha_0 = 0.1` whose KL
is *not* divided by :math:`N`, weighted by :math:`\beta = 0.01`, the ``sample`` estimator with
:math:`M = 1`, Adam at learning rate 0.1 for one epoch. :meth:`DirichletSettings.as_specified`
gives the method as first specified (:math:`\varphi_{\text{init}} = 1`, :math:`\alpha_0 = 1`,
:math:`\beta = 1`, KL divided by :math:`N`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .gates import GATE_SCALES

ESTIMATORS = ("sample", "point")
GATE_POSITIONS = ("after_bn", "before_bn")
BATCHNORM_MODES = ("eval", "train")


@dataclass(frozen=True)
class DirichletSettings:
    """The knobs of Dirichlet importance (symbols of ``notebooks/METHOD.md``, sections 2-3).

    Attributes:
        scale: ``"K"``: the gate multiplies unit k by :math:`K s_k` (the identity at the start);
            ``"none"``: by :math:`s_k`, as the authors' reference code.
        position: ``"after_bn"`` (the gate multiplies a layer's BatchNorm output) or
            ``"before_bn"`` (the layer's raw output).
        phi_init: :math:`\\varphi_{\\text{init}}`, the initial concentration of every unit.
        alpha0: :math:`\\alpha_0`, the symmetric prior's concentration (< 1: sparse).
        kl_weight: :math:`\\beta`, the weight of the KL term (0: no prior).
        kl_divided_by_n: divide the KL by the data set size N, as the ELBO of one mini-batch
            does (the method as specified), or not (the kit's default: the prior then matters).
        estimator: ``"sample"`` (reparameterised samples) or ``"point"`` (the posterior mean).
        samples: M, samples per mini-batch (``sample`` estimator).
        lr: Adam's learning rate on the gates' parameters :math:`\\theta`.
        epochs: passes over the training data (fractions allowed; the paper: one).
        batchnorm: ``"eval"`` (the method: running statistics) or ``"train"`` (batch
            statistics, as the reference code).
        weights_lr: 0 freezes the weights (the method); > 0 trains them jointly by SGD.
    """

    scale: str = "K"
    position: str = "after_bn"
    phi_init: float = 100.0
    alpha0: float = 0.1
    kl_weight: float = 0.01
    kl_divided_by_n: bool = False
    estimator: str = "sample"
    samples: int = 1
    lr: float = 0.1
    epochs: float = 1.0
    batchnorm: str = "eval"
    weights_lr: float = 0.0

    def __post_init__(self) -> None:
        _check_choice("gate scale", self.scale, GATE_SCALES)
        _check_choice("gate position", self.position, GATE_POSITIONS)
        _check_choice("estimator", self.estimator, ESTIMATORS)
        _check_choice("batchnorm mode", self.batchnorm, BATCHNORM_MODES)
        _check_positive("phi_init", self.phi_init)
        _check_positive("alpha0", self.alpha0)
        _check_positive("lr", self.lr)
        _check_positive("epochs", self.epochs)
        if self.kl_weight < 0 or self.weights_lr < 0:
            raise ValueError(
                f"kl_weight and weights_lr must be >= 0, got {self.kl_weight}, {self.weights_lr}"
            )
        if isinstance(self.samples, bool) or int(self.samples) != self.samples or self.samples < 1:
            raise ValueError(f"samples must be a whole number >= 1, got {self.samples!r}")

    @classmethod
    def as_specified(cls) -> DirichletSettings:
        """The method as first specified: phi_init 1, alpha0 1, beta 1, KL divided by N."""
        return cls(phi_init=1.0, alpha0=1.0, kl_weight=1.0, kl_divided_by_n=True)

    def replace(self, **changes: Any) -> DirichletSettings:
        """A checked copy with some knobs changed; an unknown knob is a ValueError."""
        unknown = sorted(set(changes) - set(knobs()))
        if unknown:
            raise ValueError(f"unknown Dirichlet setting(s) {unknown}; the knobs are {knobs()}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Every knob, in the order of the fields (JSON-ready)."""
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """One line naming every knob (printed by the notebooks)."""
        kl = "KL/N" if self.kl_divided_by_n else "KL not divided by N"
        return (
            f"gate scale {self.scale}, phi_init {self.phi_init:g}, alpha0 {self.alpha0:g}, "
            f"kl_weight {self.kl_weight:g} ({kl}), lr {self.lr:g}, {self.estimator} estimator, "
            f"M={self.samples}, {self.epochs:g} epoch(s)"
        )


def knobs() -> tuple[str, ...]:
    """The names of the knobs of :class:`DirichletSettings`, in field order."""
    return tuple(field.name for field in dataclasses.fields(DirichletSettings))


def _check_choice(what: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")


def _check_positive(what: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{what} must be positive, got {value}")
