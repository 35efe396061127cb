import math

import numpy as np
import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from ffstudy.compose import compose_first_frame
from ffstudy.generate import generate
from ffstudy.probe import FirstFrameProbe, ProbeResult

from .conftest import TINY_BACKBONES

STEPS = 3


@pytest.fixture
def composite(cutout, plate):
    return compose_first_frame({"star": cutout, "ball": cutout}, plate)


def _experts(pipe):
    return [pipe.transformer] + ([pipe.transformer_2] if pipe.transformer_2 is not None else [])


@torch.no_grad()
def reference_first_frame_attention(attn, x, rotary_emb, n0):
    """Full softmax(q kᵀ/√d) in float64 from the block's raw input, RoPE as a complex rotation; rows ≥ n0,
    columns < n0. Independent of the probe's code path."""
    def rope(t):
        cos, sin = rotary_emb
        angle = torch.complex(cos[..., 0::2].double(), sin[..., 1::2].double())
        pairs = torch.view_as_complex(t.double().unflatten(-1, (-1, 2)).contiguous())
        return torch.view_as_real(pairs * angle).flatten(-2)

    q = rope(attn.norm_q(attn.to_q(x)).unflatten(2, (attn.heads, -1)))[0].transpose(0, 1)
    k = rope(attn.norm_k(attn.to_k(x)).unflatten(2, (attn.heads, -1)))[0].transpose(0, 1)
    full = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return full[:, n0:, :n0]


def run_with_reference(pipe, composite, **probe_kwargs):
    """Generate with the probe and with forward pre-hooks that capture every attn1 input."""
    captured, handles = {}, []
    for e, transformer in enumerate(_experts(pipe)):
        for b, block in enumerate(transformer.blocks):
            def hook(module, args, key=(e, b)):
                captured.setdefault(key, []).append((args[0].detach().clone(), args[3]))
            handles.append(block.attn1.register_forward_pre_hook(hook))
    try:
        with FirstFrameProbe(pipe, composite.fit(64, 112), steps=range(STEPS), **probe_kwargs) as probe:
            video = generate(pipe, composite, "a star and a ball", num_inference_steps=STEPS, progress=False)
    finally:
        for h in handles:
            h.remove()
    return probe.result, captured, video


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_probe_is_exact_against_the_full_softmax(name, tiny_pipe, composite):
    pipe = tiny_pipe(name)
    result, captured, _ = run_with_reference(pipe, composite, keep_attention=True, per_head=True)
    f, h, w = result.grid
    n0 = h * w
    expert_index = {"high": 0, "low": 1, "main": 0}
    calls = {}
    assert len(result.records) == STEPS * len(pipe.transformer.blocks)
    for r, record in enumerate(result.records):
        key = (expert_index[record["expert"]], record["block"])
        # with CFG each step calls the expert twice, conditional first: the probe must record that one
        index = calls.get(key, 0)
        calls[key] = index + 2
        x, rotary = captured[key][index]
        attn = _experts(pipe)[key[0]].blocks[key[1]].attn1
        ref = reference_first_frame_attention(attn, x, rotary, n0).float()
        probed = torch.from_numpy(result.attention[r])
        assert probed.shape == ref.shape
        assert torch.allclose(probed, ref, atol=1e-5, rtol=0), (name, record, (probed - ref).abs().max())
        # the entity split sums to the total first-frame mass, per head and head-averaged
        total = ref.sum(-1).numpy()
        assert np.allclose(result.head_entity_mass[r].sum(-1).reshape(total.shape), total, atol=1e-5)
        assert np.allclose(result.entity_mass[r].sum(-1).reshape(-1), total.mean(0), atol=1e-5)
        # reverse map: mean over each later frame's queries
        per_frame = ref.mean(0).numpy().reshape(f - 1, n0, n0).mean(1)
        assert np.allclose(result.reverse[r], per_frame, atol=1e-6)


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_probe_does_not_change_the_output(name, tiny_pipe, composite):
    pipe = tiny_pipe(name)
    plain = generate(pipe, composite, "a star", num_inference_steps=STEPS, progress=False)
    with FirstFrameProbe(pipe, composite.fit(64, 112), text_prompt="a star", per_head=True):
        probed = generate(pipe, composite, "a star", num_inference_steps=STEPS, progress=False)
    assert np.array_equal(plain.frames, probed.frames) and np.array_equal(plain.transition, probed.transition)
    for transformer in _experts(pipe):  # stock processors back, hook gone
        assert all(type(p) is WanAttnProcessor for p in transformer.attn_processors.values())
        again = generate(pipe, composite, "a star", num_inference_steps=STEPS, progress=False)
        assert np.array_equal(again.frames, plain.frames)


