"""Embed Fashion-MNIST test images and class prompts with an open_clip export (open_clip + numpy only) and compare
with mmssl's embeddings.

Usage: python check_open_clip.py EXPORT_DIR IMAGE_REF.safetensors TEXT_REF.safetensors TEXTS.json
"""

from __future__ import annotations

import json
import sys

import open_clip
import torch
from common import fashion_mnist_test_images, reference, report
from PIL import Image

folder, image_ref, text_ref, texts_file = sys.argv[1:5]
model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
model.eval()
ref = reference(image_ref)
images = fashion_mnist_test_images(ref["index"].tolist())
batch = torch.stack([preprocess(Image.fromarray(a).convert("RGB")) for a in images])  # open_clip's own pipeline
texts = json.loads(open(texts_file).read())
with torch.no_grad():
    image_features = model.encode_image(batch, normalize=True)
    text_features = model.encode_text(tokenizer(texts), normalize=True)
report("open_clip image", image_features, ref["embeddings"])
report("open_clip text", text_features, reference(text_ref)["embeddings"])
print(json.dumps({"check": "open_clip logit_scale", "value": float(model.logit_scale.exp())}))
