"""CIFAR-10 from an image-folder copy (folder or archive), decoded once and cached."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dplib import data, image_folder

CLASSES = data.DATASETS["cifar10"].classes


def write_jpeg_copy(target: Path, per_class: int = 2, archive: bool = True) -> Path:
    """A CIFAR-10-images layout of random 32x32 JPEGs: ``per_class`` train, one test image."""
    rng = np.random.default_rng(0)
    files = {}
    for split, count in (("train", per_class), ("test", 1)):
        for name in CLASSES:
            for index in range(count):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, format="JPEG", quality=75)
                files[f"{split}/{name}/{index:04d}.jpg"] = buffer.getvalue()
    if not archive:
        for name, payload in files.items():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_bytes(payload)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target, "w:xz") as tar:
        for name, payload in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return target


def test_the_archive_is_read_labelled_and_cached(tmp_path, monkeypatch):
    monkeypatch.delenv(image_folder.COPY_ENV, raising=False)
    write_jpeg_copy(tmp_path / "cifar10-jpeg.tar.xz", per_class=3)
    splits = data.load_splits("cifar10", tmp_path, download=False)
    assert splits.sizes == {"train": 27, "val": 3, "test": 10}
    assert splits.source.startswith("CIFAR-10, JPEG copy")
    assert sorted(splits.test.tensors[1].tolist()) == list(range(10))
    assert (tmp_path / "cifar10-jpeg.pt").exists()  # decoded once
    cached = data.load_splits("cifar10", tmp_path, download=False)
    assert torch.equal(cached.train.tensors[0], splits.train.tensors[0])


def test_a_folder_copy_gives_the_same_images_as_its_archive(tmp_path):
    folder = write_jpeg_copy(tmp_path / "folder", archive=False)
    archive = write_jpeg_copy(tmp_path / "copy.tar.xz")
    from_folder = image_folder.read_copy(folder, CLASSES)
    from_archive = image_folder.read_copy(archive, CLASSES)
    for split in ("train", "test"):
        assert torch.equal(from_folder[split][0], from_archive[split][0])
        assert torch.equal(from_folder[split][1], from_archive[split][1])
    loaders = data.loaders("cifar10", root=tmp_path / "empty", cifar10_copy=folder, download=False)
    assert loaders.splits.train.tensors[0].shape[1:] == (3, 32, 32)


def test_a_wrong_layout_or_path_says_what_is_expected(tmp_path):
    bad = tmp_path / "bad"
    (bad / "train" / "unicorn").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(bad / "train" / "unicorn" / "0000.jpg")
    with pytest.raises(ValueError, match="train/<class>/NNNN.jpg"):
        image_folder.read_copy(bad, CLASSES)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_splits("cifar10", tmp_path, cifar10_copy=tmp_path / "nowhere.tar.xz")


@pytest.mark.skipif(
    not os.environ.get(image_folder.COPY_ENV), reason="the real CIFAR-10 JPEG copy is not here"
)
def test_the_real_copy_reads_its_first_images():
    copy = Path(os.environ[image_folder.COPY_ENV])
    first = image_folder.read_copy(copy, CLASSES, limit=20)
    images, labels = first["train"]
    assert images.shape == (20, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.tolist() == [0] * 20  # train/airplane comes first
    assert 40 < images.float().mean() < 220  # real pictures, not blank