def test_portable_chunked_logsumexp_matches_the_fused_kernel(tiny_pipe, composite):
    pipe = tiny_pipe()
    fused, _, _ = run_with_reference(pipe, composite)
    portable, _, _ = run_with_reference(pipe, composite, fused_lse=False, tile_bytes=4 * 2 * 5 * 4096)
    assert np.allclose(fused.entity_mass, portable.entity_mass, atol=1e-6)
    assert np.allclose(fused.reverse, portable.reverse, atol=1e-7)


def test_entity_split_uses_the_composite_masks(tiny_pipe, composite):
    result, _, video = run_with_reference(tiny_pipe(), composite)
    assert result.entity_names == ["star", "ball", "background", "white"]
    f, h, w = result.grid
    assert (h * 16, w * 16) == video.frames.shape[1:3]
    masks = video.first_frame.masks(h, w)
    reverse = result.reverse[0].reshape(f - 1, h * w)
    entity = result.entity_mass[0]  # (F-1, h*w, E)
    # the mass on an entity is the reverse map integrated over that entity's mask (both from the same p0)
    for e, name in enumerate(result.entity_names):
        assert np.allclose(entity[:, :, e].mean(1), reverse @ masks[name].reshape(-1), atol=1e-6)


def test_result_methods_and_round_trip(tmp_path, tiny_pipe, composite):
    pipe = tiny_pipe()
    with FirstFrameProbe(pipe, composite.fit(64, 112), steps=[0, 2], text_prompt="a star") as probe:
        generate(pipe, composite, "a star", num_inference_steps=STEPS, progress=False)
    result = probe.result
    assert sorted({r["step"] for r in result.records}) == [0, 2]
    assert {r["expert"] for r in result.records} == {"high", "low"}  # 3 steps at boundary 0.9: both experts
    x, curves = result.retrieval_curves("frame")
    assert list(x) == [1, 2] and np.allclose(sum(curves[n] for n in result.entity_names), curves["total"])
    bx, by_block = result.retrieval_curves("block", steps=0)
    assert list(bx) == [0, 1]
    f, h, w = result.grid
    assert result.who_retrieves_what(1).shape == (h, w) and result.who_retrieves_what(1).max() < 4
    assert result.reverse_map(2, blocks=1).shape == (h, w)
    text = result.text_curves()
    assert np.allclose(text["trigger"] + text["caption"] + text["padding"], 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="frame=0"):
        result.reverse_map(0)
    with pytest.raises(ValueError, match="no records for blocks=7"):
        result.select(blocks=7)
    loaded = ProbeResult.load(result.save(tmp_path / "probe"))
    assert loaded.records == result.records and loaded.grid == result.grid
    assert np.array_equal(loaded.entity_mass, result.entity_mass) and np.array_equal(loaded.text_mass,
                                                                                     result.text_mass)


def test_default_steps_and_bad_blocks(tiny_pipe, composite):
    pipe = tiny_pipe("tiny-wan2.1-i2v")
    with FirstFrameProbe(pipe, composite.fit(64, 112)) as probe:
        generate(pipe, composite, "x", num_inference_steps=10, progress=False)
    assert sorted({r["step"] for r in probe.result.records}) == [0, 2, 4, 5, 7, 9]
    with pytest.raises(ValueError, match="blocks=\\[5\\]"):
        FirstFrameProbe(pipe, blocks=[5])


