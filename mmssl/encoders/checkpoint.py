"""Reading a released checkpoint file without unpickling: safetensors, or torch with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmssl.encoders.base import ReleasedError

#: Keys under which training scripts commonly wrap a state dict.
WRAPPERS = ("state_dict", "model", "model_state", "module", "model_ema", "state_dict_ema")


def read_state_dict(file: str | Path) -> dict[str, Tensor]:
    """A checkpoint's state dict: ``.safetensors``, or a torch file read with ``weights_only=True``.

    Wrappers (``{"state_dict": ...}``, ``{"model": ...}``, ... see ``WRAPPERS``) are unwrapped and a ``module.``
    prefix on every key (DDP) is stripped.

    Raises:
        ReleasedError: The file is missing, unreadable, would need unpickling of objects, or holds no state dict
            of tensors; the message names the path.
    """
    path = Path(file)
    if not path.is_file():
        raise ReleasedError(f"encoder.path {str(file)!r}: no such checkpoint file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # safetensors / torch.load (UnpicklingError under weights_only) raise various types
        raise ReleasedError(
            f"encoder.path {str(file)!r}: could not read the checkpoint (safetensors, or torch with "
            f"weights_only=True): {err}"
        ) from err
    while isinstance(state, dict) and not any(isinstance(v, Tensor) for v in state.values()):
        inner = next((state[k] for k in WRAPPERS if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ReleasedError(
            f"encoder.path {str(file)!r}: expected a state dict of tensors (optionally under {list(WRAPPERS)})"
        )
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state
