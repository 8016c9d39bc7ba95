"""Forward hooks that ablate or scale SAE latents in the residual stream of the one loaded model.

`latent_hooks(model, edits, ...)` registers one forward hook per edited decoder layer on
`decoder_layers(model)` of exactly the model object it is given (never a copy: the research scripts hooked a
second, unused copy for the "combined" layer, which never fired), edits that layer's output hidden states
(`output[0]` when the layer returns a tuple) and counts, per layer, how often the hook fired and how many
positions it edited, so a caller can prove that every hooked layer took part.

`edits` maps a decoder layer index to `(sae, latents)`: the SAE of that layer and the latent indices A *of that
SAE* (indices of independently trained dictionaries do not correspond, so they always travel with their SAE).
`sae` is a SAELens SAE (`encode`, `decode`, `W_dec` [d_sae, d_in], `b_dec`) or any object with those.

Hooks (h = sae.encode(x), per position, as the SAE was trained: on per-token residual vectors):

- ``residual`` (default): x -> x - (1 - scale) * sum_{j in A} h_j(x) W_dec[j]. The SAE's reconstruction error
  and every other latent are left alone, so with A empty (or scale 1) the model is exactly unchanged; scale 0
  ablates the latents, scale > 1 amplifies them (their contribution becomes scale * h_j W_dec[j]).
- ``reconstruction`` (the published PaliGemma variant, for comparison): x -> decode(h'), h'_j = scale * h_j for
  j in A and h'_j = h_j otherwise. This replaces the residual stream by the SAE's reconstruction, so it changes
  the model **even with A empty**, by the SAE's reconstruction error at every edited position (an SAE trained
  on mean-pooled vectors and applied per token can destroy the output this way).

For SAELens architectures whose decoder is linear in the codes (standard, topk, jumprelu, gated, batchtopk,
matryoshka_batchtopk, with no run-time activation normalisation) and for plain objects, the residual edit is
computed from the rows W_dec[A] only (rows divided by their norm where the SAE rescales codes by the decoder
norm). Other SAELens SAEs (run-time `layer_norm` / `constant_norm_rescale`, `hook_z` reshaping, other
architectures) get the same edit as decode(h) - decode(h') from two encode/decode passes, which is what the
formula means in their input space.

Positions: ``all`` edits every position of every pass; ``generated`` only positions at or after each row's
prompt length. Positions are counted from the start of the sequence: a pre-hook on the decoder reads the KV
cache's length, so the prefill pass covers [0, T) and each later step one new position. The prompt length of a
row is `prompt_lengths[row]` (indices in the padded sequence the model sees) or, by default, the length of the
sequence's first pass (the prefill): under left padding, as `layerwise.intervention.generate` uses, that is
where every row's generated tokens begin. The first generated token is predicted at the last prompt position,
so `generated` never changes the first generated token.

The edit is computed in float32 and cast back to the hidden states' dtype. Load the SAE in float32
(`SAE.load_from_disk(folder, dtype="float32")`): its own encode/decode run in its dtype.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from layerwise.core.errors import LayerwiseError
from layerwise.models.capture import decoder_layers

HOOKS = ("residual", "reconstruction")
POSITIONS = ("all", "generated")
# SAELens architectures whose decode is `codes @ W_dec + b_dec` (given no run-time normalisation / reshaping)
_LINEAR_ARCHITECTURES = {"standard", "topk", "jumprelu", "gated", "batchtopk", "matryoshka_batchtopk"}


class HookError(LayerwiseError):
    """Invalid latent edits (layer, latent indices, SAE shape) or hook options."""


@dataclass
class _LayerEdit:
    layer: int
    sae: Any
    latents: torch.Tensor          # long [|A|], unique, sorted, on the SAE's device
    rows: torch.Tensor | None      # float32 [|A|, d_in]: the decoder rows of A (linear decoders), else None
    device: torch.device
    dtype: torch.dtype             # the SAE's dtype (its encode/decode run in it)


def _sae_weights(sae: Any, layer: int) -> torch.Tensor:
    w = getattr(sae, "W_dec", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise HookError(f"layer {layer}: the SAE ({type(sae).__name__}) has no W_dec matrix [d_sae, d_in]")
    for name in ("encode", "decode"):
        if not callable(getattr(sae, name, None)):
            raise HookError(f"layer {layer}: the SAE ({type(sae).__name__}) has no {name}()")
    return w


def _linear_decoder(sae: Any) -> bool:
    """Whether decode(h) is h @ W_dec (+ b_dec), so the edit can be computed from the rows W_dec[A]."""
    cfg = getattr(sae, "cfg", None)
    if cfg is None:
        return True                      # a plain object: the documented formula with its W_dec
    architecture = getattr(cfg, "architecture", None)
    name = architecture() if callable(architecture) else architecture
    return (name in _LINEAR_ARCHITECTURES
            and getattr(cfg, "normalize_activations", "none") in ("none", "expected_average_only_in")
            and getattr(cfg, "reshape_activations", "none") == "none")


def _prepare(layer: int, sae: Any, latents: Sequence[int] | torch.Tensor, hidden_size: int | None) -> _LayerEdit:
    w = _sae_weights(sae, layer)
    d_sae, d_in = w.shape
    if hidden_size is not None and d_in != hidden_size:
        raise HookError(f"layer {layer}: the SAE reads vectors of size {d_in}, the model's hidden size is {hidden_size}")
    idx = torch.as_tensor(latents if not isinstance(latents, torch.Tensor) else latents.detach().cpu(),
                          dtype=torch.long).flatten()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= d_sae):
        bad = [int(i) for i in idx if not 0 <= int(i) < d_sae][:5]
        raise HookError(f"layer {layer}: latent indices {bad} are outside the SAE's 0..{d_sae - 1}")
    idx = torch.unique(idx).to(w.device)    # a set: each latent counts once
    rows = None
    if _linear_decoder(sae):
        rows = w.detach()[idx].float()
        if getattr(getattr(sae, "cfg", None), "rescale_acts_by_decoder_norm", False):
            rows = rows / w.detach()[idx].float().norm(dim=-1, keepdim=True)
    return _LayerEdit(layer, sae, idx, rows, w.device, w.dtype)


def _find_cache(args: tuple, kwargs: dict) -> Any:
    """The KV cache passed to the decoder (any argument with `get_seq_length`), or None."""
    for value in (*kwargs.values(), *args):
        if value is not None and callable(getattr(value, "get_seq_length", None)):
            return value
    return None


class LatentHooks:
    """What `latent_hooks` yields: the hooked model, the edits and per-layer counters.

    `fired[layer]`  how many forward passes ran the layer's hook (each generation step is one);
    `edited[layer]` how many (row, position) pairs the hook selected for editing (padding positions of a
                    batch included; with `residual` and an empty latent set they are selected but left as they
                    are).
    """

    def __init__(self, model: torch.nn.Module, edits: Mapping[int, tuple[Any, Sequence[int] | torch.Tensor]], *,
                 hook: str = "residual", scale: float = 0.0, positions: str = "all",
                 prompt_lengths: Sequence[int] | torch.Tensor | int | None = None):
        if hook not in HOOKS:
            raise HookError(f"hook {hook!r} must be one of {', '.join(HOOKS)}")
        if positions not in POSITIONS:
            raise HookError(f"positions {positions!r} must be one of {', '.join(POSITIONS)}")
        scale = float(scale)
        if not scale >= 0:
            raise HookError(f"scale {scale} must be >= 0 (0 ablates, 1 leaves the latents, > 1 amplifies)")
        if not edits:
            raise HookError("no layer to hook: edits is empty")
        self.model = model
        self.layers = decoder_layers(model)
        hidden = _hidden_size(model)
        self.edits: dict[int, _LayerEdit] = {}
        for layer, pair in sorted(edits.items()):
            if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(self.layers):
                raise HookError(f"layer {layer!r} is not a decoder layer index 0..{len(self.layers) - 1}")
            try:
                sae, latents = pair
            except (TypeError, ValueError):
                raise HookError(f"layer {layer}: expected (sae, latent indices), got {type(pair).__name__}") from None
            self.edits[layer] = _prepare(layer, sae, latents, hidden)
        self.hook, self.scale, self.positions = hook, scale, positions
        self.prompt_lengths = None if prompt_lengths is None else \
            torch.as_tensor(prompt_lengths, dtype=torch.long).flatten()
        self.fired: dict[int, int] = {layer: 0 for layer in self.edits}
        self.edited: dict[int, int] = {layer: 0 for layer in self.edits}
        self._offset = 0                   # position of the current pass's first token in its sequence
        self._prompt: torch.Tensor | None = None   # [B] prompt lengths of the current sequence
        self._handles: list = []

    # ------------------------------------------------------------------ bookkeeping
    def reset_counts(self) -> None:
        for layer in self.edits:
            self.fired[layer] = self.edited[layer] = 0

    def counts(self) -> dict[int, tuple[int, int]]:
        """{layer: (fired, edited)}."""
        return {layer: (self.fired[layer], self.edited[layer]) for layer in self.edits}

    @property
    def noop(self) -> bool:
        """Whether the hooks leave the model exactly as it is (residual with no latent, or scale 1)."""
        return self.hook == "residual" and (self.scale == 1.0 or all(e.latents.numel() == 0 for e in self.edits.values()))

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> None:
        if self._handles:
            return
        decoder = self.model.get_decoder()
        try:
            self._handles.append(decoder.register_forward_pre_hook(self._on_decoder, with_kwargs=True))
            for layer in self.edits:
                self._handles.append(self.layers[layer].register_forward_hook(self._layer_hook(layer)))
        except BaseException:
            self.detach()
            raise

    def detach(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    # ------------------------------------------------------------------ hooks
    def _on_decoder(self, _module, args, kwargs) -> None:
        cache = _find_cache(args, kwargs)
        self._offset = int(cache.get_seq_length()) if cache is not None else 0
        if self._offset == 0:
            self._prompt = None            # a new sequence: its prompt length is set by its first pass

    def _selection(self, batch: int, length: int, device: torch.device) -> torch.Tensor | bool:
        """True (every position), False (none) or a bool mask [batch, length] of the positions to edit."""
        if self.positions == "all":
            return True
        if self._prompt is None:
            if self.prompt_lengths is not None:
                prompt = self.prompt_lengths.expand(batch) if self.prompt_lengths.numel() == 1 else self.prompt_lengths
                if prompt.numel() != batch:
                    raise HookError(f"prompt_lengths has {prompt.numel()} entries for a batch of {batch} rows")
                self._prompt = prompt.clone()
            else:
                self._prompt = torch.full((batch,), self._offset + length, dtype=torch.long)
        first, last = self._offset, self._offset + length
        if bool((self._prompt <= first).all()):
            return True
        if bool((self._prompt >= last).all()):
            return False
        pos = torch.arange(first, last, device=device)
        return pos[None, :] >= self._prompt.to(device)[:, None]

    def _layer_hook(self, layer: int):
        def hook(_module, _args, output):
            x = output[0] if isinstance(output, tuple) else output
            self.fired[layer] += 1
            batch, length = x.shape[0], x.shape[1]
            selected = self._selection(batch, length, x.device)
            if selected is False:
                return None
            self.edited[layer] += batch * length if selected is True else int(selected.sum())
            edit = self.edits[layer]
            if self.hook == "residual" and (edit.latents.numel() == 0 or self.scale == 1.0):
                return None                # exactly the model
            if selected is True:
                new = self._edit(edit, x.reshape(-1, x.shape[-1])).reshape(x.shape)
            else:
                new = x.clone()
                new[selected] = self._edit(edit, x[selected])
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    def _edit(self, edit: _LayerEdit, x: torch.Tensor) -> torch.Tensor:
        """The edited rows of x [N, d_in], computed in float32, in x's dtype and device."""
        x32 = x.float()
        sae_in = x32.to(device=edit.device, dtype=edit.dtype)
        if self.hook == "reconstruction":
            codes = edit.sae.encode(sae_in)
            if edit.latents.numel():
                codes = codes.clone()
                codes[..., edit.latents] = codes[..., edit.latents] * self.scale
            out = edit.sae.decode(codes).float()
            return out.to(device=x.device, dtype=x.dtype)
        if edit.rows is not None:
            codes = edit.sae.encode(sae_in)[..., edit.latents].float()
            delta = (1.0 - self.scale) * (codes @ edit.rows)
        else:
            # decode(h) - decode(h'): encode again before each decode (SAEs with run-time normalisation keep the
            # input's statistics from encode to decode)
            full = edit.sae.decode(edit.sae.encode(sae_in)).float()
            codes = edit.sae.encode(sae_in).clone()
            codes[..., edit.latents] = codes[..., edit.latents] * self.scale
            delta = full - edit.sae.decode(codes).float()
        return (x32 - delta.to(x32.device)).to(x.dtype)


