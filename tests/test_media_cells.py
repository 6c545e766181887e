"""Hugging Face datasets' encoded-media cells ({"bytes", "path"}, decoded audio {"array", "sampling_rate"}): the
image and audio decoders read them as their bytes, path or array, and `mmssl init` reads a parquet of them."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
import yaml
from PIL import Image

from mmssl.compiler import compile_recipe
from mmssl.data.media_cells import is_media_cell, media_payload
from mmssl.init import init_manifest
from mmssl_audio.decode import decode_audio
from mmssl_image.decode import decode_image


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def wav_bytes(wave: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format="WAV")
    return buffer.getvalue()


def test_decoders_read_a_cell_as_its_bytes_path_or_array(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    data = png_bytes(pixels)
    (tmp_path / "a.png").write_bytes(data)
    expected = decode_image(data, 3)
    assert torch.equal(decode_image({"bytes": data, "path": "elsewhere.png"}, 3), expected)
    assert torch.equal(decode_image({"bytes": None, "path": str(tmp_path / "a.png")}, 3), expected)
    assert torch.allclose(expected, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
    wave = np.sin(np.arange(800) / 7).astype(np.float32) * 0.5
    clip = wav_bytes(wave, 8000)
    from_bytes = decode_audio({"bytes": clip, "path": None}, 16000)
    assert torch.equal(from_bytes, decode_audio(clip, 16000)) and from_bytes.shape == (1600,)
    from_array = decode_audio({"array": wave, "sampling_rate": 8000, "path": None}, 8000)
    torch.testing.assert_close(from_array, torch.from_numpy(wave), atol=1e-4, rtol=0)  # PCM16 in the bytes route
    assert is_media_cell({"path": "x"}) and not is_media_cell({"text": "x"}) and not is_media_cell("x")
    with pytest.raises(ValueError, match=r"no bytes, path or array \(keys \['bytes', 'path'\]\)"):
        media_payload({"bytes": None, "path": None})


def test_init_reads_a_parquet_of_image_and_audio_cells(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rows = {
        "image": [{"bytes": png_bytes(rng.integers(0, 256, (20, 20), dtype=np.uint8)), "path": f"{i}.png"}
                  for i in range(12)],
        "label": [i % 2 for i in range(12)],
        "split": ["test" if i < 4 else "train" for i in range(12)],
    }
    pq.write_table(pa.table(rows), tmp_path / "images.parquet")
    out = init_manifest(tmp_path / "images.parquet", tmp_path / "images.yaml")
    compile_recipe(out, weights=False)
    tree = yaml.safe_load(out.read_text())
    image = tree["modalities"]["image"]
    assert (image["column"], image["options"]["image_size"]) == ("image", 20)
    assert "path_columns" not in tree["data"]["train"]
    clips = [{"bytes": wav_bytes(rng.normal(size=4000).astype(np.float32) * 0.1, 8000), "path": None}
             for _ in range(12)]
    pq.write_table(pa.table({**rows, "image": clips}), tmp_path / "clips.parquet")
    out = init_manifest(tmp_path / "clips.parquet", tmp_path / "clips.yaml")
    compile_recipe(out, weights=False)
    assert list(yaml.safe_load(out.read_text())["modalities"]) == ["audio"]
