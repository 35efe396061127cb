"""The paths that only a CUDA GPU takes: bf16 autocast training on bf16 weights and the probe's fused-kernel
log-sum-exp (the FSDP config runs everywhere: tests/test_train.py). Skipped without a GPU (CI has none); run them
on one with

    python -m pytest tests/test_cuda.py -o addopts=""

The "real" backbones are loaded here exactly as a downloaded Wan2.2 checkpoint is (``load_pipeline(name,
path=folder)``: bf16 transformer, fp32 VAE) from a folder holding a tiny pipeline of the same architecture.
"""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ffstudy.compose import compose_first_frame
from ffstudy.generate import generate
from ffstudy.lora import load_lora
from ffstudy.models import load_pipeline
from ffstudy.train import train_expert

from .test_train import checkpoint_folder, config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("real, tiny, size", [("wan2.2-i2v-a14b", "tiny-wan2.2-i2v", (64, 112)),
                                              ("wan2.2-ti2v-5b", "tiny-wan2.2-ti2v", (64, 128))])
def test_bf16_weights_train_under_bf16_autocast(tmp_path, monkeypatch, cutout, plate, real, tiny, size):
    import ffstudy.train

    seen, add_lora = [], ffstudy.train.add_ffgo_lora

    def add_lora_and_watch(transformer, cfg):  # what the first FFN linear computes in, step after step
        def watch(module, args, output):
            autocast = torch.is_autocast_enabled(output.device.type)
            seen.append((output.dtype, torch.get_autocast_dtype(output.device.type) if autocast else None))
        transformer.blocks[0].ffn.net[2].register_forward_hook(watch)
        return add_lora(transformer, cfg)

    monkeypatch.setattr(ffstudy.train, "add_ffgo_lora", add_lora_and_watch)
    from .fewshot import make_dataset

    cfg = config(tmp_path, model=real, model_path=str(checkpoint_folder(tmp_path, tiny)), height=size[0],
                 width=size[1], manifest=str(make_dataset(tmp_path / "clips", size=size)), max_steps=40,
                 checkpoint_every=40, gradient_checkpointing=True)
    result = train_expert(cfg, "high" if "a14b" in real else "main", keep_pipeline=True)
    assert result.pipe.transformer.dtype == torch.bfloat16 and result.pipe.vae.dtype == torch.float32
    assert set(seen) == {(torch.bfloat16, torch.bfloat16)}, f"not trained under bf16 autocast: {set(seen)}"
    losses = np.array(result.losses)
    assert np.isfinite(losses).all() and losses[-10:].mean() < losses[:10].mean()
    lora = load_file(str(result.lora))
    assert all(t.dtype == torch.float32 for t in lora.values())

    comp = compose_first_frame([cutout], plate)
    kwargs = dict(num_inference_steps=3, height=size[0], width=size[1], num_frames=9, progress=False)
    trained = generate(result.pipe, comp, "a ball", **kwargs).frames.astype(int)
    fresh = load_pipeline(real, path=cfg.model_path)
    base = generate(fresh, comp, "a ball", **kwargs).frames.astype(int)
    load_lora(fresh, result.folder, "high" if "a14b" in real else "main")
    reloaded = generate(fresh, comp, "a ball", **kwargs).frames.astype(int)
    # reloaded, the LoRA is cast to the bf16 weights and runs without autocast: close to, not equal to, the
    # trained pipeline; the change it makes to the base model is what must survive
    drift, change = np.abs(reloaded - trained).mean(), np.abs(base - trained).mean()
    print(f"{real}: mean |reloaded - trained| {drift:.2f}, mean |base - trained| {change:.2f} (uint8 levels)")
    assert change > 1 and drift < 0.25 * change


def test_probe_is_exact_in_bf16_with_or_without_the_fused_kernel():
    """With the fused kernel's log-sum-exp (used only where it was found bit-identical to the stock attention)
    and with the chunked pass, the model's output is the stock output and the recorded masses agree."""
    from diffusers import WanTransformer3DModel

    from ffstudy.probe import _STOCK_KERNEL, FirstFrameProbe

    torch.manual_seed(0)
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=128,
                                  in_channels=36, out_channels=16, text_dim=64, freq_dim=256, ffn_dim=512,
                                  num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                  rope_max_seq_len=1024).to("cuda", torch.bfloat16).eval()
    inputs = dict(hidden_states=torch.randn(1, 36, 5, 16, 24, device="cuda", dtype=torch.bfloat16),
                  timestep=torch.tensor([500.0], device="cuda"), return_dict=False,
                  encoder_hidden_states=torch.randn(1, 32, 64, device="cuda", dtype=torch.bfloat16))
    with torch.no_grad():
        stock = model(**inputs)[0]
        results = {}
        for fused in (True, False):
            with FirstFrameProbe(model, fused_lse=fused) as probe:
                output = model(**inputs)[0]
            results[fused] = output, probe.result
    print("fused log-sum-exp matches the stock kernel:", _STOCK_KERNEL)
    for output, result in results.values():
        assert torch.equal(output, stock)
        assert len(result.records) == 2
    for name in ("entity_mass", "reverse"):
        a, b = getattr(results[True][1], name), getattr(results[False][1], name)
        assert np.allclose(a, b, rtol=2e-2, atol=1e-3), (name, np.abs(a - b).max())
