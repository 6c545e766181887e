"""open_clip export: train both towers of a tiny CLIP for 2 steps, export, load it in a process without mmssl."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

open_clip = pytest.importorskip("open_clip")

from test_released_open_clip import NAME, TEXTS, make_tiny_clip  # noqa: E402

from mmssl.compiler import compile_recipe  # noqa: E402
from mmssl.export.open_clip import export_open_clip  # noqa: E402

CHILD = textwrap.dedent(
    """
    import sys
    import open_clip
    import torch
    from safetensors.torch import load_file, save_file

    out, name, result = sys.argv[1], sys.argv[2], sys.argv[3]
    pixels = load_file(sys.argv[4])["pixels"]
    texts = sys.argv[5:]
    open_clip.add_model_config(out + "/model_configs")
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=out + "/open_clip_model.safetensors")
    local, _, _ = open_clip.create_model_and_transforms("local-dir:" + out)
    ids = open_clip.get_tokenizer(name)(texts)
    found = {}
    with torch.no_grad():
        for tag, m in (("", model.eval()), ("local_", local.eval())):
            found[tag + "image"] = m.encode_image(pixels, normalize=True)
            found[tag + "text"] = m.encode_text(ids, normalize=True)
            found[tag + "logit_scale"] = m.logit_scale.detach().reshape(1)
    assert "mmssl" not in sys.modules, sorted(k for k in sys.modules if k.startswith("mmssl"))
    assert local.visual.preprocess_cfg["size"] in (32, (32, 32)), local.visual.preprocess_cfg
    save_file({k: v.contiguous() for k, v in found.items()}, result)
    """
)


def recipe_tree(weights: Path, text_encoder: bool = True) -> dict:
    source = {"library": "open_clip", "model": NAME, "path": str(weights)}
    lora = {"r": 4, "alpha": 8, "target_modules": ["c_fc", "c_proj"]}
    text: dict = {"column": "caption", "options": {"max_length": 16, "width": 32, "depth": 1, "heads": 2}}
    if text_encoder:
        text |= {"encoder": {**source, "tower": "text"}, "projection": "linear"}
    return {
        "name": "tiny_open_clip",
        "description": "Two towers of a tiny random CLIP, LoRA on the image tower.",
        "seed": 0,
        "data": {"train": {"source": "fashion_mnist", "split": "train", "limit": 32}},
        "modalities": {
            "image": {
                "options": {"width": 32, "depth": 1, "heads": 2},
                "encoder": {**source, "tower": "image", "train": "lora", "lora": lora},
                "projection": "identity",
            },
            "text": text,
        },
        "model": {"embed_dim": 16},
        "objectives": [{"name": "clip", "modalities": ["image", "text"]}],
        "train": {"steps": 2, "batch_size": 8, "lr": 1.0e-2, "warmup_steps": 0, "log_every": 1},
    }


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSSL_CACHE", str(tmp_path / "mmssl-cache"))


def test_export_loads_in_open_clip_without_mmssl(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from mmssl.run import load_run
    from mmssl.train.trainer import train

    source, weights, _ = make_tiny_clip(tmp_path / "source")
    plan = compile_recipe(recipe_tree(weights), base_dir=tmp_path)
    result = train(plan, tmp_path / "run")
    assert result.finished
    out = export_open_clip(tmp_path / "run", tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "mmssl_export.json",  # marks the folder as this exporter's own, the only kind it replaces
        "model_configs",
        "open_clip_config.json",
        "open_clip_model.safetensors",
    ]
    readme = (out / "README.md").read_text()
    assert "open_clip.add_model_config" in readme and "library_name: open_clip" in readme

    run = load_run(tmp_path / "run")
    pixels = torch.randn(3, 3, 32, 32)
    text_proc = run.processors["text"]
    with torch.no_grad():
        ours_image = run.model.embed("image", run.processors["image"].collate(list(pixels)))
        ours_text = run.model.embed("text", text_proc.collate([text_proc.prepare(t) for t in TEXTS]))
        before = torch.nn.functional.normalize(source.encode_image(pixels), dim=-1)
    save_file({"pixels": pixels}, str(tmp_path / "pixels.safetensors"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    child = [sys.executable, "-c", CHILD, str(out), NAME, str(tmp_path / "child.safetensors")]
    child += [str(tmp_path / "pixels.safetensors"), *TEXTS]
    done = subprocess.run(child, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = load_file(str(tmp_path / "child.safetensors"))
    for tag in ("", "local_"):
        print(f"max abs diff {tag or 'named_'}image {(theirs[tag + 'image'] - ours_image).abs().max().item():.3g}")
        print(f"max abs diff {tag or 'named_'}text {(theirs[tag + 'text'] - ours_text).abs().max().item():.3g}")
        assert (theirs[tag + "image"] - ours_image).abs().max().item() < 1e-5
        assert (theirs[tag + "text"] - ours_text).abs().max().item() < 1e-5
    trained_scale = load_file(str(tmp_path / "run" / "objectives.safetensors"))["clip.logit_scale"]
    assert theirs["logit_scale"].item() == pytest.approx(trained_scale.item())
    assert (before - ours_image).abs().max().item() > 1e-4  # the LoRA update reached the export


def test_export_refuses_a_run_without_an_open_clip_text_tower(tmp_path: Path) -> None:
    weights = tmp_path / "tiny.safetensors"
    weights.write_bytes(b"")  # validation checks that it exists; the refusal comes before any weights load
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe_tree(weights, text_encoder=False)))
    with pytest.raises(ValueError, match="no modality is an open_clip text tower.*'text' uses mmssl's own"):
        export_open_clip(run, tmp_path / "export")
    assert not (tmp_path / "export").exists()
