import copy

import pytest
import torch
from safetensors.torch import save_file

from ffstudy.lora import (FFGO_TARGET_MODULES, LoraFormatError, linear_modules, load_ffgo_lora, load_lora,
                          target_module_count, to_comfyui, to_diffusers)
from ffstudy.models import load_pipeline

RANK, ALPHA = 4, 8.0


@pytest.fixture
def pipe():
    return load_pipeline("tiny-wan2.2-i2v")  # fresh: LoRAs get loaded into it


def ffgo_modules(transformer):
    return {orig: path for orig, path in linear_modules(transformer).items()
            if any(path == t or path.endswith("." + t) for t in FFGO_TARGET_MODULES)}


def synthetic_lora(transformer, layout, seed=0):
    """Random down/up/alpha for every FFGo target, in the given layout, plus the merged weights it implies."""
    g = torch.Generator().manual_seed(seed)
    state, merged = {}, {}
    for original, path in ffgo_modules(transformer).items():
        weight = transformer.get_submodule(path).weight
        down = torch.randn(RANK, weight.shape[1], generator=g) * 0.1
        up = torch.randn(weight.shape[0], RANK, generator=g) * 0.1
        if layout == "kohya":
            prefix = "lora_unet__" + original.replace(".", "_")
        else:
            prefix = "diffusion_model." + original
        state[f"{prefix}.lora_down.weight"], state[f"{prefix}.lora_up.weight"] = down, up
        state[f"{prefix}.alpha"] = torch.tensor(ALPHA)
        merged[path] = weight.detach() + (ALPHA / RANK) * up @ down
    return state, merged


def forward(transformer, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 36, 3, 8, 8, generator=g)
    ctx = torch.randn(1, 16, 32, generator=g)
    with torch.no_grad():
        return transformer(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=ctx,
                           return_dict=False)[0]


def merged_copy(transformer, merged):
    reference = copy.deepcopy(transformer)
    for path, weight in merged.items():
        reference.get_submodule(path).weight.data.copy_(weight)
    return reference


def test_ffgo_targets_count_like_the_paper(pipe):
    # 10 per block + condition_embedder.time_proj: 401 for the 40-block 14B expert, 21 for 2 tiny blocks
    assert target_module_count(pipe.transformer) == 10 * len(pipe.transformer.blocks) + 1


@pytest.mark.parametrize("layout", ["kohya", "comfyui"])
def test_foreign_formats_match_a_manual_merge(pipe, tmp_path, layout):
    state, merged = synthetic_lora(pipe.transformer, layout)
    save_file(state, str(tmp_path / "lora.safetensors"))
    reference = forward(merged_copy(pipe.transformer, merged))
    base = forward(pipe.transformer)
    load_lora(pipe, tmp_path / "lora.safetensors", "high", expected_modules=21)
    loaded = forward(pipe.transformer)
    assert (loaded - base).abs().max() > 1e-3  # the LoRA does something
    assert torch.allclose(loaded, reference, atol=1e-5), (loaded - reference).abs().max()


def test_official_pair_goes_high_to_transformer_and_low_to_transformer_2(pipe, tmp_path):
    high, merged_high = synthetic_lora(pipe.transformer, "kohya", seed=1)
    low, merged_low = synthetic_lora(pipe.transformer_2, "kohya", seed=2)
    save_file(high, str(tmp_path / "high.safetensors"))
    save_file(low, str(tmp_path / "low.safetensors"))
    ref_high = forward(merged_copy(pipe.transformer, merged_high))
    ref_low = forward(merged_copy(pipe.transformer_2, merged_low))
    load_ffgo_lora(pipe, tmp_path / "high.safetensors", tmp_path / "low.safetensors")
    assert torch.allclose(forward(pipe.transformer), ref_high, atol=1e-5)
    assert torch.allclose(forward(pipe.transformer_2), ref_low, atol=1e-5)


def test_comfyui_export_round_trips(pipe):
    state, _ = synthetic_lora(pipe.transformer, "kohya")
    diffusers_keys = to_diffusers(state, pipe.transformer)
    comfy = to_comfyui(diffusers_keys, pipe.transformer)
    assert "diffusion_model.blocks.0.self_attn.q.lora_down.weight" in comfy
    assert "diffusion_model.time_projection.1.alpha" in comfy
    back = to_diffusers(comfy, pipe.transformer)
    assert back.keys() == diffusers_keys.keys()
    assert all(torch.allclose(back[k], diffusers_keys[k]) for k in back)


