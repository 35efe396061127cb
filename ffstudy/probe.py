"""Attention probes: how later-frame tokens retrieve first-frame entities, exactly and in bounded memory.

In Wan I2V the only route from first-frame content to later frames is full 3D self-attention (``attn1``).
:class:`FirstFrameProbe` swaps in attention processors (diffusers' processor API) that compute exactly what the
stock ``WanAttnProcessor`` computes — the model output stays bit-identical — and, for the conditional CFG branch,
also record for every query token of latent frames ≥ 1:

- the softmax mass it puts on latent frame 0, split by the composite's entities (cut-outs, background, white);
- reverse maps: how strongly each first-frame token is read by each later frame.

The softmax normaliser covers all keys: its log-sum-exp comes from the fused attention kernel that produced the
output (checked bit-identical to the stock path once per device and dtype), or else from a chunked pass over the
keys. Only first-frame key columns are ever materialised, one query chunk at a time and in place, so a block's
recording holds at most what :func:`recording_bytes` states — one float32 tile of ``tile_bytes`` (heads × query
rows × first-frame keys, or × 4,096 keys on the portable path; at least one query row), those rows' queries and the
first-frame keys in float32, and the records themselves — never ``tokens²``. Chunks never cross a frame boundary,
so reverse maps are sums, not scatters.

A secondary probe on ``attn2`` records how much each video token attends to the trigger-phrase tokens.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from diffusers.hooks.hooks import HookRegistry, ModelHook, StateManager
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import WanAttnProcessor, _get_qkv_projections

from .generate import TRIGGER, with_trigger
from .io import atomic_path, write_json

WHOLE_FRAME = "frame_0"
TEXT_PARTS = ("trigger", "caption", "padding")
_HOOK_NAME = "ffstudy_probe"
_TILE_BYTES = 256 * 2**20  # budget for one (heads x query chunk x keys) tile
# (device, dtype, backend, q/k/v shapes) -> the fused kernel whose output equals the stock attention's there: a
# build may pick another kernel for another head size or sequence length, so each shape is checked once
_STOCK_KERNEL: dict[tuple, str | None] = {}


# --------------------------------------------------------------------------------------------- attention math
def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on interleaved pairs, the same operations as ``WanAttnProcessor``."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def self_attention_qkv(attn, hidden_states, rotary_emb):
    """Query, key and value of a Wan ``attn1`` call, (B,S,H,D), normalised and rotated exactly as
    ``WanAttnProcessor`` does: what the probe and the interventions recompute attention from."""
    query, key, value = _get_qkv_projections(attn, hidden_states, None)
    query, key = attn.norm_q(query), attn.norm_k(key)
    query, key, value = (t.unflatten(2, (attn.heads, -1)) for t in (query, key, value))
    if rotary_emb is not None:
        query, key = _rope(query, *rotary_emb), _rope(key, *rotary_emb)
    return query, key, value


def experts_of(pipe) -> dict:
    """The pipeline's transformers by expert name: ``high``/``low`` for two-expert Wan2.2, else ``main`` (a bare
    transformer is ``main`` too)."""
    if not hasattr(pipe, "transformer"):
        return {"main": pipe}
    if getattr(pipe, "transformer_2", None) is None:
        return {"main": pipe.transformer}
    return {"high": pipe.transformer, "low": pipe.transformer_2}


def checked_blocks(blocks, layers: int, default: list[int]) -> list[int]:
    """``blocks`` sorted (``default`` when None), or a ValueError naming them if the model has no such block."""
    chosen = sorted(_as_set(blocks)) if blocks is not None else default
    if not chosen or min(chosen) < 0 or max(chosen) >= layers:
        raise ValueError(f"blocks={blocks}: the model has blocks 0..{layers - 1}")
    return chosen


def next_step(last_timestep: float | None, step: int, timestep: float) -> int:
    """The denoising step index of a transformer call at ``timestep``: 0 when a new sampling run starts (the
    timestep rose), the next index when it fell, the same for a second call at one timestep (CFG, two experts)."""
    if last_timestep is None or timestep > last_timestep:
        return 0
    return step + 1 if timestep < last_timestep else step


def _fused_kernels(device_type: str, dtype: torch.dtype) -> dict:
    """The fused SDPA kernels that also return the log-sum-exp, by name, each (q, k, v) in (B,H,S,D) ->
    (output (B,H,S,D), logsumexp with B·H·S entries); which one the stock attention uses depends on the build."""
    ops = torch.ops.aten
    if device_type == "cpu":
        return {"flash_cpu": lambda q, k, v: ops._scaled_dot_product_flash_attention_for_cpu(q, k, v)[:2]}
    if device_type != "cuda":
        return {}
    kernels = {"efficient": lambda q, k, v: ops._scaled_dot_product_efficient_attention(q, k, v, None, True)[:2]}
    if dtype in (torch.float16, torch.bfloat16):
        kernels = {"cudnn": lambda q, k, v: ops._scaled_dot_product_cudnn_attention(q, k, v, None, True)[:2],
                   "flash": lambda q, k, v: ops._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False)[:2],
                   **kernels}
    return kernels


def _fused_attention_with_lse(q, k, v, kernel: str):
    """(output (B,S,H,D), logsumexp (B,H,S) float32) from fused kernel ``kernel``, or None where it fails."""
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    try:
        out, lse = _fused_kernels(q.device.type, q.dtype)[kernel](qt, kt, vt)
    except (RuntimeError, NotImplementedError):
        return None
    lse = lse.reshape(*lse.shape[:2], -1)[..., : q.shape[1]]  # cuDNN: (B,H,S,1); efficient: S padded to 32s
    return out.transpose(1, 2), lse.float()


def _frame_chunks(n0: int, seq: int, rows: int) -> list[tuple[int, int]]:
    """Query ranges over latent frames 1… of ``n0`` tokens each, at most ``rows`` long unless one frame is longer,
    never crossing a frame boundary: whole frames together when they fit, else slices of one frame."""
    if rows >= n0:
        step = rows // n0 * n0
        return [(start, min(seq, start + step)) for start in range(n0, seq, step)]
    return [(start, min(frame + n0, start + rows)) for frame in range(n0, seq, n0)
            for start in range(frame, frame + n0, rows)]


def chunked_logsumexp(q: torch.Tensor, k: torch.Tensor, scale: float, chunk_k: int) -> torch.Tensor:
    """Row log-sum-exp of ``scale · q kᵀ`` over all keys, one key chunk at a time and in place (one float32
    (H, c, chunk_k) tile). q: (H,c,D) float32, k: (H,S,D)."""
    lse = torch.full(q.shape[:-1], -torch.inf, device=q.device)
    for start in range(0, k.shape[1], chunk_k):
        logits = torch.matmul(q * scale, k[:, start:start + chunk_k].float().transpose(-1, -2))
        top = logits.amax(-1, keepdim=True)
        chunk_lse = logits.sub_(top).exp_().sum(-1).log_().add_(top.squeeze(-1))
        lse = torch.logaddexp(lse, chunk_lse)
    return lse


def recording_bytes(heads: int, head_dim: int, frame_tokens: int, tokens: int, entities: int,
                    tile_bytes: int = _TILE_BYTES, portable: bool = False) -> int:
    """The most memory (bytes) one block's recording holds beyond the forward pass, for ``tokens`` query tokens of
    which the first ``frame_tokens`` are latent frame 0:

    - the float32 tile: heads × query rows × first-frame keys (× 4,096 keys on the portable path), where rows =
      ``tile_bytes`` // (4 · heads · keys), at least 1;
    - per query row and head: its query in float32 (and pre-scaled on the portable path), its log-sum-exp
      terms, its entity masses before they are stored;
    - one frame's reverse-map partial sum, the first-frame keys in float32 (and one 4,096-key chunk of all keys on
      the portable path);
    - the block's records: per-head entity masses and reverse maps, and their head means.

    ``tests/test_probe.py`` checks it against the live tensors of recordings on both paths."""
    keys = max(frame_tokens, 4096) if portable else frame_tokens
    later = tokens - frame_tokens
    rows = min(max(1, tile_bytes // (4 * heads * keys)), later)
    tile = heads * rows * min(keys, tokens)
    per_row = heads * rows * (2 * head_dim + entities + 5)
    partial = heads * max(rows, frame_tokens)
    key_copies = heads * head_dim * (frame_tokens + (min(4096, tokens) if portable else 0))
    records = (heads + 1) * later * entities + (2 * heads + 1) * later
    return 4 * (tile + per_row + partial + key_copies + records)


# --------------------------------------------------------------------------------------------- processors
class FirstFrameProbeProcessor(WanAttnProcessor):
    """``attn1`` processor: the stock computation plus first-frame retrieval records when the probe says so."""

    def __init__(self, probe: "FirstFrameProbe", block: int):
        super().__init__()
        self.probe, self.block = probe, block

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if self.probe._call is None or encoder_hidden_states is not None or attn.add_k_proj is not None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        query, key, value = self_attention_qkv(attn, hidden_states, rotary_emb)
        output, lse = self._attend(query, key, value, attention_mask)
        self.probe._record_self_attention(self.block, query, key, lse)
        output = output.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](output))

    def _attend(self, query, key, value, attention_mask):
        def stock():
            return dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                         backend=self._attention_backend, parallel_config=self._parallel_config)

        if attention_mask is None and self._parallel_config is None and self.probe.fused_lse:
            check = (str(query.device), query.dtype, str(self._attention_backend), tuple(query.shape),
                     tuple(key.shape))
            if check not in _STOCK_KERNEL:  # once per shape: the first fused kernel bit-identical to stock
                reference, _STOCK_KERNEL[check] = stock(), None
                for name in _fused_kernels(query.device.type, query.dtype):
                    fused = _fused_attention_with_lse(query, key, value, name)
                    if fused is not None and torch.equal(fused[0], reference):
                        _STOCK_KERNEL[check] = name
                        return fused
                return reference, None
            if _STOCK_KERNEL[check] is not None:
                fused = _fused_attention_with_lse(query, key, value, _STOCK_KERNEL[check])
                if fused is not None:
                    return fused
        return stock(), None


class TextAttentionProbeProcessor(WanAttnProcessor):
    """``attn2`` processor: the stock output, plus the attention mass on trigger / caption / padding tokens."""

    def __init__(self, probe: "FirstFrameProbe", block: int):
        super().__init__()
        self.probe, self.block = probe, block

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        output = super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        if self.probe._call is not None and encoder_hidden_states is not None:
            text = encoder_hidden_states
            if attn.add_k_proj is not None:  # Wan2.1 I2V: image tokens first, then the 512 text tokens
                text = text[:, text.shape[1] - 512:]
            query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
            key = attn.norm_k(attn.to_k(text)).unflatten(2, (attn.heads, -1))
            self.probe._record_text_attention(self.block, query, key)
        return output


class _BranchHook(ModelHook):
    """A stateful diffusers hook: pipelines tell it the CFG branch via ``cache_context("cond" | "uncond")``."""

    _is_stateful = True

    def __init__(self, probe: "FirstFrameProbe", expert: str):
        super().__init__()
        self.probe, self.expert = probe, expert
        self.branch = StateManager(dict)

    def pre_forward(self, module, *args, **kwargs):
        context = self.branch._context
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        self.probe._begin_call(self.expert, context.name if context is not None else "cond", hidden.shape,
                               module.config.patch_size, float(torch.as_tensor(timestep).max()))
        return args, kwargs

    def post_forward(self, module, output):
        self.probe._call = None
        return output

    def reset_state(self, module):
        return module


# --------------------------------------------------------------------------------------------- result
@dataclass
class ProbeResult:
    """What a probe recorded. One *record* per (denoising step, expert, block), conditional branch only.

    ``entity_mass[r, t-1, i, e]``: attention mass that query token ``i`` of latent frame ``t`` put on the
    first-frame tokens of entity ``e`` (summing over ``e`` gives its total first-frame mass), averaged over heads.
    ``reverse[r, t-1, j]``: mean attention that frame ``t``'s queries put on first-frame token ``j``.
    """

    grid: tuple[int, int, int]  # (latent frames, token rows, token columns)
    entity_names: list[str]
    records: list[dict]
    entity_mass: np.ndarray
    reverse: np.ndarray
    head_entity_mass: np.ndarray | None = None  # (R, heads, F-1, h*w, E) when per_head=True
    attention: np.ndarray | None = None  # (R, heads, (F-1)*h*w, h*w) raw first-frame slice, keep_attention=True
    text_records: list[dict] = field(default_factory=list)
    text_mass: np.ndarray | None = None  # (R_text, F*h*w, 3): trigger / caption / padding
    entity_area: np.ndarray | None = None  # (E,) first-frame tokens each entity covers (soft masks summed)
    entity_rgb: list | None = None  # per entity, its median colour in the first frame (None without a composite)

    @property
    def num_frames(self) -> int:
        return self.grid[0]

    def select(self, blocks=None, steps=None, experts=None) -> list[int]:
        """Indices of the records matching the given blocks / steps / experts (None = all)."""
        keep = [i for i, r in enumerate(self.records)
                if (blocks is None or r["block"] in _as_set(blocks)) and (steps is None or r["step"] in _as_set(steps))
                and (experts is None or r["expert"] in _as_set(experts))]
        if not keep:
            raise ValueError(f"no records for blocks={blocks}, steps={steps}, experts={experts}; recorded: "
                             f"blocks {sorted({r['block'] for r in self.records})}, "
                             f"steps {sorted({r['step'] for r in self.records})}")
        return keep

    def retrieval_curves(self, over: str = "frame", **selection) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Mean first-frame mass per query token, by entity (plus ``"total"``), as a function of ``over``:
        ``"frame"`` (latent frames 1…F-1), ``"block"`` or ``"step"`` (averaged over later frames)."""
        keep = self.select(**selection)
        if over == "frame":
            x = np.arange(1, self.num_frames)
            curves = self.entity_mass[keep].mean(axis=(0, 2))  # (F-1, E)
        elif over in ("block", "step"):
            x = np.array(sorted({self.records[i][over] for i in keep}))
            curves = np.stack([self.entity_mass[[i for i in keep if self.records[i][over] == v]].mean(axis=(0, 1, 2))
                               for v in x])
        else:
            raise ValueError(f"over={over!r}: use 'frame', 'block' or 'step'")
        result = {name: curves[:, e] for e, name in enumerate(self.entity_names)}
        result["total"] = curves.sum(axis=1)
        return x, result

    def _frame_index(self, frame: int) -> int:
        if not 1 <= frame < self.num_frames:
            raise ValueError(f"frame={frame} must be a later latent frame, 1..{self.num_frames - 1}")
        return frame - 1

    def entity_maps(self, frame: int, **selection) -> np.ndarray:
        """(rows, cols, E): per-entity mass of each query token of latent ``frame``."""
        _, h, w = self.grid
        return self.entity_mass[self.select(**selection), self._frame_index(frame)].mean(0).reshape(h, w, -1)

    def who_retrieves_what(self, frame: int, per: str = "area", **selection) -> np.ndarray:
        """(rows, cols) index into :attr:`entity_names` of the first-frame entity each token reads most densely:
        its mass divided by the entity's area in tokens (``per="area"``). ``per="mass"`` takes the most total mass,
        which the background, covering most of the frame, wins for almost every token."""
        maps = self.entity_maps(frame, **selection)
        if per == "mass":
            return maps.argmax(-1)
        if per != "area":
            raise ValueError(f"per={per!r}: use 'area' (mass per token of entity area) or 'mass' (total mass)")
        if self.entity_area is None:
            raise ValueError("this result has no entity areas (saved by an older ffstudy): use per='mass'")
        return (maps / np.maximum(self.entity_area, 1e-6)).argmax(-1)

    def reverse_map(self, frame: int, **selection) -> np.ndarray:
        """(rows, cols) over the first frame: mean attention latent ``frame``'s queries put on each token."""
        _, h, w = self.grid
        return self.reverse[self.select(**selection), self._frame_index(frame)].mean(0).reshape(h, w)

    def text_curves(self, blocks=None, steps=None) -> dict[str, np.ndarray]:
        """Per latent frame, mean cross-attention mass on trigger, caption and padding tokens."""
        if self.text_mass is None:
            raise ValueError("no text-attention records: create the probe with text_prompt=...")
        keep = [i for i, r in enumerate(self.text_records)
                if (blocks is None or r["block"] in _as_set(blocks)) and (steps is None or r["step"] in _as_set(steps))]
        f, h, w = self.grid
        per_frame = self.text_mass[keep].mean(0).reshape(f, h * w, 3).mean(1)
        return {part: per_frame[:, i] for i, part in enumerate(TEXT_PARTS)}

    def save(self, directory: str | Path) -> Path:
        """Write ``probe.safetensors`` (arrays) and ``probe.json`` (records and names), atomically."""
        from safetensors.numpy import save_file

        directory = Path(directory)
        arrays = {k: np.ascontiguousarray(v) for k, v in dict(
            entity_mass=self.entity_mass, reverse=self.reverse, head_entity_mass=self.head_entity_mass,
            attention=self.attention, text_mass=self.text_mass, entity_area=self.entity_area).items() if v is not None}
        with atomic_path(directory / "probe.safetensors") as tmp:
            save_file(arrays, str(tmp))
        write_json(directory / "probe.json", {"grid": list(self.grid), "entity_names": self.entity_names,
                                              "records": self.records, "text_records": self.text_records,
                                              "entity_rgb": self.entity_rgb})
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "ProbeResult":
        from safetensors.numpy import load_file

        directory = Path(directory)
        if not (directory / "probe.json").is_file():
            raise FileNotFoundError(f"{directory / 'probe.json'} not found: pass a folder written by ProbeResult.save")
        meta = json.loads((directory / "probe.json").read_text())
        arrays = load_file(str(directory / "probe.safetensors"))
        return cls(tuple(meta["grid"]), meta["entity_names"], meta["records"], arrays["entity_mass"],
                   arrays["reverse"], arrays.get("head_entity_mass"), arrays.get("attention"),
                   meta["text_records"], arrays.get("text_mass"), arrays.get("entity_area"), meta.get("entity_rgb"))


