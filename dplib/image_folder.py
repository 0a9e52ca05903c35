"""CIFAR-10 from an image-folder copy: ``train/<class>/NNNN.jpg`` and ``test/<class>/NNNN.jpg``.

The public repository *CIFAR-10-images* holds all 60,000 CIFAR-10 images in this layout as
32x32 JPEG files; a clone of it, or an archive (``.tar``, ``.tar.gz``, ``.tar.xz``), works
offline. The pixels went through one lossy JPEG round trip, so every result on this copy says
"CIFAR-10, JPEG copy". It is decoded once (Pillow) into a cached tensor file beside the data.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .files import atomic_torch_save, read_torch_file

COPY_ENV = "DPLIB_CIFAR10"
FOLDER_NAMES = ("cifar10-jpeg", "CIFAR-10-images")
ARCHIVE_NAMES = ("cifar10-jpeg.tar.xz", "cifar10-jpeg.tar.gz", "cifar10-jpeg.tar")
SOURCE_LABEL = "CIFAR-10, JPEG copy"
CACHE_FORMAT = "dplib-cifar10-jpeg-1"


def find_copy(root: Path, path: str | os.PathLike | None = None) -> Path | None:
    """The image-folder copy to use: ``path``, else ``$DPLIB_CIFAR10``, else a folder or archive
    of a known name under ``root``; None when there is none."""
    given = path or os.environ.get(COPY_ENV)
    if given:
        given = Path(given)
        if not given.exists():
            raise FileNotFoundError(
                f"the CIFAR-10 copy {given} does not exist (given as an argument or ${COPY_ENV})"
            )
        return given
    for name in (*FOLDER_NAMES, *ARCHIVE_NAMES):
        if (root / name).exists():
            return root / name
    return None


def _members(copy: Path) -> Iterator[tuple[str, bytes]]:
    """(relative path, JPEG bytes) of every ``.jpg`` of a folder or an archive."""
    if copy.is_dir():
        for file in sorted(copy.rglob("*.jpg")):
            yield file.relative_to(copy).as_posix(), file.read_bytes()
        return
    with tarfile.open(copy) as archive:
        for member in archive:
            if member.isfile() and member.name.endswith(".jpg"):
                yield member.name, archive.extractfile(member).read()


def read_copy(
    copy: Path, classes: tuple[str, ...], limit: int | None = None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Decode the copy: ``{"train": (images uint8 N x 3 x 32 x 32, labels), "test": ...}``,
    each split in file-name order; ``limit`` stops after that many images (a quick look)."""
    index = {name: k for k, name in enumerate(classes)}
    found: dict[str, list[tuple[str, int, np.ndarray]]] = {"train": [], "test": []}
    for count, (name, payload) in enumerate(_members(copy)):
        if limit is not None and count >= limit:
            break
        parts = name.split("/")
        if len(parts) < 3 or parts[-3] not in found or parts[-2] not in index:
            raise ValueError(
                f"{copy}: {name} is not in the layout train/<class>/NNNN.jpg or "
                f"test/<class>/NNNN.jpg with a CIFAR-10 class ({', '.join(classes)})"
            )
        image = np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"))
        if image.shape != (32, 32, 3):
            raise ValueError(f"{copy}: {name} is {image.shape[1]}x{image.shape[0]}, not 32x32")
        found[parts[-3]].append(("/".join(parts[-2:]), index[parts[-2]], image))
    return {split: _stack(items) for split, items in found.items()}


def _stack(items: list[tuple[str, int, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    items.sort(key=lambda item: item[0])
    if not items:
        return torch.zeros(0, 3, 32, 32, dtype=torch.uint8), torch.zeros(0, dtype=torch.long)
    images = torch.from_numpy(np.stack([image for _, _, image in items])).permute(0, 3, 1, 2)
    labels = torch.tensor([label for _, label, _ in items], dtype=torch.long)
    return images.contiguous(), labels


def load_copy(copy: Path, classes: tuple[str, ...], cache: Path) -> tuple[tuple, tuple, str]:
    """The train and test tensors of the copy, decoded once and cached in ``cache``."""
    try:
        payload = read_torch_file(cache, CACHE_FORMAT, "decoded CIFAR-10 copy")
        if payload["copy"] == str(copy.resolve()):
            return payload["train"], payload["test"], payload["source"]
    except (FileNotFoundError, ValueError):
        pass
    splits = read_copy(copy, classes)
    sizes = {split: len(labels) for split, (_, labels) in splits.items()}
    if not sizes["train"] or not sizes["test"]:
        raise ValueError(f"{copy} has no train/ or no test/ images ({sizes})")
    source = f"{SOURCE_LABEL} ({copy.name}: {sizes['train']:,} train, {sizes['test']:,} test)"
    payload = {"format": CACHE_FORMAT, "copy": str(copy.resolve()), **splits, "source": source}
    atomic_torch_save(payload, cache)
    return splits["train"], splits["test"], source
