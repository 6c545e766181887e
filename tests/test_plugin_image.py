"""Tests of the first-party image modality plugin (``plugins/mmssl_image``)."""

from __future__ import annotations

import gzip
import io
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from tolerances import BF16, F32

import mmssl_image
from mmssl.encoders.transformer import TransformerEncoder
from mmssl.modality import Capabilities, MaskedInput, ModalityBatch, Processor
from mmssl_image import ImageOptions, ImageProcessor, build_encoder, build_processor, load_processor
from mmssl_image.resnet import ResNetEncoder, masked_group_norm, pyramid_pool, visible_pixels

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def tiny_options(**overrides: object) -> ImageOptions:
    values: dict[str, object] = {"image_size": 16, "patch_size": 4, "width": 16, "depth": 1, "heads": 2}
    values.update(overrides)
    return ImageOptions(**values)


def random_images(count: int, height: int, width: int, channels: int = 3, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8) for _ in range(count)]


def fitted(options: ImageOptions, count: int = 4, seed: int = 0) -> tuple[ImageProcessor, list[np.ndarray]]:
    images = random_images(count, options.image_size, options.image_size, options.channels, seed)
    return build_processor(options, images), images


# ----------------------------------------------------------------------------------------------- options


def test_options_validate_patch_and_stats() -> None:
    with pytest.raises(ValidationError, match="patch_size 5 must divide image_size 16"):
        ImageOptions(image_size=16, patch_size=5)
    with pytest.raises(ValidationError, match="mean has 1 entries but channels is 3"):
        ImageOptions(mean=[0.5])
    with pytest.raises(ValidationError):
        ImageOptions(channels=2)
    with pytest.raises(ValidationError):
        ImageOptions(unknown_field=1)
    with pytest.raises(ValidationError, match="crop_scale"):
        ImageOptions(crop_scale=(0.5, 0.2))
    assert ImageOptions(crop_scale=[0.3, 0.9]).crop_scale == (0.3, 0.9)
    for name, field in ImageOptions.model_fields.items():
        assert field.description, f"option {name} has no description"


# ---------------------------------------------------------------------------------------------- decoding


def test_decode_png_jpeg_npy_bytes_pil_and_arrays(tmp_path: Path) -> None:
    (rgb,) = random_images(1, 12, 10)
    expected = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    processor = ImageProcessor(tiny_options(), [0.5] * 3, [0.25] * 3)

    Image.fromarray(rgb).save(tmp_path / "a.png")
    np.save(tmp_path / "a.npy", rgb)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    for raw in (
        tmp_path / "a.png",
        str(tmp_path / "a.png"),
        tmp_path / "a.npy",
        buffer.getvalue(),
        Image.fromarray(rgb),
        rgb,
        rgb.astype(np.float64) / 255,
    ):
        out = processor.decode(raw)
        assert out.dtype == torch.float32 and out.shape == (3, 12, 10), type(raw)
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)

    smooth = np.tile(np.linspace(0, 255, 16, dtype=np.uint8)[None, :, None], (16, 1, 3))  # JPEG is lossy
    Image.fromarray(smooth).save(tmp_path / "a.jpg", quality=95)
    out = processor.decode(tmp_path / "a.jpg")
    assert out.shape == (3, 16, 16)
    assert (out - torch.from_numpy(smooth).permute(2, 0, 1) / 255).abs().max() < 0.05
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_decode_alpha_on_white_and_channel_conversion() -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red, fully transparent in the left half, opaque in the right half
    rgba[:, 2:, 3] = 255
    for raw in (rgba, Image.fromarray(rgba, mode="RGBA")):
        out = mmssl_image.decode_image(raw, channels=3)
        assert torch.all(out[:, :, :2] == 1.0)  # white where alpha = 0
        torch.testing.assert_close(out[:, :, 2:], torch.tensor([200 / 255, 0, 0]).view(3, 1, 1).expand(3, 4, 2))

    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    rgb_from_grey = mmssl_image.decode_image(grey, channels=3)
    assert rgb_from_grey.shape == (3, 3, 4)
    assert torch.equal(rgb_from_grey[0], rgb_from_grey[1]) and torch.equal(rgb_from_grey[0], rgb_from_grey[2])
    torch.testing.assert_close(rgb_from_grey[0], torch.from_numpy(grey).float() / 255)

    (rgb,) = random_images(1, 5, 6)
    luma = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255
    out = mmssl_image.decode_image(rgb, channels=1)
    assert out.shape == (1, 5, 6)
    torch.testing.assert_close(out[0], torch.from_numpy(luma).float())
    pil_grey = mmssl_image.decode_image(Image.fromarray(grey), channels=1)
    torch.testing.assert_close(pil_grey[0], torch.from_numpy(grey).float() / 255)


