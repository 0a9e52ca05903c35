"""dplib: Dirichlet pruning (Adamczewski & Park, AISTATS 2021) as a small, tested package.

The pipeline, one module per step::

    import dplib
    model = dplib.models.build("lenet5")                       # models
    loaders = dplib.data.loaders("fashion_mnist")              # data
    dplib.fit(model, loaders.train, epochs=3, val_loader=loaders.val)   # train (loop)
    gated = dplib.attach_gates(model)                          # gates, attach
    imp = dplib.learn_importance(gated, loaders.train)         # vi: the ELBO
    small = dplib.prune(model, imp, "5-10-76")                 # surgery
    params, macs = dplib.count(small, (1, 1, 28, 28))          # measure
"""

from . import budget, criteria, data, measure, models
from .attach import GatedModel, attach_gates
from .budget import BudgetError, choose_widths
from .gates import DirichletGate, GateShapeError, dirichlet_kl
from .graph import UnsupportedModelError, find_prunable_layers
from .importance import (
    Importance,
    ImportanceMismatchError,
    WidthsError,
    format_widths,
    parse_widths,
)
from .loop import resolve_device, set_seed
from .measure import count, latency, speedup
from .pruned import load_pruned, save_pruned
from .settings import DirichletSettings, TrainSettings
from .surgery import prune, unit_mask, widths_of
from .train import CheckpointError, evaluate, fit, load_checkpoint, save_checkpoint
from .vi import learn_importance

__version__ = "0.1.0"

__all__ = [
    "BudgetError",
    "CheckpointError",
    "DirichletGate",
    "GateShapeError",
    "GatedModel",
    "Importance",
    "ImportanceMismatchError",
    "UnsupportedModelError",
    "WidthsError",
    "attach_gates",
    "DirichletSettings",
    "budget",
    "criteria",
    "choose_widths",
    "count",
    "data",
    "dirichlet_kl",
    "evaluate",
    "find_prunable_layers",
    "fit",
    "format_widths",
    "latency",
    "load_pruned",
    "learn_importance",
    "load_checkpoint",
    "measure",
    "models",
    "parse_widths",
    "prune",
    "resolve_device",
    "save_checkpoint",
    "save_pruned",
    "set_seed",
    "speedup",
    "TrainSettings",
    "unit_mask",
    "widths_of",
]
