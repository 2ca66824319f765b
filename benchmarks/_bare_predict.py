"""The yardstick of ``benchmarks/startup.py``: the least a script does to predict one 2D image with a trained run.

It imports torch, builds the run's network (medmtl's ``build_multitask_network`` over MONAI's UNet: the
class the state dict belongs to, so ``import monai`` is paid here too), loads ``models/best.pt``
(``weights_only=True``), reads the PNG, scales it to [0, 1] and the run's input size, runs one forward
pass and prints the output shapes. No config parsing, no checks, no files written: everything
``medmtl predict`` does beyond this is its overhead.

Usage: ``python benchmarks/_bare_predict.py RUN_DIR IMAGE.png`` (a 2D, single-input run).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medmtl.networks import build_multitask_network


def main(run_dir: Path, image: Path) -> None:
    record = json.loads((run_dir / "run_config.json").read_text())
    model = record["settings"]["model"]
    network = build_multitask_network(
        sharing=model["sharing"],
        backbone=model["backbone"],
        tasks=record["tasks"],
        backbone_kwargs=model["backbone_presets"][model["backbone"]],
        mask_pooling=model["mask_pooling"],
    )
    checkpoint = torch.load(run_dir / "models" / "best.pt", weights_only=True, map_location="cpu")
    network.load_state_dict(checkpoint["network"])
    network.eval()
    pixels = np.asarray(Image.open(image).convert("L"), dtype=np.float32) / 255.0
    batch = torch.nn.functional.interpolate(
        torch.from_numpy(pixels)[None, None], size=tuple(model["spatial_size"]), mode="bilinear"
    )
    with torch.inference_mode():
        outputs = network(batch)
    print({name: tuple(value.shape) for name, value in outputs.items()})


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
