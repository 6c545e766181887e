"""Run a torch_export export (plain torch) on saved input batches and compare with mmssl's embeddings.

Usage: python check_program.py EXPORT_DIR BATCHES.safetensors REFERENCE.safetensors NAME
BATCHES holds ``<batch>/<input name>`` tensors; the inputs' order comes from the export's inputs.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from common import reference, report
from safetensors.torch import load_file

folder, batches_file, ref_file, name = sys.argv[1:5]
program = torch.export.load(str(Path(folder) / "embed.pt2")).module()
names = [entry["name"] for entry in json.loads((Path(folder) / "inputs.json").read_text())]
saved = load_file(batches_file)
count = len({key.split("/")[0] for key in saved})
outputs = []
with torch.no_grad():
    for b in range(count):
        embedding, _ = program(*[saved[f"{b}/{n}"] for n in names])
        outputs.append(embedding)
report(name, torch.cat(outputs), reference(ref_file)["embeddings"])
