"""Embed texts with a transformers export (AutoModel + AutoTokenizer) and with sentence-transformers, and compare
with mmssl's embeddings.

Usage: python check_text.py EXPORT_DIR TEXT_REF.safetensors TEXTS.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from common import reference, report
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

folder, text_ref, texts_file = sys.argv[1:4]
texts = json.loads(Path(texts_file).read_text())
ref = reference(text_ref)["embeddings"]
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModel.from_pretrained(folder).eval()
pooling = json.loads((Path(folder) / "1_Pooling" / "config.json").read_text())
projection = load_file(str(Path(folder) / "2_Dense" / "model.safetensors"))["linear.weight"]
batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
with torch.no_grad():
    hidden = model(**batch).last_hidden_state
mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
pooled = hidden[:, 0] if pooling["pooling_mode_cls_token"] else (hidden * mask).sum(1) / mask.sum(1)
report("transformers text", pooled @ projection.T, ref)

from sentence_transformers import SentenceTransformer  # noqa: E402

st = SentenceTransformer(folder, device="cpu")
report("sentence-transformers text", st.encode(texts, convert_to_tensor=True, batch_size=16), ref)
