r"""The Dirichlet gate: one per prunable layer, the only trainable part of importance learning.

A layer with :math:`K` output units gets an importance vector on the simplex,

.. math::

    s = (s_1, \dots, s_K) \sim q(s) = \mathrm{Dir}(\varphi), \qquad
    \varphi = \mathrm{softplus}(\theta) + \epsilon ,

where ``theta`` (:math:`\theta`, K numbers) is the gate's only parameter. The gate multiplies
unit :math:`k` of the layer's output :math:`h` by :math:`K s_k` (``scale="K"``: the uniform
:math:`s = 1/K` is the identity), :math:`h \mapsto (K\, s) \odot h` over the batch and spatial
axes, or by :math:`s_k` (``scale="none"``, as the authors' reference code). The prior is the
symmetric :math:`p(s) = \mathrm{Dir}(\alpha_0 \mathbf{1}_K)`; with :math:`\varphi_0 = \sum_k
\varphi_k` the KL divergence in closed form is

.. math::

    \mathrm{KL}(\mathrm{Dir}(\varphi)\,\|\,\mathrm{Dir}(\alpha_0 \mathbf{1}_K))
    = \ln\Gamma(\varphi_0) - \sum_k \ln\Gamma(\varphi_k) - \ln\Gamma(K \alpha_0)
      + K \ln\Gamma(\alpha_0) + \sum_k (\varphi_k - \alpha_0)\,(\psi(\varphi_k) - \psi(\varphi_0)) .

Samples are reparameterised (``Dirichlet.rsample``: normalised Gamma samples with implicit
gradients), so the cross-entropy's gradient reaches :math:`\theta`. A gate holds a *factor* of
shape ``(M, K)``: row ``m`` scales the ``m``-th block of :math:`|B|` images of a batch of
:math:`M |B|`.
Importance learning stacks ``M`` copies of a mini-batch, each gated by its own sample; the
oracle criterion removes one unit per block the same way.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Dirichlet

GATE_SCALES = ("K", "none")
GATE_MODES = ("identity", "mean", "sample", "fixed")


def stacked_copies(
    images: torch.Tensor, labels: torch.Tensor, copies: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``copies`` copies of a mini-batch, one after the other along the batch dimension, and
    their labels: copy m passes through row m of every gate's factor (a sample of q, or a mask)."""
    return images.repeat(copies, *([1] * (images.dim() - 1))), labels.repeat(copies)


def inverse_softplus(y: float) -> float:
    """Return x with softplus(x) = y, stable for large y (y > 0)."""
    if y <= 0:
        raise ValueError(f"softplus only reaches positive values, got {y}")
    return y + math.log(-math.expm1(-y))


def dirichlet_kl(phi: torch.Tensor, alpha0: float) -> torch.Tensor:
    """Closed-form KL( Dir(phi) || Dir(alpha0 * 1_K) ) over the last axis of ``phi`` (the
    module docstring's formula; equal to ``torch.distributions.kl_divergence``, tested)."""
    if alpha0 <= 0:
        raise ValueError(f"alpha0 must be positive (a Dirichlet prior), got {alpha0}")
    num_units = phi.shape[-1]
    phi0 = phi.sum(-1)
    prior_total = torch.as_tensor(num_units * alpha0, dtype=phi.dtype, device=phi.device)
    alpha = torch.as_tensor(alpha0, dtype=phi.dtype, device=phi.device)
    digamma_gap = torch.digamma(phi) - torch.digamma(phi0).unsqueeze(-1)
    return (
        torch.lgamma(phi0)
        - torch.lgamma(phi).sum(-1)
        - torch.lgamma(prior_total)
        + num_units * torch.lgamma(alpha)
        + ((phi - alpha0) * digamma_gap).sum(-1)
    )


class GateShapeError(RuntimeError):
    """A gate met an output whose units are not on axis 1: the network's structure, not the
    data, is at fault."""