@pytest.mark.parametrize("rows", [1, 7, 28, 29, 60, 1000])
def test_query_chunks_cover_later_frames_without_crossing_one(rows):
    """The probe sums each chunk's attention into its frame's reverse map, so a chunk must hold whole frames or
    lie inside one; within the tile's rows unless a single frame is longer."""
    from ffstudy.probe import _frame_chunks

    n0, seq = 28, 28 * 5
    chunks = _frame_chunks(n0, seq, rows)
    assert chunks[0][0] == n0 and chunks[-1][1] == seq
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
    for start, stop in chunks:
        whole = (stop - start) % n0 == 0 and start % n0 == 0
        assert whole or start // n0 == (stop - 1) // n0
        assert stop - start <= max(rows, n0) if rows >= n0 else stop - start <= rows


class LiveTensorBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """The peak bytes of tensor storages created while active and still alive, op by op: what a recording holds
    beyond its inputs (views and in-place results of existing tensors are not new)."""

    def __init__(self):
        super().__init__()
        self.live, self.peak = {}, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._pytree import tree_leaves

        out = func(*args, **(kwargs or {}))
        self.live = {key: v for key, v in self.live.items() if not v[0].expired()}
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and (key := t.untyped_storage()._cdata) not in self.live.keys() | inputs:
                self.live[key] = (StorageWeakRef(t.untyped_storage()), t.untyped_storage().nbytes())
        self.peak = max(self.peak, sum(n for _, n in self.live.values()))
        return out


@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("tile_rows", [8, 120])  # a slice of a frame, and two whole frames
def test_recording_stays_within_the_stated_memory_bound(portable, tile_rows):
    from diffusers import WanTransformer3DModel

    from ffstudy.probe import recording_bytes

    torch.manual_seed(0)
    heads, dim, grid = 4, 32, (5, 6, 10)  # 60 first-frame tokens, 300 in all
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=dim,
                                  in_channels=36, out_channels=16, text_dim=32, freq_dim=32, ffn_dim=64,
                                  num_layers=1, cross_attn_norm=True, qk_norm="rms_norm_across_heads").eval()
    n0, tokens = grid[1] * grid[2], grid[0] * grid[1] * grid[2]
    keys = max(n0, 4096) if portable else n0
    tile_bytes = 4 * heads * tile_rows * keys
    probe = FirstFrameProbe(model, fused_lse=not portable, tile_bytes=tile_bytes)
    peaks, record = [], probe._record_self_attention

    def tracked(*args):
        with LiveTensorBytes() as live:
            record(*args)
        peaks.append(live.peak)

    probe._record_self_attention = tracked
    hidden = torch.randn(1, 36, grid[0], 2 * grid[1], 2 * grid[2])
    with torch.no_grad(), probe:
        model(hidden, torch.tensor([500.0]), torch.randn(1, 8, 32), return_dict=False)
    bound = recording_bytes(heads, dim, n0, tokens, entities=1, tile_bytes=tile_bytes, portable=portable)
    assert len(peaks) == 1 and peaks[0] <= bound
    assert peaks[0] >= 4 * heads * min(tile_rows, tokens - n0) * min(keys, tokens)  # the tile is formed
    if tile_rows > n0:  # where the tile dominates, the bound is close to what is held (float32: no copies)
        assert bound <= 1.5 * peaks[0]


def test_fused_kernel_is_checked_for_each_shape():
    """A build can choose another attention kernel for another sequence length, so the probe checks which fused
    kernel equals the stock one for each (device, dtype, backend, shapes), not once per process."""
    from diffusers import WanTransformer3DModel

    from ffstudy.probe import _STOCK_KERNEL

    torch.manual_seed(0)
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16,
                                  in_channels=36, out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32,
                                  num_layers=1, cross_attn_norm=True, qk_norm="rms_norm_across_heads").eval()
    _STOCK_KERNEL.clear()
    for frames in (2, 3):
        with torch.no_grad(), FirstFrameProbe(model):
            model(torch.randn(1, 36, frames, 4, 6), torch.tensor([500.0]), torch.randn(1, 8, 32), return_dict=False)
    assert sorted(key[3][1] for key in _STOCK_KERNEL) == [12, 18]  # query tokens of each shape
    assert set(_STOCK_KERNEL.values()) == {"flash_cpu"}
