"""Embed Fashion-MNIST test images with a timm export (timm + numpy only) and compare with mmssl's embeddings.

Usage: python check_timm.py EXPORT_DIR REFERENCE.safetensors
"""

from __future__ import annotations

import sys

import timm
import torch
from common import fashion_mnist_test_images, reference, report

folder, ref_file = sys.argv[1], sys.argv[2]
ref = reference(ref_file)
model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
config = timm.data.resolve_data_config({}, model=model)
mean = torch.tensor(config["mean"])[None, :, None, None]
std = torch.tensor(config["std"])[None, :, None, None]
images = torch.from_numpy(fashion_mnist_test_images(ref["index"].tolist())).float()[:, None] / 255.0
assert tuple(images.shape[1:]) == tuple(config["input_size"]), (images.shape, config["input_size"])
with torch.no_grad():
    ours = model((images - mean) / std)
report("timm image", ours, ref["embeddings"])