def _median_colours(composite, names: list[str]) -> list:
    """Each entity's median RGB over its pixels in the composite (None for an entity with no pixels)."""
    image, labels = np.asarray(composite.image.convert("RGB")), composite.labels
    index = {name: i for i, name in enumerate(composite.names)}
    colours = []
    for name in names:
        i = index[name]
        pixels = image[labels == (i + 1 if i < len(composite.entities) else 0)]
        colours.append([int(v) for v in np.median(pixels, axis=0)] if len(pixels) else None)
    return colours


def _as_set(value) -> set:
    return set(value) if isinstance(value, (list, tuple, set, range, np.ndarray)) else {value}


# --------------------------------------------------------------------------------------------- the probe
class FirstFrameProbe:
    """Context manager recording first-frame retrieval on a Wan pipeline (or a bare Wan transformer).

    ``composite``: the :class:`~ffstudy.compose.Composite` given to :func:`~ffstudy.generate.generate`; it is
    fitted to the generated size the same way generate fits it. Without it the mass is reported for the whole
    first frame. ``blocks``: block indices (default: all blocks of models with up
    to 8, else every 4th). ``steps``: denoising step indices (default: up to 6 spread over the run, both experts).
    ``per_head``: also keep per-head entity masses. ``keep_attention``: keep the raw first-frame attention slice
    (small models only). ``text_prompt``: also probe cross-attention to this prompt's trigger tokens.
    """

    def __init__(self, pipe, composite=None, *, blocks: Sequence[int] | None = None,
                 steps: Sequence[int] | None = None, per_head: bool = False, keep_attention: bool = False,
                 text_prompt: str | None = None, fused_lse: bool = True, tile_bytes: int = _TILE_BYTES):
        self.transformers = experts_of(pipe)
        self.scheduler = getattr(pipe, "scheduler", None)
        transformer = next(iter(self.transformers.values()))
        self.pixels_per_token = (getattr(pipe, "vae_scale_factor_spatial", None) or 0) * \
            transformer.config.patch_size[1]
        num_layers = len(transformer.blocks)
        self.blocks = checked_blocks(blocks, num_layers, list(range(num_layers)) if num_layers <= 8
                                     else list(range(0, num_layers, 4)))
        self.steps = None if steps is None else set(steps)
        self.composite, self.per_head, self.keep_attention = composite, per_head, keep_attention
        self.fused_lse, self.tile_bytes = fused_lse, tile_bytes
        self.text_spans = self._text_spans(pipe, text_prompt) if text_prompt is not None else None
        self._saved, self._call, self._last_t, self._step, self._masks = {}, None, None, -1, None
        self._rows: dict[str, list] = {k: [] for k in ("records", "entity", "reverse", "head", "attention",
                                                         "text_records", "text")}
        self._grid, self._rgb = None, None
        self.result: ProbeResult | None = None

    @staticmethod
    def _text_spans(pipe, prompt: str) -> tuple[int, int]:
        tokenizer = pipe.tokenizer
        prompt = with_trigger(prompt)
        if not prompt.startswith(TRIGGER):
            raise ValueError("text_prompt must start with the trigger phrase for the trigger-token probe")
        trigger_tokens = len(tokenizer(TRIGGER, add_special_tokens=False).input_ids)
        text_tokens = len(tokenizer(prompt).input_ids)
        return trigger_tokens, text_tokens

    # -- install / remove
    def __enter__(self) -> "FirstFrameProbe":
        for expert, transformer in self.transformers.items():
            self._saved[expert] = transformer.attn_processors
            for b in self.blocks:
                transformer.blocks[b].attn1.set_processor(FirstFrameProbeProcessor(self, b))
                if self.text_spans is not None:
                    transformer.blocks[b].attn2.set_processor(TextAttentionProbeProcessor(self, b))
            HookRegistry.check_if_exists_or_initialize(transformer).register_hook(_BranchHook(self, expert),
                                                                                  _HOOK_NAME)
        return self

    def __exit__(self, *exc) -> None:
        for expert, transformer in self.transformers.items():
            transformer.set_attn_processor(self._saved[expert])
            HookRegistry.check_if_exists_or_initialize(transformer).remove_hook(_HOOK_NAME)
        self._call = None
        self.result = self._collect()

    # -- called by the hook and processors
    def _begin_call(self, expert, branch, hidden_shape, patch_size, timestep) -> None:
        grid = tuple(n // p for n, p in zip(hidden_shape[2:], patch_size))
        if self._grid is not None and grid != self._grid:
            raise ValueError(f"one probe records one video size; got token grid {grid} after {self._grid}")
        self._grid = grid
        if branch != "cond":
            self._call = None
            return
        self._step, self._last_t = next_step(self._last_t, self._step, timestep), timestep
        if self.steps is None:
            n = len(self.scheduler.timesteps) if self.scheduler is not None and self.scheduler.timesteps is not None \
                else 1
            wanted = set(np.linspace(0, n - 1, min(n, 6)).round().astype(int).tolist())
        else:
            wanted = self.steps
        self._call = dict(step=self._step, timestep=timestep, expert=expert) if self._step in wanted else None

    def _entity_matrix(self, h: int, w: int, device) -> tuple[list[str], torch.Tensor]:
        if self._masks is None:
            if self.composite is None:
                names, matrix = [WHOLE_FRAME], np.ones((h * w, 1), np.float32)
            else:
                composite = self.composite
                size = (w * self.pixels_per_token, h * self.pixels_per_token)
                if self.pixels_per_token and composite.size != size:
                    composite = composite.fit(size[1], size[0])  # as generate() fits it
                masks = composite.masks(h, w)
                names = list(masks)
                matrix = np.stack([masks[n].reshape(-1) for n in names], axis=1)
            self._masks = (names, torch.from_numpy(matrix))
            self._rgb = _median_colours(composite, names) if self.composite is not None else None
        return self._masks[0], self._masks[1].to(device)

    @torch.no_grad()
    def _record_self_attention(self, block: int, query, key, lse) -> None:
        f, h, w = self._grid
        n0, (_, seq, heads, dim) = h * w, query.shape
        names, masks = self._entity_matrix(h, w, query.device)
        scale = 1.0 / math.sqrt(dim)
        q, k = query[0].transpose(0, 1), key[0].transpose(0, 1)  # (H, S, D); batch item 0 = this call's video
        k0 = k[:, :n0].float().transpose(-1, -2)
        columns = n0 if lse is not None else max(n0, 4096)  # the portable path also holds a 4096-key tile
        rows = max(1, self.tile_bytes // (4 * heads * columns))  # query rows per tile
        entity = torch.empty(heads, seq - n0, len(names), device=query.device)
        reverse = torch.zeros(heads, f - 1, n0, device=query.device)
        raw = torch.empty(heads, seq - n0, n0) if self.keep_attention else None
        for start, stop in _frame_chunks(n0, seq, rows):
            qc = q[:, start:stop].float()
            row_lse = lse[0][:, start:stop] if lse is not None else chunked_logsumexp(qc, k, scale, 4096)
            # exact softmax columns of frame 0, exp(scale·q·k₀ − lse), formed in place in one tile
            p0 = torch.baddbmm(-row_lse[..., None], qc, k0, alpha=scale).exp_()
            entity[:, start - n0:stop - n0] = p0 @ masks
            first, frames = start // n0 - 1, max(1, (stop - start) // n0)  # whole frames, or part of one
            reverse[:, first:first + frames] += p0.unflatten(1, (frames, -1)).sum(2)
            if raw is not None:
                raw[:, start - n0:stop - n0] = p0.cpu()
        entity = entity.unflatten(1, (f - 1, n0))
        self._rows["records"].append(dict(self._call, block=block))
        self._rows["entity"].append(entity.mean(0).cpu())
        self._rows["reverse"].append((reverse / n0).mean(0).cpu())
        if self.per_head:
            self._rows["head"].append(entity.cpu())
        if raw is not None:
            self._rows["attention"].append(raw)

    @torch.no_grad()
    def _record_text_attention(self, block: int, query, key) -> None:
        trigger, text = self.text_spans
        q, k = query[0].transpose(0, 1).float(), key[0].transpose(0, 1).float()  # (H, S, L)
        scale = 1.0 / math.sqrt(q.shape[-1])
        parts = torch.empty(q.shape[1], 3, device=q.device)
        chunk = max(1, self.tile_bytes // (4 * q.shape[0] * k.shape[1]))
        for start in range(0, q.shape[1], chunk):
            p = torch.softmax(q[:, start:start + chunk] @ k.transpose(-1, -2) * scale, dim=-1).mean(0)
            parts[start:start + chunk] = torch.stack(
                [p[:, :trigger].sum(-1), p[:, trigger:text].sum(-1), p[:, text:].sum(-1)], dim=-1)
        self._rows["text_records"].append(dict(self._call, block=block))
        self._rows["text"].append(parts.cpu())

    def _collect(self) -> ProbeResult | None:
        rows = self._rows
        if not rows["records"]:
            return None
        stack = lambda key: torch.stack(rows[key]).numpy() if rows[key] else None  # noqa: E731
        return ProbeResult(self._grid, list(self._masks[0]), rows["records"], stack("entity"), stack("reverse"),
                           stack("head"), stack("attention"), rows["text_records"], stack("text"),
                           self._masks[1].sum(0).cpu().numpy(), self._rgb)
