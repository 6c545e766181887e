"""Decoding raw audio values (paths, bytes, arrays) to mono float waveforms at the options' sample rate.

Files and bytes are read with ``soundfile`` (WAV, FLAC, OGG/Vorbis and whatever else libsndfile reads);
resampling is ``torchaudio.functional.resample`` (windowed sinc). torchaudio's own I/O is not used.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from torch import Tensor

from mmssl.data.media_cells import is_media_cell, media_payload

_EXPECTED = (
    "a path to an audio file (WAV/FLAC/OGG, anything libsndfile reads), encoded audio bytes, a numpy array "
    "(samples,) / (channels, samples) / (samples, channels) at the options' sample rate, "
    "or a tuple (array, sample_rate)"
)


def decode_audio(raw: Any, sample_rate: int) -> Tensor:
    """Decode one raw audio value to a mono waveform at ``sample_rate``.

    Channels are averaged (downmix); other sample rates are resampled.

    Args:
        raw: A ``str``/``Path`` to an audio file, ``bytes`` of an encoded file, a numpy array or tensor taken
            to be at ``sample_rate`` (1-D, or 2-D where the shorter axis holds the channels), or a tuple
            ``(array, rate)`` for an array at another rate. Integer arrays are scaled to [-1, 1) (int16: by
            2**15, int32: by 2**31); float arrays are used as they are. A Hugging Face datasets ``Audio`` cell
            is read from its ``bytes``, ``path`` or ``(array, sampling_rate)`` (``mmssl.data.media_cells``).
        sample_rate: Output sample rate in Hz.

    Returns:
        float32 waveform.

    Shapes:
        output: [samples]

    Raises:
        FileNotFoundError: A path that does not exist.
        ValueError: A file, bytes or array that is not readable audio (the message names the file).
        TypeError: A value of another type.
    """
    if is_media_cell(raw):  # a Hugging Face datasets Audio cell: {"bytes", "path"} or {"array", "sampling_rate"}
        raw = media_payload(raw)
    if isinstance(raw, str | Path):
        array, rate = _read_path(Path(raw))
        what = f"audio file {raw}"
    elif isinstance(raw, bytes | bytearray | memoryview):
        array, rate = _read_bytes(bytes(raw))
        what = f"audio bytes ({len(raw)} bytes)"
    elif isinstance(raw, tuple) and len(raw) == 2 and isinstance(raw[1], int | np.integer):
        array, rate = _channels_first(_as_array(raw[0]), "array"), int(raw[1])
        what = f"array of shape {np.shape(raw[0])} at {rate} Hz"
    elif isinstance(raw, np.ndarray | Tensor):
        array, rate = _channels_first(_as_array(raw), "array"), sample_rate
        what = f"array of shape {tuple(raw.shape)}"
    else:
        raise TypeError(f"cannot decode audio from {type(raw).__name__}: expected {_EXPECTED}")
    if rate <= 0:
        raise ValueError(f"cannot decode {what}: sample rate must be positive, got {rate}")
    wave = _to_float(array, what).mean(axis=0)
    if wave.size == 0:
        raise ValueError(f"cannot decode {what}: it holds no samples")
    out = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    if rate != sample_rate:
        out = AF.resample(out, rate, sample_rate)
    return out


def _read_path(path: Path) -> tuple[np.ndarray, int]:
    if not path.is_file():
        raise FileNotFoundError(f"audio file {path} not found (expected {_EXPECTED})")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise ValueError(f"audio file {path} is not audio soundfile can read: {err}") from err
    return data.T, int(rate)


def _read_bytes(data: bytes) -> tuple[np.ndarray, int]:
    try:
        array, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        what = f"audio bytes ({len(data)} bytes, starting {data[:8]!r})"
        raise ValueError(f"{what} are not encoded audio: {err}") from err
    return array.T, int(rate)


def _as_array(value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    raise TypeError(f"cannot decode audio from {type(value).__name__}: expected {_EXPECTED}")


def _channels_first(array: np.ndarray, what: str) -> np.ndarray:
    """(samples,) -> (1, samples); 2-D arrays -> (channels, samples), the shorter axis being the channels."""
    if array.ndim == 1:
        return array[None, :]
    if array.ndim == 2:
        return array if array.shape[0] <= array.shape[1] else array.T
    raise ValueError(f"cannot decode {what} of shape {array.shape}: expected (samples,) or a 2-D (channels, samples)")


def _to_float(array: np.ndarray, what: str) -> np.ndarray:
    if np.issubdtype(array.dtype, np.floating):
        out = array.astype(np.float32)
        if not np.isfinite(out).all():
            raise ValueError(f"cannot decode {what}: it holds NaN or infinite values")
        return out
    if array.dtype == np.int16:
        return array.astype(np.float32) / 32768.0
    if array.dtype == np.int32:
        return (array.astype(np.float64) / 2147483648.0).astype(np.float32)
    if array.dtype == np.uint8:  # 8-bit WAV convention: unsigned, centred on 128
        return (array.astype(np.float32) - 128.0) / 128.0
    raise ValueError(f"cannot decode {what}: expected a float, int16, int32 or uint8 array, got {array.dtype}")
