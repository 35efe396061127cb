import math

import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel

from ffstudy.compose import compose_first_frame
from ffstudy.generate import generate
from ffstudy.intervene import FirstFrameIntervention, attention_with_scaled_keys, entity_keys

GRID = (3, 4, 6)  # latent frames, token rows, token columns: 24 first-frame tokens, 72 in all


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=36,
                                 out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2,
                                 cross_attn_norm=True, qk_norm="rms_norm_across_heads").eval()


def inputs(seed=0, timestep=500.0):
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(1, 36, GRID[0], 2 * GRID[1], 2 * GRID[2], generator=g),
                timestep=torch.tensor([timestep]), encoder_hidden_states=torch.randn(1, 8, 32, generator=g),
                return_dict=False)


@torch.no_grad()
def reference_attn1(attn, x, rotary_emb, n0, chosen, alpha):
    """Block self-attention in float64 from its raw input, RoPE as a complex rotation, with later-frame queries'
    logits on ``chosen`` first-frame keys shifted by log α (α = 0: those keys deleted)."""
    def rope(t):
        cos, sin = rotary_emb
        angle = torch.complex(cos[..., 0::2].double(), sin[..., 1::2].double())
        return torch.view_as_real(torch.view_as_complex(t.double().unflatten(-1, (-1, 2)).contiguous()) * angle).flatten(-2)

    x = x.double()
    q = rope(attn.norm_q.double()(attn.to_q.double()(x)).unflatten(2, (attn.heads, -1))).transpose(1, 2)
    k = rope(attn.norm_k.double()(attn.to_k.double()(x)).unflatten(2, (attn.heads, -1))).transpose(1, 2)
    v = attn.to_v.double()(x).unflatten(2, (attn.heads, -1)).transpose(1, 2)
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    keep = torch.ones_like(logits, dtype=torch.bool)
    if alpha == 0:
        keep[:, :, n0:, chosen] = False
        logits = logits.masked_fill(~keep, -torch.inf)
    else:
        logits[:, :, n0:, chosen] += math.log(alpha)
    out = (logits.softmax(-1) @ v).transpose(1, 2).flatten(2, 3)
    result = attn.to_out[0].double()(out)
    attn.float()
    return result


def run_block0(model, **kwargs):
    """Model output, and block 0's attn1 input and output, with an intervention on block 0 (or none)."""
    seen = {}
    pre = model.blocks[0].attn1.register_forward_pre_hook(lambda m, a: seen.update(x=a[0].clone(), rope=a[3]))
    post = model.blocks[0].attn1.register_forward_hook(lambda m, a, o: seen.update(out=o.clone()))
    try:
        with torch.no_grad():
            if kwargs:
                with FirstFrameIntervention(model, blocks=[0], **kwargs):
                    output = model(**inputs())[0]
            else:
                output = model(**inputs())[0]
    finally:
        pre.remove()
        post.remove()
    return output, seen


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("alpha", [0.0, 0.25, 4.0])
def test_scaled_keys_match_a_float64_recomputation(model, fused, alpha):
    chosen = np.array([0, 1, 6, 7, 13])
    _, seen = run_block0(model, keys=chosen, alpha=alpha, fused=fused, tile_bytes=4 * 2 * 8 * 72)
    n0 = GRID[1] * GRID[2]
    reference = reference_attn1(model.blocks[0].attn1, seen["x"], seen["rope"], n0, torch.from_numpy(chosen), alpha)
    assert torch.allclose(seen["out"].double(), reference, atol=1e-5)
    plain, stock = run_block0(model)
    assert torch.equal(seen["out"][:, :n0], stock["out"][:, :n0])  # frame-0 queries untouched
    assert not torch.allclose(seen["out"][:, n0:], stock["out"][:, n0:], atol=1e-4)  # later frames changed


def test_identity_intervention_is_bit_identical(tiny_pipe, cutout, plate):
    pipe = tiny_pipe()
    composite = compose_first_frame({"star": cutout}, plate)
    plain = generate(pipe, composite, "a star", num_inference_steps=3, progress=False)
    keys = entity_keys(composite.fit(64, 112), "star", 4, 7, threshold=0.1)
    assert keys.any()
    with FirstFrameIntervention(pipe, keys, alpha=1.0):
        same = generate(pipe, composite, "a star", num_inference_steps=3, progress=False)
    assert np.array_equal(plain.frames, same.frames)
    with FirstFrameIntervention(pipe, keys, alpha=0.0):
        changed = generate(pipe, composite, "a star", num_inference_steps=3, progress=False)
    assert not np.array_equal(plain.frames, changed.frames)
    again = generate(pipe, composite, "a star", num_inference_steps=3, progress=False)  # processors restored
    assert np.array_equal(plain.frames, again.frames)


def test_the_combination_path_at_alpha_one_equals_plain_attention():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 40, 2, 16, generator=g) for _ in range(3))
    stock = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    for fused in (True, False):
        out = attention_with_scaled_keys(q, k, v, torch.tensor([2, 5, 9]), 1.0, fused=fused)
        assert torch.allclose(out, stock, atol=1e-6)


def test_steps_and_blocks_choose_where_it_acts(model):
    keys = np.array([0, 1, 2])
    with torch.no_grad():
        plain = [model(**inputs(timestep=t))[0] for t in (900.0, 500.0)]
        with FirstFrameIntervention(model, keys, alpha=0.0, steps=[1]):
            hit = [model(**inputs(timestep=t))[0] for t in (900.0, 500.0)]
    assert torch.equal(hit[0], plain[0]) and not torch.equal(hit[1], plain[1])


def test_bad_arguments_are_named(model):
    with pytest.raises(ValueError, match="alpha=-1"):
        FirstFrameIntervention(model, [0], alpha=-1)
    with pytest.raises(ValueError, match="blocks=\\[7\\]"):
        FirstFrameIntervention(model, [0], alpha=0, blocks=[7])
    with pytest.raises(ValueError, match="keys: a mask of shape \\(2, 2\\)"):
        with torch.no_grad(), FirstFrameIntervention(model, np.ones((2, 2), bool), alpha=0):
            model(**inputs())
    with pytest.raises(ValueError, match="token indices must lie in 0..23"):
        with torch.no_grad(), FirstFrameIntervention(model, [24], alpha=0):
            model(**inputs())