def test_decode_errors_name_the_value(tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError, match="nope.png"):
        mmssl_image.decode_image(missing)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="text.png"):
        mmssl_image.decode_image(tmp_path / "text.png")
    with pytest.raises(ValueError, match="not an encoded image"):
        mmssl_image.decode_image(b"garbage")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mmssl_image.decode_image(np.full((4, 4), 3.0))
    with pytest.raises(ValueError, match="shape"):
        mmssl_image.decode_image(np.zeros((3, 4, 4, 2), dtype=np.uint8))
    with pytest.raises(TypeError, match="int"):
        mmssl_image.decode_image(42)
    with pytest.raises(ValueError, match="nested list"):
        mmssl_image.decode_image([[0, 1, 2], [3, 4]])  # ragged rows
    with pytest.raises(ValueError, match=r"nested list of shape \(2, 2\).*\[0, 1\]"):
        mmssl_image.decode_image([[-0.5, 0.2], [0.1, 0.3]])


def test_decode_nested_lists_as_a_manifest_holds_them() -> None:
    """A JSON manifest's inline pixels: integers 0..255 read as uint8, floats in [0, 1] as they are."""
    grey = np.arange(0, 256, 16, dtype=np.uint8).reshape(4, 4)
    from_ints = mmssl_image.decode_image(grey.tolist(), channels=1)
    assert torch.equal(from_ints, mmssl_image.decode_image(grey, channels=1))
    assert from_ints[0, 0, 1].item() == pytest.approx(16 / 255, rel=F32["rtol"])
    fractions = [[0.0, 0.25], [0.5, 1.0]]
    assert torch.equal(mmssl_image.decode_image(fractions, channels=1)[0], torch.tensor(fractions))


# ------------------------------------------------------------------------------------ prepare / statistics