def _hidden_size(model: torch.nn.Module) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    text = config.get_text_config() if callable(getattr(config, "get_text_config", None)) else config
    size = getattr(text, "hidden_size", None)
    return int(size) if size is not None else None


@contextmanager
def latent_hooks(model: torch.nn.Module, edits: Mapping[int, tuple[Any, Sequence[int] | torch.Tensor]], *,
                 hook: str = "residual", scale: float = 0.0, positions: str = "all",
                 prompt_lengths: Sequence[int] | torch.Tensor | int | None = None) -> Iterator[LatentHooks]:
    """Edit SAE latents in the outputs of decoder layers of `model` (this object, never a copy) while inside.

    edits          {decoder layer index: (sae, latent indices of that SAE)}; several layers are hooked at once.
    hook           "residual": x - (1 - scale) * sum_{j in A} h_j(x) W_dec[j] (the model unchanged for A empty);
                   "reconstruction": x -> decode(h with h_A * scale), which changes the model even for A empty by
                   the SAE's reconstruction error.
    scale          0 ablates, 1 leaves the latents as they are, > 1 amplifies.
    positions      "all" or "generated" (positions at or after each row's prompt length).
    prompt_lengths per row (or one int): the first position of the generated tokens in the padded sequence;
                   default: the length of each sequence's first pass (the prefill).

    Yields a `LatentHooks` whose `fired` / `edited` counters prove each layer's hook ran. The hooks are removed
    on exit, also when the block raises.
    """
    hooks = LatentHooks(model, edits, hook=hook, scale=scale, positions=positions, prompt_lengths=prompt_lengths)
    hooks.attach()
    try:
        yield hooks
    finally:
        hooks.detach()
