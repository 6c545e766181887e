"""Batch norm whose statistics span the rows of every process (SimCLR's "global BN", on any backend).

``torch.nn.SyncBatchNorm`` needs a GPU; this one gathers the rows with gradient (``gather_rows``), so on two
gloo processes a projection head normalises exactly as on one process with the whole batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmssl.objectives.distributed import gather_rows, world_size


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` (same parameters, buffers and state-dict keys) with training statistics over the
    rows of all processes; on one process, or in eval mode, it is ``nn.BatchNorm1d``.

    Every process must call it in lock-step (it makes collectives), as objectives do.

    Shapes:
        x: ``[n, C]`` (n may differ between processes) -> ``[n, C]``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or world_size() == 1 or x.dim() != 2:
            return super().forward(x)
        x_full = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        rows, _, _ = gather_rows(x_full)
        count = rows.shape[0]
        mean = rows.mean(0)
        var = rows.var(0, correction=0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * count / max(count - 1, 1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        out = (x_full - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            out = out * self.weight + self.bias
        return out.to(x.dtype)
