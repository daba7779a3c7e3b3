"""Read out the GC blocks' softmax attention maps, at no cost when nobody asks.

    with capture_attention(model) as maps:
        model(images)
    maps["backbone.body.layer3.0.context_block"]   # Tensor [N, 1, H, W], sums to 1 over H, W

Only blocks with "att" pooling have a map. A forward pre-hook on each such block computes the map
from the block's input with the reference ``gc_attention`` (the block itself runs whichever
implementation it runs; the compiled op never materialises the map). Each forward overwrites its
block's entry, so after several forwards the dict holds the last one. The hooks are removed when
the ``with`` ends; outside it nothing is computed or stored.
"""
from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import Tensor, nn

from gcrepro.modeling.context_block import ContextBlock
from gcrepro.ops.reference import gc_attention

_capturing: weakref.WeakSet[ContextBlock] = weakref.WeakSet()  # blocks hooked by a capture now


def gc_blocks(model: nn.Module) -> list[tuple[str, ContextBlock]]:
    """Every ContextBlock of ``model`` with its qualified name, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, ContextBlock)]


@contextmanager
def capture_attention(model: nn.Module) -> Iterator[dict[str, Tensor]]:
    """Context manager yielding ``{qualified block name: softmax map [N, 1, H, W] (detached)}``,
    filled by every attention-pooling ContextBlock forward inside the ``with``. Capturing a block
    that another capture holds is an error."""
    maps: dict[str, Tensor] = {}
    blocks = [(name, b) for name, b in gc_blocks(model) if b.pooling_type == "att"]
    for name, block in blocks:
        if block in _capturing:
            raise RuntimeError(f"capture_attention: block {name!r} is already being captured (nested capture)")

    def hook_for(name: str):
        def store_map(block: ContextBlock, args: tuple) -> None:
            with torch.no_grad():
                maps[name] = gc_attention(args[0], block.conv_mask.weight, block.conv_mask.bias)  # [N, 1, H, W]
        return store_map

    with ExitStack() as hooks:
        for name, block in blocks:
            hooks.callback(block.register_forward_pre_hook(hook_for(name)).remove)
            _capturing.add(block)
            hooks.callback(_capturing.discard, block)
        yield maps
