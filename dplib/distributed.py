"""Running the training and importance loops on several processes (``torchrun``).

    torchrun --standalone --nproc_per_node=4 bench/your_script.py   # one machine, 4 GPUs

Call :func:`setup` first; :func:`dplib.fit` and :func:`dplib.learn_importance` then shard the
loader (each of P processes takes every P-th image of the same seeded permutation, in batches
of ``batch_size / P``), average the gradients and log, show progress and write checkpoints on
rank 0 only. The numbers equal one process's up to the order of floating-point sums, except
that BatchNorm in training mode normalises with each process's share of the batch (standard
DDP behaviour); importance learning runs in eval mode.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on the process that logs and writes files."""
    return rank() == 0


def setup(backend: str | None = None) -> torch.device:
    """Join the process group ``torchrun`` describes in the environment (without ``torchrun``:
    nothing); this process's device (its GPU when CUDA is available, else the CPU)."""
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ:
        return torch.device("cuda" if cuda else "cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"))
    if cuda:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def cleanup() -> None:
    """Leave the process group once every rank is done (a rank that leaves while rank 0 still
    saves a file can abort gloo)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard(loader: DataLoader, seed: int) -> DataLoader:
    """This process's share of a loader made by :func:`dplib.data.make_loader` (unchanged when
    not distributed): batches of the loader's size over the number of processes."""
    if not is_distributed():
        return loader
    batches = loader.batch_sampler or loader.sampler
    if not isinstance(batches, BatchSampler):
        raise TypeError("shard() needs a loader made by dplib.data.make_loader")
    size = world_size()
    if batches.batch_size % size:
        raise ValueError(
            f"batch size {batches.batch_size} does not split evenly over {size} processes; "
            f"use a multiple of {size}"
        )
    shuffle = not isinstance(batches.sampler, torch.utils.data.SequentialSampler)
    sampler = DistributedSampler(
        loader.dataset, num_replicas=size, rank=rank(), shuffle=shuffle, seed=seed
    )
    share = BatchSampler(sampler, batches.batch_size // size, batches.drop_last)
    return DataLoader(loader.dataset, batch_size=None, sampler=share)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Tell a sharded loader which epoch starts (it reshuffles with seed + epoch)."""
    batches = loader.batch_sampler or loader.sampler
    sampler = getattr(batches, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)


def average_gradients(parameters: list[torch.Tensor]) -> None:
    """All-reduce the gradients of ``parameters`` to their mean over the processes."""
    if not is_distributed():
        return
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
            parameter.grad /= world_size()