def test_bad_files_list_what_is_wrong(pipe, tmp_path):
    state, _ = synthetic_lora(pipe.transformer, "kohya")
    state["lora_unet__blocks_9_self_attn_q.lora_down.weight"] = torch.zeros(RANK, 48)
    del state["lora_unet__blocks_0_ffn_2.lora_up.weight"]
    with pytest.raises(LoraFormatError) as info:
        to_diffusers(state, pipe.transformer, expected_modules=21)
    message = str(info.value)
    assert "lora_unet__blocks_9_self_attn_q.lora_down.weight" in message
    assert "blocks.0.ffn.2" in message
    with pytest.raises(LoraFormatError, match="expected 401"):
        to_diffusers(synthetic_lora(pipe.transformer, "kohya")[0], pipe.transformer, expected_modules=401)
    with pytest.raises(LoraFormatError, match="cannot tell the LoRA layout"):
        to_diffusers({"foo.weight": torch.zeros(1)}, pipe.transformer)
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(LoraFormatError, match="broken.safetensors"):
        load_lora(pipe, tmp_path / "broken.safetensors")
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        load_lora(pipe, tmp_path / "nowhere.safetensors")


def test_real_wan_layouts_give_the_papers_module_count_without_weights():
    from ffstudy.models import skeleton_transformer

    a14b = skeleton_transformer("wan2.2-i2v-a14b")
    assert target_module_count(a14b) == 401  # ffgo-method.md 4.2: 40 blocks x 10 + time_proj
    assert next(a14b.parameters()).device.type == "meta"
    assert target_module_count(skeleton_transformer("wan2.2-ti2v-5b")) == 30 * 10 + 1


def test_cli_converts_an_official_file_for_a14b_offline(tmp_path, capsys):
    from ffstudy.cli import main
    from ffstudy.models import skeleton_transformer

    transformer = skeleton_transformer("wan2.2-i2v-a14b")
    state = {}
    for original in ("blocks.0.self_attn.q", "blocks.39.ffn.2", "time_projection.1"):
        path = linear_modules(transformer)[original]
        weight = transformer.get_submodule(path).weight
        key = "lora_unet__" + original.replace(".", "_")
        state[f"{key}.lora_down.weight"] = torch.zeros(2, weight.shape[1])
        state[f"{key}.lora_up.weight"] = torch.zeros(weight.shape[0], 2)
        state[f"{key}.alpha"] = torch.tensor(2.0)
    save_file(state, str(tmp_path / "ffgo.safetensors"))
    assert main(["lora", str(tmp_path / "ffgo.safetensors"), str(tmp_path / "comfy.safetensors"), "--to", "comfyui"]) == 0
    assert "9 tensors in comfyui layout" in capsys.readouterr().out
    assert main(["lora", str(tmp_path / "ffgo.safetensors"), str(tmp_path / "x.safetensors"), "--check-count"]) == 2
    assert "3 LoRA modules, expected 401" in capsys.readouterr().err


def test_cli_generates_with_an_official_pair_loaded_into_both_experts(pipe, tmp_path):
    from ffstudy.cli import main
    from ffstudy.io import read_video

    high, _ = synthetic_lora(pipe.transformer, "kohya", seed=1)
    low, _ = synthetic_lora(pipe.transformer_2, "kohya", seed=2)
    save_file(high, str(tmp_path / "high.safetensors"))
    save_file(low, str(tmp_path / "low.safetensors"))
    common = ["generate", "--model", "tiny-wan2.2-i2v", "-f", "data/references/red_star.png", "-b",
              "data/backgrounds/meadow.png", "-p", "a star", "--steps", "2", "--frames", "9"]
    assert main(common + ["-o", str(tmp_path / "plain")]) == 0
    assert main(common + ["--lora", str(tmp_path / "high.safetensors"), "--lora-low", str(tmp_path / "low.safetensors"),
                          "-o", str(tmp_path / "ffgo")]) == 0
    plain, ffgo = (read_video(tmp_path / name / "video.mp4")[0] for name in ("plain", "ffgo"))
    assert plain.shape == ffgo.shape and not (plain == ffgo).all()
    assert main(["generate", "--model", "tiny-wan2.2-ti2v", "-f", "data/references/red_star.png", "-b",
                 "data/backgrounds/meadow.png", "-p", "a star", "--lora-low", str(tmp_path / "low.safetensors"),
                 "-o", str(tmp_path / "bad")]) == 2
