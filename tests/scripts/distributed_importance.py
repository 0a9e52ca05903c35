"""Learn importance on a tiny data set, under torchrun or alone; rank 0 saves the result.

torchrun --standalone --nproc_per_node=2 tests/scripts/distributed_importance.py OUT.pt
"""

import sys

import torch

import dplib
from dplib import distributed


def main(out: str) -> None:
    device = distributed.setup()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(512, 1, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (512,), generator=generator)
    dataset = torch.utils.data.TensorDataset(images, labels)
    loader = dplib.data.make_loader(dataset, 64, shuffle=True, seed=0)
    model = dplib.models.build("lenet300", seed=0)
    gated = dplib.attach_gates(model, phi_init=10.0)
    importance = dplib.learn_importance(
        gated, loader, epochs=2, samples=2, lr=0.05, device=device, seed=3
    )
    if distributed.is_main():
        importance.save(out)
    distributed.cleanup()


if __name__ == "__main__":
    main(sys.argv[1])