class DirichletGate(nn.Module):
    """Variational Dirichlet posterior q(s) = Dir(softplus(theta) + eps) over the K =
    ``num_units`` output units of a layer, each at concentration ``phi_init`` at first; ``scale``
    ``"K"`` multiplies unit k by K * s_k, ``"none"`` by s_k (the reference code)."""

    def __init__(
        self, num_units: int, phi_init: float = 1.0, scale: str = "K", eps: float = 1e-6
    ) -> None:
        super().__init__()
        if num_units < 1:
            raise ValueError(f"a gate needs at least one unit, got num_units={num_units}")
        if scale not in GATE_SCALES:
            raise ValueError(f"unknown gate scale {scale!r}; choose one of {GATE_SCALES}")
        if phi_init <= eps:
            raise ValueError(f"phi_init must be larger than eps={eps}, got {phi_init}")
        self.num_units = num_units
        self.phi_init = phi_init
        self.scale = scale
        self.eps = eps
        self.theta = nn.Parameter(torch.full((num_units,), inverse_softplus(phi_init - eps)))
        self.mode = "identity"
        self._factor: torch.Tensor | None = None
        self.layer = "?"  # the gated layer's name, set by dplib.attach_gates (for messages)
        self.axis = 1  # the axis of the layer's output that holds its units (-1: a Linear's)

    # The distribution -------------------------------------------------------------------
    def concentration(self) -> torch.Tensor:
        """phi = softplus(theta) + eps, shape (K,)."""
        return nn.functional.softplus(self.theta) + self.eps

    def distribution(self) -> Dirichlet:
        """The variational posterior q(s) as a ``torch.distributions.Dirichlet``."""
        return Dirichlet(self.concentration())

    def sample(self, num_samples: int = 1) -> torch.Tensor:
        """Reparameterised samples s ~ q, shape (num_samples, K), drawn in float64 on CUDA:
        torch's float32 gradient there is NaN for concentrations summing to tens of thousands
        (pytorch/pytorch issue 57447; 512 channels at phi_init = 100); the CPU's is float64.
        Not validated: phi is positive by construction, and the check would read a value back
        from the device at every step."""
        phi = self.concentration()
        drawn = phi.double() if phi.device.type == "cuda" else phi
        return Dirichlet(drawn, validate_args=False).rsample((num_samples,)).to(phi.dtype)

    def mean(self) -> torch.Tensor:
        """Posterior mean E[s_k] = phi_k / phi_0, shape (K,)."""
        phi = self.concentration()
        return phi / phi.sum()

    def std(self) -> torch.Tensor:
        """Posterior standard deviation of each s_k, shape (K,)."""
        return Dirichlet(self.concentration()).stddev

    def kl(self, alpha0: float) -> torch.Tensor:
        """KL( q(s) || Dir(alpha0 * 1_K) ) in closed form (a scalar)."""
        return dirichlet_kl(self.concentration(), alpha0)

    # The multiplication -------------------------------------------------------------------
    def unit_factor(self, s: torch.Tensor) -> torch.Tensor:
        """The multiplier of each unit for importance vectors s (..., K): K*s or s."""
        return s * self.num_units if self.scale == "K" else s

    def set_mode(self, mode: str, factor: torch.Tensor | None = None) -> None:
        """Choose what forward multiplies by. ``identity``: nothing; ``mean``: the posterior
        mean; ``sample``: the samples of :meth:`resample`; ``fixed``: ``factor`` (M, K) as given
        (masks for the oracle and for tests)."""
        if mode not in GATE_MODES:
            raise ValueError(f"unknown gate mode {mode!r}; choose one of {GATE_MODES}")
        if mode == "fixed":
            if factor is None:
                raise ValueError("mode 'fixed' needs a factor of shape (M, K)")
            factor = torch.as_tensor(factor, dtype=self.theta.dtype, device=self.theta.device)
            factor = torch.atleast_2d(factor)  # one row: (K,) -> (1, K)
            if factor.shape[-1] != self.num_units:
                raise ValueError(
                    f"factor has {factor.shape[-1]} entries per row, the gate has "
                    f"{self.num_units} units"
                )
            self._factor = factor
        elif mode != "sample":
            self._factor = None
        self.mode = mode

    def resample(self, num_samples: int = 1) -> torch.Tensor:
        """Draw M = num_samples importance vectors for the next forward pass (mode 'sample')."""
        samples = self.sample(num_samples)
        self._factor = self.unit_factor(samples)
        self.mode = "sample"
        return samples

    def current_factor(self) -> torch.Tensor | None:
        """The (M, K) multiplier the next forward pass uses, or None in identity mode."""
        if self.mode == "identity":
            return None
        if self.mode == "mean":
            return self.unit_factor(self.mean()).unsqueeze(0)
        if self._factor is None:
            raise RuntimeError("gate in 'sample' mode has no samples: call resample() first")
        return self._factor

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Multiply unit k of h by the current factor of its block; the units lie on ``axis``
        (1: (batch, K, ...) of a convolution; -1: (batch, ..., K) of a Linear, tokens too)."""
        factor = self.current_factor()
        if factor is None:
            return h
        axis = self.axis % h.dim() if h.dim() > 1 else 1
        if h.dim() < 2 or h.shape[axis] != self.num_units:
            raise GateShapeError(
                f"the gate of layer {self.layer!r} ({self.num_units} units, on axis {self.axis} "
                f"of the layer's output) received an output of shape {tuple(h.shape)}: the "
                "layer's units are not where dplib's trace put them; please report the network"
            )
        blocks = factor.shape[0]
        if h.shape[0] % blocks:
            raise RuntimeError(
                f"batch of {h.shape[0]} is not a whole number of {blocks} stacked copies"
            )
        grouped = h.reshape(blocks, h.shape[0] // blocks, *h.shape[1:])
        shape = [blocks] + [1] * h.dim()
        shape[1 + axis] = self.num_units
        return (grouped * factor.to(h.dtype).reshape(shape)).reshape(h.shape)

    def extra_repr(self) -> str:
        return f"units={self.num_units}, scale={self.scale}, mode={self.mode}"
