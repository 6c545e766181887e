"""Embed Fashion-MNIST test images with a timm export (timm + numpy only) and compare with mmssl's embeddings.

Usage: python check_timm.py EXPORT_DIR REFERENCE.safetensors [folder|overlay]
``folder`` loads ``local-dir:EXPORT_DIR``; ``overlay`` builds the architecture by name from config.json's
``model_args`` and loads the weights through ``pretrained_cfg_overlay``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import timm
import torch
from common import fashion_mnist_test_images, reference, report

folder, ref_file = sys.argv[1], sys.argv[2]
how = sys.argv[3] if len(sys.argv) > 3 else "folder"
ref = reference(ref_file)
if how == "folder":
    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
else:
    config = json.loads((Path(folder) / "config.json").read_text())
    overlay = dict(config["pretrained_cfg"], file=str(Path(folder) / "model.safetensors"))
    model = timm.create_model(config["architecture"], pretrained=True, pretrained_cfg_overlay=overlay,
                              **config["model_args"])  # fmt: skip
model.eval()
config = timm.data.resolve_data_config({}, model=model)
mean = torch.tensor(config["mean"])[None, :, None, None]
std = torch.tensor(config["std"])[None, :, None, None]
images = torch.from_numpy(fashion_mnist_test_images(ref["index"].tolist())).float()[:, None] / 255.0
assert tuple(images.shape[1:]) == tuple(config["input_size"]), (images.shape, config["input_size"])
with torch.no_grad():
    ours = model((images - mean) / std)
report(f"timm image ({how})", ours, ref["embeddings"])
