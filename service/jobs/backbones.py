"""The loaded backbones of a process: at most ``KEEP_BACKBONES``, the most recently used.

What a process embeds with is the base backbone of ``[training]`` (head candidates, their
pushes) and the active version's (a push, /predict; a fine-tuned one after a promotion). Kept by
recent use, the two are the active and the one candidate; a third (a version activated in
between, a settings change) evicts the one used longest ago, and its memory (the GPU's too) is
freed instead of staying for the life of the worker.
"""

import gc
from collections import OrderedDict

import torch

from service.vision.backbone import Backbone, BackboneSpec, resolve_device

KEEP_BACKBONES = 2  # the active version's and one candidate's


class BackboneCache(OrderedDict[str, Backbone]):
    """Backbones by ``identity@device``, least recently used first."""

    def load(self, spec: BackboneSpec, device: str) -> Backbone:
        """The backbone for ``spec`` on ``device``, loaded now if it is not yet."""
        key = f"{spec.identity()}@{device}"
        if key in self:
            self.move_to_end(key)
            return self[key]
        while len(self) >= KEEP_BACKBONES:
            _, evicted = self.popitem(last=False)
            where = evicted.device
            del evicted  # the last reference: its tensors can go
            _free(where)
        self[key] = Backbone(spec, resolve_device(device))
        return self[key]


def _free(device: torch.device) -> None:
    """Let an evicted backbone's memory go now (on a GPU, back to the device)."""
    gc.collect()  # a module's parameters can sit in reference cycles
    if device.type == "cuda":
        torch.cuda.empty_cache()
