"""bfloat16 autocast and channels-last against float32 on the CPU: speed and accuracy.

    python bench/cifar_precision.py     # about 3 minutes on 2 cores

ResNet-20 on CIFAR-10 (the JPEG copy where the original batches are not here), the same seed,
data order and one-cycle schedule for ``EPOCHS`` epochs, trained three ways: float32 NCHW,
float32 channels-last, bfloat16 autocast with channels-last. Prints and saves
figures/bench/cifar_precision.json: seconds per epoch and validation accuracy of each.
"""

from __future__ import annotations

import json
from pathlib import Path

import dplib
from dplib.files import write_json

ROOT = Path(__file__).resolve().parent.parent
EPOCHS = 2
MODES = {
    "float32, NCHW": {"amp": False, "channels_last": False},
    "float32, channels-last": {"amp": False, "channels_last": True},
    "bfloat16 autocast, channels-last": {"amp": "bfloat16", "channels_last": True},
}


def main() -> None:
    loaders = dplib.data.loaders("cifar10", batch_size=128, seed=0)
    rows = []
    for mode, options in MODES.items():
        model = dplib.models.build("resnet20", seed=0)
        settings = dplib.TrainSettings(
            epochs=EPOCHS, lr=0.1, schedule="onecycle", augment=True, **options
        )
        history = dplib.fit(model, loaders.train, settings, val_loader=loaders.val, device="cpu")
        rows.append(
            {
                "mode": mode,
                "seconds_per_epoch": history["seconds_per_epoch"],
                "val_accuracy": history["val_accuracy"],
            }
        )
        print(
            f"{mode:>34}: {history['seconds_per_epoch']:.1f} s per epoch, validation accuracy "
            + " / ".join(f"{100 * a:.2f}%" for a in history["val_accuracy"]),
            flush=True,
        )
    base = rows[0]["seconds_per_epoch"]
    for row in rows:
        row["speedup"] = base / row["seconds_per_epoch"]
    report = {"data": loaders.splits.source, "epochs": EPOCHS, "rows": rows}
    target = ROOT / "figures" / "bench" / "cifar_precision.json"
    write_json(target, report)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
