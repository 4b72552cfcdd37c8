"""What kind of module is this: definitions every layer of wcnorm shares.

The lowest module of the package (it imports nothing of wcnorm), so the methods,
the models and the training loop can all ask the same questions the same way.
"""

from __future__ import annotations

from torch import nn

# Activation normalizers. BatchNorm cancels any per-channel scale of its input; GroupNorm
# pools statistics across the channels of a group and LayerNorm across all features, so
# neither cancels a per-channel scale (ENorm must treat them differently).
BATCH_NORMS = (nn.modules.batchnorm._BatchNorm,)
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP/DataParallel (``.module``) and torch.compile
    (``._orig_mod``) wrappers, for clean state dicts and graph tracing."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model
