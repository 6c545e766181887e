"""Decoding raw image values (paths, bytes, PIL images, arrays) to float tensors in [0, 1]."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from mmssl.data.media_cells import is_media_cell, media_payload

#: ITU-R BT.601 luma weights (R, G, B), as used by PIL's ``convert("L")``.
LUMA_601 = (0.299, 0.587, 0.114)

_EXPECTED = (
    "a path to an image file or .npy file, encoded image bytes (or a Hugging Face datasets cell with bytes or a "
    "path), a PIL image, or a numpy array or nested list (H, W) / (H, W, C) of uint8 0..255 or float 0..1"
)


def decode_image(raw: Any, channels: int = 3) -> Tensor:
    """Decode one raw image value.

    Transparent images are composited on white; greyscale is repeated to RGB; RGB becomes greyscale with the
    ITU-R 601 luma weights.

    Args:
        raw: A ``str``/``Path`` to a PIL-readable image or a ``.npy`` file, ``bytes`` of an encoded image, a
            ``PIL.Image.Image``, or a numpy array (H, W) / (H, W, C) with C in 1..4 (2 = grey + alpha,
            4 = RGBA), dtype uint8 (0..255), bool, or float (0..1); a nested list (a manifest's JSON array) is
            read as uint8 when every value is an integer in 0..255 and above 1, as float otherwise; a Hugging Face
            datasets ``{"bytes", "path"}`` cell is read from its bytes, or else its path (``mmssl.data.media_cells``).
        channels: Output channels, 1 or 3.

    Returns:
        The image as a float32 tensor in [0, 1].

    Shapes:
        output: [channels, H, W]

    Raises:
        FileNotFoundError: A path that does not exist.
        ValueError: A file, bytes or array that is not a readable image.
        TypeError: A value of another type.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if is_media_cell(raw):  # a Hugging Face datasets Image cell: {"bytes", "path"}
        raw = media_payload(raw)
    if isinstance(raw, str | Path):
        array = _read_path(Path(raw))
        what = f"image file {raw}"
    elif isinstance(raw, bytes | bytearray | memoryview):
        array = _read_bytes(bytes(raw))
        what = f"image bytes ({len(raw)} bytes)"
    elif isinstance(raw, Image.Image):
        array = pil_to_array(raw)
        what = f"PIL image (mode {raw.mode}, size {raw.size})"
    elif isinstance(raw, np.ndarray):
        array = raw
        what = f"array of shape {raw.shape} and dtype {raw.dtype}"
    elif isinstance(raw, list | tuple):  # a manifest's inline JSON array
        array = _from_nested_list(raw)
        what = f"nested list of shape {array.shape}"
    else:
        raise TypeError(f"cannot decode an image from {type(raw).__name__}: expected {_EXPECTED}")
    pixels = _to_float_hwc(array, what)
    pixels = _composite_alpha(pixels)
    pixels = _convert_channels(pixels, channels)
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32))


def _from_nested_list(raw: list | tuple) -> np.ndarray:
    """A nested list of numbers as an array: uint8 when every value is an integer in 0..255 and one is above 1
    (0..255 pixels), float otherwise (0..1 pixels, checked by the caller)."""
    try:
        array = np.asarray(raw, dtype=np.float64)
    except ValueError as err:  # ragged rows, or values that are not numbers
        raise ValueError(f"cannot decode an image from a nested list: {err}") from err
    if array.size and np.all(array == np.round(array)) and array.min() >= 0 and array.max() > 1 and array.max() <= 255:
        return array.astype(np.uint8)
    return array


def _read_path(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} not found (expected {_EXPECTED})")
    if path.suffix.lower() == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise ValueError(f"image file {path} is not a readable .npy array: {err}") from err
    try:
        with Image.open(path) as image:
            return pil_to_array(image)
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"image file {path} is not an image PIL can read: {err}") from err


def _read_bytes(data: bytes) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return pil_to_array(image)
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(
            f"image bytes ({len(data)} bytes, starting {data[:8]!r}) are not an encoded image: {err}"
        ) from err


def pil_to_array(image: Image.Image) -> np.ndarray:
    """Convert a PIL image (EXIF orientation applied) to an array that ``decode_image`` understands.

    Returns uint8 (H, W) / (H, W, 2|3|4) arrays for 8-bit modes, and float (H, W) arrays in [0, 1] for 16-bit
    ("I;16", "I") and float ("F") greyscale modes.
    """
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return np.asarray(image)
    if mode == "1":
        return np.asarray(image.convert("L"))
    if mode.startswith("I"):  # 16-bit greyscale ("I;16", "I;16B", ...) or 32-bit "I" holding 16-bit values
        return np.asarray(image, dtype=np.float64) / 65535.0
    if mode == "F":
        return np.asarray(image, dtype=np.float64)
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in image.info
        return np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
    return np.asarray(image.convert("RGBA" if "A" in mode else "RGB"))


def _to_float_hwc(array: np.ndarray, what: str) -> np.ndarray:
    """Check an array and scale it to float64 (H, W, C) in [0, 1]."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4) or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"cannot decode {what}: expected shape (H, W) or (H, W, C) with C in 1..4")
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    if array.dtype == np.bool_:
        return array.astype(np.float64)
    if np.issubdtype(array.dtype, np.floating):
        pixels = array.astype(np.float64)
        if not np.isfinite(pixels).all():
            raise ValueError(f"cannot decode {what}: it holds NaN or infinite values")
        low, high = float(pixels.min()), float(pixels.max())
        if low < -1e-6 or high > 1.0 + 1e-6:
            raise ValueError(f"cannot decode {what}: float pixels must lie in [0, 1], found [{low:g}, {high:g}]")
        return pixels.clip(0.0, 1.0)
    raise ValueError(f"cannot decode {what}: expected dtype uint8 (0..255), bool, or float (0..1)")


def _composite_alpha(pixels: np.ndarray) -> np.ndarray:
    """Composite grey+alpha (C=2) or RGBA (C=4) on white. Shapes: (H, W, C) -> (H, W, C - 1 or C)."""
    if pixels.shape[2] not in (2, 4):
        return pixels
    colour, alpha = pixels[:, :, :-1], pixels[:, :, -1:]
    return colour * alpha + (1.0 - alpha)


def _convert_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """Greyscale <-> RGB. Shapes: (H, W, 1 | 3) -> (H, W, channels)."""
    have = pixels.shape[2]
    if have == channels:
        return pixels
    if channels == 3:
        return np.repeat(pixels, 3, axis=2)
    return (pixels @ np.asarray(LUMA_601))[:, :, None]
