"""Silence the FutureWarning torch_geometric 2.8 raises at import (it scripts a helper with the deprecated
``torch.jit.script``): it is torch_geometric's, and users of the plugin can do nothing about it."""

import warnings

warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
