"""Causal interventions on first-frame retrieval: change how much later frames attend to chosen first-frame keys.

The probe (:mod:`ffstudy.probe`) shows where later-frame tokens look; attention maps are correlational. This module
changes what they can read and lets the video show the consequence. :class:`FirstFrameIntervention` multiplies the
attention weight of chosen first-frame keys by ``alpha`` — it adds log α to their logits — for the queries of
latent frames ≥ 1, in chosen blocks, denoising steps and experts: ``alpha=0`` removes those keys from later frames'
attention (a knock-out), ``alpha > 1`` amplifies them. Frame-0 queries and all other keys are untouched.

Exact and memory-bounded: softmax attention splits over two key sets, the chosen keys K and the rest R. Two fused
attentions, each returning its output and log-sum-exp (the kernels the probe uses), give

    out = (e^lse_R · out_R + α · e^lse_K · out_K) / (e^lse_R + α · e^lse_K),

so nothing of size tokens² is formed; without a fused kernel, a tiled pass (one float32 tile of ``tile_bytes``)
computes the same softmax with the bias added. ``alpha=1`` is the stock processor itself: the output is
bit-identical. ``tests/test_intervene.py`` checks both paths against a float64 recomputation that deletes or
reweights those keys.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from diffusers.hooks.hooks import HookRegistry, ModelHook
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from .probe import (_TILE_BYTES, _as_set, _fused_attention_with_lse, _fused_kernels, checked_blocks, experts_of,
                    next_step, self_attention_qkv)

_HOOK_NAME = "ffstudy_intervention"


def entity_keys(composite, names: Sequence[str] | str, rows: int, cols: int, threshold: float = 0.5) -> np.ndarray:
    """(rows, cols) boolean mask of the first-frame tokens that the named entities of ``composite`` cover at least
    ``threshold`` of: the keys to knock out or amplify for those entities."""
    names = [names] if isinstance(names, str) else list(names)
    masks = composite.masks(rows, cols)
    if unknown := [n for n in names if n not in masks]:
        raise ValueError(f"names={unknown}: the composite's entities are {list(masks)}")
    return np.sum([masks[n] for n in names], axis=0) >= threshold


def attention_with_scaled_keys(query, key, value, chosen: torch.Tensor, alpha: float, fused: bool = True,
                               tile_bytes: int = _TILE_BYTES) -> torch.Tensor:
    """softmax(q kᵀ/√d + log α·[key ∈ chosen]) v for (B,S,H,D) tensors, float32 result (B,S,H,D): the fused
    two-set combination, or a tiled pass when no fused kernel returns a log-sum-exp (or ``fused=False``)."""
    selected = torch.zeros(key.shape[1], dtype=torch.bool, device=key.device)
    selected[chosen] = True
    if fused:
        for name in _fused_kernels(query.device.type, query.dtype):
            rest = _fused_attention_with_lse(query, key[:, ~selected], value[:, ~selected], name)
            picked = _fused_attention_with_lse(query, key[:, selected], value[:, selected], name)
            if rest is None or picked is None:
                continue
            (out_r, lse_r), (out_k, lse_k) = rest, picked
            top = torch.maximum(lse_r, lse_k)
            w_r = (lse_r - top).exp().transpose(1, 2)[..., None]  # (B,S,H,1)
            w_k = alpha * (lse_k - top).exp().transpose(1, 2)[..., None]
            return (w_r * out_r.float() + w_k * out_k.float()) / (w_r + w_k)
    bias = torch.zeros(key.shape[1], device=key.device)
    bias[selected] = math.log(alpha) if alpha > 0 else -math.inf
    q, k, v = (t.transpose(1, 2).float() for t in (query, key, value))  # (B,H,S,D)
    scale = 1.0 / math.sqrt(q.shape[-1])
    out = torch.empty_like(q)
    rows = max(1, tile_bytes // (4 * q.shape[0] * q.shape[1] * k.shape[2]))
    for start in range(0, q.shape[2], rows):
        logits = torch.matmul(q[:, :, start:start + rows] * scale, k.transpose(-1, -2)).add_(bias)
        out[:, :, start:start + rows] = torch.matmul(logits.softmax(-1), v)
    return out.transpose(1, 2)


class _InterventionProcessor(WanAttnProcessor):
    """``attn1`` processor: the stock attention, with later-frame queries' rows recomputed under the intervention
    while it is active for this call."""

    def __init__(self, owner: "FirstFrameIntervention"):
        super().__init__()
        self.owner = owner

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        owner = self.owner
        if (not owner._active or encoder_hidden_states is not None or attention_mask is not None
                or self._parallel_config is not None):
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        query, key, value = self_attention_qkv(attn, hidden_states, rotary_emb)
        output = dispatch_attention_fn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                       backend=self._attention_backend)
        n0 = owner._n0
        chosen = owner._chosen.to(query.device)
        later = attention_with_scaled_keys(query[:, n0:], key, value, chosen, owner.alpha, owner.fused,
                                           owner.tile_bytes)
        output = torch.cat([output[:, :n0], later.type_as(output)], dim=1).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](output))


class _StepHook(ModelHook):
    """Tells the intervention each transformer call's token grid and denoising step."""

    def __init__(self, owner: "FirstFrameIntervention", expert: str):
        super().__init__()
        self.owner, self.expert = owner, expert

    def pre_forward(self, module, *args, **kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        self.owner._begin_call(self.expert, hidden.shape, module.config.patch_size,
                               float(torch.as_tensor(timestep).max()))
        return args, kwargs

    def post_forward(self, module, output):
        self.owner._active = False
        return output


class FirstFrameIntervention:
    """Context manager that scales later frames' attention to chosen first-frame keys by ``alpha``.

    ``keys``: (rows, cols) boolean mask over the first frame's tokens (e.g. from :func:`entity_keys`), or flat
    token indices. ``blocks``: block indices (default all); ``steps``: denoising step indices (default all);
    ``experts``: ``"high"``/``"low"`` for two-expert Wan2.2, ``"main"`` otherwise (default all). Both CFG branches
    are changed: the intervention changes the model. ``fused=False`` forces the tiled path. One intervention at a
    time per model.
    """

    def __init__(self, pipe, keys, alpha: float, *, blocks: Sequence[int] | None = None,
                 steps: Sequence[int] | None = None, experts: Sequence[str] | None = None, fused: bool = True,
                 tile_bytes: int = _TILE_BYTES):
        if not (alpha >= 0 and math.isfinite(alpha)):
            raise ValueError(f"alpha={alpha}: use a finite weight >= 0 (0 removes the keys, 1 changes nothing)")
        self.transformers = experts_of(pipe)
        layers = len(next(iter(self.transformers.values())).blocks)
        self.blocks = checked_blocks(blocks, layers, list(range(layers)))
        if experts is not None and (bad := _as_set(experts) - set(self.transformers)):
            raise ValueError(f"experts={sorted(bad)}: this model's experts are {list(self.transformers)}")
        self.keys, self.alpha, self.fused, self.tile_bytes = keys, float(alpha), fused, tile_bytes
        self.steps = None if steps is None else _as_set(steps)
        self.experts = None if experts is None else _as_set(experts)
        self._saved, self._active, self._last_t, self._step = {}, False, None, -1
        self._n0, self._chosen = None, None

    def _select_keys(self, rows: int, cols: int) -> torch.Tensor:
        keys = np.asarray(self.keys)
        if keys.dtype == bool:
            if keys.shape != (rows, cols):
                raise ValueError(f"keys: a mask of shape {keys.shape}, but the first frame has {rows}x{cols} tokens; "
                                 f"build it with entity_keys(composite, names, {rows}, {cols})")
            index = np.flatnonzero(keys)
        else:
            index = keys.reshape(-1).astype(np.int64)
            if index.size and (index.min() < 0 or index.max() >= rows * cols):
                raise ValueError(f"keys: token indices must lie in 0..{rows * cols - 1} (the first frame's tokens)")
        if not index.size:
            raise ValueError("keys: no first-frame token chosen; nothing to intervene on")
        return torch.from_numpy(np.unique(index))

    def _begin_call(self, expert, hidden_shape, patch_size, timestep) -> None:
        f, h, w = (n // p for n, p in zip(hidden_shape[2:], patch_size))
        if self._n0 != h * w:
            self._n0, self._chosen = h * w, self._select_keys(h, w)
        self._step, self._last_t = next_step(self._last_t, self._step, timestep), timestep
        self._active = (self.alpha != 1.0 and f > 1 and (self.steps is None or self._step in self.steps)
                        and (self.experts is None or expert in self.experts))

    def __enter__(self) -> "FirstFrameIntervention":
        for expert, transformer in self.transformers.items():
            self._saved[expert] = transformer.attn_processors
            if self.experts is None or expert in self.experts:
                for b in self.blocks:
                    transformer.blocks[b].attn1.set_processor(_InterventionProcessor(self))
            HookRegistry.check_if_exists_or_initialize(transformer).register_hook(_StepHook(self, expert),
                                                                                  _HOOK_NAME)
        return self

    def __exit__(self, *exc) -> None:
        for expert, transformer in self.transformers.items():
            transformer.set_attn_processor(self._saved[expert])
            HookRegistry.check_if_exists_or_initialize(transformer).remove_hook(_HOOK_NAME)
        self._active = False
