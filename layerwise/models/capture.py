"""Forward hooks that record the raw residual-stream output of chosen decoder layers.

`output_hidden_states` is not used: its last entry has the final norm applied, and it keeps every
layer alive. Hooks record exactly the requested layers, and the forward pass stops right after
the highest one (early exit); the LM head is never computed.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class _StopForward(Exception):
    """Raised by the hook of the last needed layer to end the forward pass early."""


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The text decoder's layer list, found through the model's own API."""
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise TypeError(f"{type(decoder).__name__} has no `layers` ModuleList; unsupported architecture")
    return layers


@contextmanager
def capture_layers(model: torch.nn.Module, layers: list[int], early_exit: bool = True) -> Iterator[dict[int, torch.Tensor]]:
    """Yield a dict that each forward pass fills with {layer: output [B, T, H]}."""
    modules = decoder_layers(model)
    captured: dict[int, torch.Tensor] = {}
    last = max(layers)

    def make_hook(index: int):
        def hook(_module, _args, output):
            captured[index] = output[0] if isinstance(output, tuple) else output
            if early_exit and index == last:
                raise _StopForward

        return hook

    handles = [modules[i].register_forward_hook(make_hook(i)) for i in sorted(set(layers))]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def run_until(model: torch.nn.Module, **inputs) -> None:
    """Run the base model (no LM head) until the capture hook stops it."""
    try:
        model.base_model(**inputs, use_cache=False)
    except _StopForward:
        pass