def test_fitted_stats_and_prepare_normalise() -> None:
    options = tiny_options()
    processor, images = fitted(options, count=5)
    stack = np.stack(images).astype(np.float64) / 255  # already image_size square: prepare keeps the pixels
    np.testing.assert_allclose(processor.mean, stack.mean(axis=(0, 1, 2)), **F32)
    np.testing.assert_allclose(processor.std, stack.std(axis=(0, 1, 2)), **F32)

    image = processor.decode(images[0])
    out = processor.prepare(image)
    assert out.shape == (3, 16, 16)
    mean = torch.tensor(processor.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(processor.std, dtype=torch.float32).view(3, 1, 1)
    torch.testing.assert_close(out, (image - mean) / std)

    wide = processor.decode(random_images(1, 20, 40)[0])
    assert processor.prepare(wide).shape == (3, 16, 16)
    given = build_processor(tiny_options(mean=[0.1, 0.2, 0.3], std=[1.0, 2.0, 3.0]), corpus=None)
    assert given.mean == [0.1, 0.2, 0.3] and given.std == [1.0, 2.0, 3.0]


def test_stats_use_at_most_stats_samples() -> None:
    seen = []

    def corpus():
        for i, image in enumerate(random_images(10, 16, 16)):
            seen.append(i)
            yield image

    build_processor(tiny_options(stats_samples=3), corpus())
    assert len(seen) <= 4


# ------------------------------------------------------------------------------------------------ augment


def test_augment_deterministic_per_seed() -> None:
    options = tiny_options(blur_p=0.5, grayscale_p=0.5)
    processor, images = fitted(options)
    image = processor.decode(random_images(1, 24, 30, seed=3)[0])
    views = [processor.augment(image, np.random.default_rng(seed)) for seed in (7, 7, 8)]
    assert all(v.shape == (3, 16, 16) and v.dtype == torch.float32 for v in views)
    assert torch.equal(views[0], views[1])
    assert not torch.equal(views[0], views[2])
    torch.manual_seed(0)  # torch's global RNG must play no part
    again = processor.augment(image, np.random.default_rng(7))
    assert torch.equal(again, views[0])


def test_flip_and_crop_keep_shapes() -> None:
    options = tiny_options(crop_scale=(1.0, 1.0), color_jitter=0.0, grayscale_p=0.0, flip=True)
    processor, images = fitted(options)
    image = processor.decode(images[0])
    prepared = processor.prepare(image)
    flipped = prepared.flip(-1)
    kinds = set()
    for seed in range(12):
        view = processor.augment(image, np.random.default_rng(seed))
        assert view.shape == prepared.shape
        if torch.allclose(view, prepared, atol=1e-5):
            kinds.add("same")
        elif torch.allclose(view, flipped, atol=1e-5):
            kinds.add("flipped")
        else:
            kinds.add("other")
    assert kinds == {"same", "flipped"}

    grey = ImageProcessor(tiny_options(channels=1, blur_p=1.0), [0.5], [0.5])
    view = grey.augment(grey.decode(random_images(1, 20, 18, channels=1)[0]), np.random.default_rng(0))
    assert view.shape == (1, 16, 16)


@pytest.mark.parametrize("encoder_kind", ["vit", "resnet"])
def test_crop_size_makes_smaller_views_that_both_encoders_take(encoder_kind: str) -> None:
    """``crop_size`` sets the side of the random views only: a whole-image crop is the image resized to it, the
    prepared (evaluated) image keeps ``image_size``, and both encoders give one token per patch of either."""
    with pytest.raises(ValidationError, match="crop_size 6 must be a multiple of patch_size 4"):
        tiny_options(crop_size=6)
    options = tiny_options(encoder=encoder_kind, crop_size=8, crop_scale=(1.0, 1.0), color_jitter=0.0, grayscale_p=0.0)
    processor, images = fitted(options)
    image = processor.decode(random_images(1, 16, 16, seed=5)[0])
    view = processor.augment(image, np.random.default_rng(0))
    assert view.shape == (3, 8, 8) and processor.prepare(image).shape == (3, 16, 16)
    resized = torchvision_resize(image, 8)
    torch.testing.assert_close(view, processor.normalize(resized), **F32)
    encoder = build_encoder(options, processor).eval()
    with torch.no_grad():
        small = encoder(processor.collate([view, view]))
        full = encoder(processor.collate([processor.prepare(image)] * 2))
    assert small.tokens.shape == (2, 4, 16) and full.tokens.shape == (2, 16, 16)
    assert small.pooled.shape == full.pooled.shape == (2, 16)

    # Masking a small view hides the patches of its own grid: their pixels never reach the output.
    masked = processor.mask(processor.collate([view, view]), 0.5, torch.Generator().manual_seed(0))
    hidden = masked.mask[..., None] * torch.randn_like(mmssl_image.patchify(masked.batch.data, 4)) * 5
    noisy = masked.batch.data + mmssl_image.unpatchify(hidden, 4, (2, 2), 3)
    with torch.no_grad():
        out = encoder(masked.batch)
        out_noisy = encoder(ModalityBatch(noisy, keep=masked.batch.keep))
    assert out.tokens.shape == (2, 2, 16)
    torch.testing.assert_close(out_noisy.tokens, out.tokens, **F32)
    torch.testing.assert_close(out_noisy.pooled, out.pooled, **F32)


def torchvision_resize(image: torch.Tensor, side: int) -> torch.Tensor:
    """The whole image resized to ``side`` (antialiased, torchvision's default), clamped to [0, 1] as views are.

    Shapes: image [C, H, W] -> [C, side, side]
    """
    import torchvision.transforms.v2.functional as TF

    return TF.resize(image, [side, side], antialias=True).clamp(0.0, 1.0)


# ----------------------------------------------------------------------------------------- collate / mask


def test_collate_shape() -> None:
    processor, images = fitted(tiny_options())
    batch = processor.collate([processor.prepare(processor.decode(i)) for i in images])
    assert isinstance(batch, ModalityBatch)
    assert batch.data.shape == (4, 3, 16, 16) and batch.keep is None and len(batch) == 4


def manual_patchify(images: np.ndarray, p: int) -> np.ndarray:
    """Independent reference: loops over the grid row-major; each patch is (p, p, C) flattened."""
    b, c, h, w = images.shape
    out = []
    for image in images:
        patches = []
        for row in range(h // p):
            for col in range(w // p):
                block = image[:, row * p : (row + 1) * p, col * p : (col + 1) * p]  # [C, p, p]
                patches.append(block.transpose(1, 2, 0).reshape(-1))
        out.append(patches)
    return np.asarray(out)


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_mask_keep_counts_and_target(norm_pix_loss: bool) -> None:
    options = tiny_options(norm_pix_loss=norm_pix_loss)
    processor, images = fitted(options)
    batch = processor.collate([processor.prepare(processor.decode(i)) for i in images])
    masked = processor.mask(batch, 0.75, torch.Generator().manual_seed(0))
    assert isinstance(masked, MaskedInput) and masked.kind == "continuous"
    n, k = 16, 4
    assert masked.batch.keep.shape == (4, k)
    assert masked.mask.shape == (4, n) and masked.mask.dtype == torch.bool
    assert torch.all(masked.mask.sum(1) == n - k)
    for row in range(4):
        assert not masked.mask[row, masked.batch.keep[row]].any()

    expected = manual_patchify(batch.data.numpy().astype(np.float64), 4)
    if norm_pix_loss:
        mean = expected.mean(-1, keepdims=True)
        var = expected.var(-1, ddof=1, keepdims=True)
        expected = (expected - mean) / np.sqrt(var + 1e-6)
    assert masked.target.shape == (4, n, 4 * 4 * 3)
    np.testing.assert_allclose(masked.target.numpy(), expected, **F32)

    back = mmssl_image.unpatchify(mmssl_image.patchify(batch.data, 4), 4, (4, 4), 3)
    assert torch.equal(back, batch.data)


# ------------------------------------------------------------------------------------------------ encoder


@pytest.mark.parametrize(("encoder_kind", "pool"), [("vit", "cls"), ("vit", "mean"), ("resnet", "mean")])
def test_encoder_shapes_and_visible_only(encoder_kind: str, pool: str) -> None:
    options = tiny_options(pool=pool, encoder=encoder_kind)
    processor, images = fitted(options)
    encoder = build_encoder(options, processor).eval()
    batch = processor.collate([processor.prepare(processor.decode(i)) for i in images])
    with torch.no_grad():
        full = encoder(batch)
        assert full.tokens.shape == (4, 16, 16) and full.pooled.shape == (4, 16)
        masked = processor.mask(batch, 0.75, torch.Generator().manual_seed(1))
        out = encoder(masked.batch)
        assert out.tokens.shape == (4, 4, 16) and out.pooled.shape == (4, 16)

        # Changing hidden patches leaves the output unchanged; changing a kept one does not.
        grid = mmssl_image.patchify(batch.data, 4)
        noisy = grid + masked.mask.unsqueeze(-1) * torch.randn_like(grid) * 5
        hidden_changed = mmssl_image.unpatchify(noisy, 4, (4, 4), 3)
        assert not torch.equal(hidden_changed, batch.data)
        out2 = encoder(ModalityBatch(hidden_changed, keep=masked.batch.keep))
        torch.testing.assert_close(out2.tokens, out.tokens)
        torch.testing.assert_close(out2.pooled, out.pooled)
        kept_changed = grid.clone()
        kept_changed[0, masked.batch.keep[0, 0]] += 1.0
        out3 = encoder(ModalityBatch(mmssl_image.unpatchify(kept_changed, 4, (4, 4), 3), keep=masked.batch.keep))
        assert not torch.allclose(out3.tokens[0], out.tokens[0])

    assert "embedder.positions" not in encoder.state_dict()


def test_encoder_auto_picks_resnet_for_small_images() -> None:
    assert tiny_options(encoder="auto", image_size=32, patch_size=4).encoder_kind == "resnet"
    assert tiny_options(encoder="auto", image_size=224, patch_size=16).encoder_kind == "vit"
    assert isinstance(build_encoder(tiny_options(encoder="auto")), ResNetEncoder)
    assert isinstance(build_encoder(tiny_options(encoder="vit")), TransformerEncoder)
    ImageOptions(image_size=16, patch_size=4, width=16, heads=3, encoder="resnet")  # heads only matter to the ViT
    with pytest.raises(ValueError, match="heads 3 must divide width 16"):
        ImageOptions(image_size=16, patch_size=4, width=16, heads=3, encoder="vit")


def test_resnet_visible_pixels_match_a_loop() -> None:
    grid, p = 3, 2
    keep = torch.tensor([[0, 4, 8], [1, 2, 3]])
    expected = torch.zeros(2, 1, grid * p, grid * p)
    for b in range(2):
        for index in keep[b].tolist():
            row, col = divmod(index, grid)
            expected[b, 0, row * p : (row + 1) * p, col * p : (col + 1) * p] = 1.0
    assert torch.equal(visible_pixels(keep, grid, p, (grid * p, grid * p)), expected)


def test_resnet_token_is_its_patch_cell() -> None:
    """Each ResNet token is the last feature map at its patch cell, layer-normalised, in patchify's row-major order."""
    options = tiny_options(encoder="resnet", image_size=16, patch_size=4)
    encoder = build_encoder(options).eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = encoder(ModalityBatch(images))
        fmap = encoder.stages(encoder.stem(images))  # [2, 16, 4, 4]: one cell per patch already
        cells = torch.stack([fmap[:, :, i // 4, i % 4] for i in range(16)], dim=1)
        mean, var = cells.mean(-1, keepdim=True), cells.var(-1, unbiased=False, keepdim=True)
        expected = (cells - mean) / torch.sqrt(var + 1e-5)  # the final LayerNorm at its initial identity affine
    assert out.tokens.shape == (2, 16, 16)
    torch.testing.assert_close(out.tokens, expected, **F32)
    torch.testing.assert_close(out.pooled, expected.mean(1), **F32)


def test_masked_group_norm_normalises_each_group_over_its_visible_positions() -> None:
    """Statistics from the visible positions alone (gathered explicitly); hidden positions come out 0."""
    g = torch.Generator().manual_seed(0)
    norm = torch.nn.GroupNorm(2, 6)
    torch.nn.init.normal_(norm.weight, generator=g)
    torch.nn.init.normal_(norm.bias, generator=g)
    x = torch.randn(2, 6, 5, 5, generator=g) * 3 + 1
    visible = (torch.rand(2, 1, 5, 5, generator=g) < 0.4).float()
    expected = torch.zeros_like(x)
    for b in range(2):
        seen = visible[b, 0].bool()
        for group in range(2):
            channels = slice(3 * group, 3 * group + 3)
            values = x[b, channels][:, seen]
            mean, var = values.mean(), values.var(unbiased=False)
            normed = (x[b, channels] - mean) / torch.sqrt(var + norm.eps)
            affine = normed * norm.weight[channels, None, None] + norm.bias[channels, None, None]
            expected[b, channels] = affine * seen
    with torch.no_grad():
        torch.testing.assert_close(masked_group_norm(x, visible, norm), expected, **F32)
        everything = torch.ones(2, 1, 5, 5)
        torch.testing.assert_close(masked_group_norm(x, everything, norm), norm(x), **F32)
        low = masked_group_norm(x.bfloat16(), visible, norm)  # statistics in float32, output in bfloat16
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), expected, **BF16)


def test_resnet_sparse_masking_leaves_hidden_patches_out() -> None:
    """SparK's way: with every patch kept it is the plain forward; with some hidden, their cells stay 0 to the last
    layer and their pixels do not matter. Zeroed pixels alone (sparse_masking false) let every cell fill in."""
    encoder = build_encoder(tiny_options(encoder="resnet", image_size=16, patch_size=4)).eval()
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    keep = torch.tensor([[0, 2, 5, 7, 8, 13], [1, 3, 4, 6, 10, 15]])
    hidden = 1 - visible_pixels(keep, 4, 4, (16, 16))
    noise = 5 * hidden * torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        everything = encoder(ModalityBatch(images, keep=torch.arange(16).repeat(2, 1))).tokens
        masked = encoder(ModalityBatch(images, keep=keep)).tokens
        masked_noisy = encoder(ModalityBatch(images + noise, keep=keep)).tokens
        filled = (encoder.sparse_feature_map(images, keep).flatten(2).abs().sum(1) > 0).float()
        zeroed = encoder.feature_map(images * (1 - hidden))
    torch.testing.assert_close(everything, encoder(ModalityBatch(images)).tokens, **F32)
    torch.testing.assert_close(masked_noisy, masked, **F32)
    assert torch.equal(filled, visible_pixels(keep, 4, 1, (4, 4)).flatten(1))
    assert (zeroed.flatten(2).abs().sum(1) > 0).all()


def _region_mean_loop(tokens: torch.Tensor, grid: int, n: int, visible: torch.Tensor) -> torch.Tensor:
    """Means over adaptive-pooling regions by explicit loops: region i spans cells floor(i*g/n) .. ceil((i+1)*g/n)."""
    b, _, d = tokens.shape
    out = torch.zeros(b, n * n, d)
    for row in range(n):
        for col in range(n):
            rows = range(row * grid // n, -(-(row + 1) * grid // n))
            cols = range(col * grid // n, -(-(col + 1) * grid // n))
            cells = [r * grid + c for r in rows for c in cols]
            weight = visible[:, cells, None]
            out[:, row * n + col] = (tokens[:, cells] * weight).sum(1) / weight.sum(1).clamp_min(1e-6)
    return out.flatten(1)


def test_resnet_pyramid_pool_matches_region_loops() -> None:
    """Level 1 is the mean of the (kept) tokens; level 2 on a 7x7 grid averages four overlapping 4x4 regions."""
    grid, d = 7, 3
    tokens = torch.randn(2, grid * grid, d, generator=torch.Generator().manual_seed(0))
    everything = torch.ones(2, grid * grid)
    torch.testing.assert_close(pyramid_pool(tokens, grid, (1,)), tokens.mean(1), **F32)
    expected = torch.cat([_region_mean_loop(tokens, grid, n, everything) for n in (1, 2)], dim=1)
    torch.testing.assert_close(pyramid_pool(tokens, grid, (1, 2)), expected, **F32)

    keep = torch.tensor([[0, 1, 2, 10, 30, 48], [5, 6, 7, 8, 9, 40]])
    visible = torch.zeros(2, grid * grid).scatter_(1, keep, 1.0)
    expected = torch.cat([_region_mean_loop(tokens, grid, n, visible) for n in (1, 2, 3)], dim=1)
    torch.testing.assert_close(pyramid_pool(tokens, grid, (1, 2, 3), keep), expected, **F32)
    kept_mean = torch.stack([tokens[i, keep[i]].mean(0) for i in range(2)])
    torch.testing.assert_close(pyramid_pool(tokens, grid, (1,), keep), kept_mean, **F32)


def test_resnet_pool_levels_widen_the_pooled_embedding_only() -> None:
    options = tiny_options(encoder="resnet", image_size=16, patch_size=4, pool_levels=[1, 2])
    encoder = build_encoder(options).eval()
    out = encoder(ModalityBatch(torch.randn(2, 3, 16, 16)))
    assert out.tokens.shape == (2, 16, 16) and out.pooled.shape == (2, 5 * 16)
    assert (encoder.width, encoder.pooled_width) == (16, 80)
    torch.testing.assert_close(out.pooled[:, :16], out.tokens.mean(1), **F32)
    with pytest.raises(ValidationError, match="pool_levels .* is for the ResNet encoder"):
        tiny_options(encoder="vit", pool_levels=[1, 2])
    with pytest.raises(ValidationError, match=r"each level must be between 1 and the token grid 4"):
        tiny_options(encoder="resnet", pool_levels=[1, 5])


# ------------------------------------------------------------------------------------- save/load, plugin


def test_processor_save_load_round_trip(tmp_path: Path) -> None:
    options = tiny_options()
    processor, images = fitted(options)
    processor.save(tmp_path)
    assert (tmp_path / "image.json").is_file()
    loaded = load_processor(options, tmp_path)
    assert loaded.mean == processor.mean and loaded.std == processor.std
    image = processor.decode(images[1])
    assert torch.equal(loaded.prepare(image), processor.prepare(image))
    with pytest.raises(ValueError, match="channels"):
        load_processor(tiny_options(channels=1), tmp_path)


def test_plugin_found_through_entry_point() -> None:
    (ep,) = [ep for ep in entry_points(group="mmssl.modalities") if ep.name == "image"]
    assert ep.load() is mmssl_image.plugin
    from mmssl.plugins import get_modality

    plugin = get_modality("image")
    assert plugin is mmssl_image.plugin
    assert plugin.capabilities == Capabilities(views=True, masking="continuous", pairing=True, local_views=True)
    assert plugin.description and "\n" not in plugin.description
    options = plugin.parse_options({"image_size": 16, "patch_size": 4, "width": 16, "heads": 2, "depth": 1})
    processor = plugin.build_processor(options, random_images(2, 16, 16))
    assert isinstance(processor, Processor)
    assert isinstance(plugin.build_encoder(options, processor), torch.nn.Module)


# ------------------------------------------------------------------------------------------------ real data


def real_images(count: int) -> np.ndarray:
    """A few real greyscale images: Fashion-MNIST (Debian package) when installed, else scikit-learn digits."""
    if FASHION_MNIST.is_file():
        with gzip.open(FASHION_MNIST) as f:
            return np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:count]
    from sklearn.datasets import load_digits

    digits = load_digits().images[:count]  # 8x8 floats in 0..16
    return digits / 16.0


def test_real_images_pipeline() -> None:
    raw = list(real_images(6))
    options = tiny_options(patch_size=4, image_size=16)
    processor = build_processor(options, raw)
    decoded = [processor.decode(r) for r in raw]
    assert all(d.shape == (3, *raw[0].shape) for d in decoded)
    assert all(0.0 <= d.min() and d.max() <= 1.0 and d.std() > 0.05 for d in decoded)  # real, non-blank content
    assert all(torch.equal(d[0], d[1]) for d in decoded)  # greyscale repeated to RGB
    assert 0.0 < processor.mean[0] < 1.0 and processor.std[0] > 0.05
    batch = processor.collate([processor.augment(d, np.random.default_rng(i)) for i, d in enumerate(decoded)])
    masked = processor.mask(batch, 0.5)
    encoder = build_encoder(options, processor)
    out = encoder(masked.batch)
    assert out.tokens.shape == (6, 8, 16) and torch.isfinite(out.pooled).all()
