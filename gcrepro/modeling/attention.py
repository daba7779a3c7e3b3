"""Read out the GC blocks' softmax attention maps, at no cost when nobody asks.

    with capture_attention(model) as maps:
        model(images)
    maps["backbone.body.layer3.0.context_block"]   # Tensor [N, 1, H, W], sums to 1 over H, W

Only blocks with "att" pooling have a map. Inside the ``with`` the blocks run the reference
implementation (the fused op never materialises the map); each forward overwrites its block's
entry, so after several forwards the dict holds the last one. Outside the ``with`` nothing is stored.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn

from gcrepro.modeling.context_block import ContextBlock


def gc_blocks(model: nn.Module) -> list[tuple[str, ContextBlock]]:
    """Every ContextBlock of ``model`` with its qualified name, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, ContextBlock)]


@contextmanager
def capture_attention(model: nn.Module) -> Iterator[dict[str, Tensor]]:
    """Context manager yielding ``{qualified block name: softmax map [N, 1, H, W] (detached)}``,
    filled by every attention-pooling ContextBlock forward inside the ``with``."""
    maps: dict[str, Tensor] = {}
    blocks = [(name, b) for name, b in gc_blocks(model) if b.pooling_type == "att"]
    for name, block in blocks:
        if block._attention_sink is not None:
            raise RuntimeError(f"capture_attention: block {name!r} is already being captured (nested capture)")
    try:
        for name, block in blocks:
            block._attention_sink = (maps, name)
        yield maps
    finally:
        for _, block in blocks:
            block._attention_sink = None
