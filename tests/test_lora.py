import copy
import math

import pytest
import torch
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from ffstudy.lora import (FFGO_TARGET_MODULES, LoraFormatError, linear_modules, load_ffgo_lora, load_lora,
                          save_official_lora, target_module_count, to_comfyui, to_diffusers, to_official)
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


# ------------------------------------------------------------------ the official FFGo / VideoX-Fun layout
class Wan2_2Transformer3DModel(torch.nn.Module):
    """Wan's original module tree (the names the official code walks), built from a diffusers config; only the
    layers that matter for naming: Linear and Conv3d where Wan has them, norms as LayerNorm."""

    def __init__(self, c):
        super().__init__()
        dim = c.num_attention_heads * c.attention_head_dim
        linear = torch.nn.Linear
        self.patch_embedding = torch.nn.Conv3d(c.in_channels, dim, c.patch_size, c.patch_size)
        self.text_embedding = torch.nn.Sequential(linear(c.text_dim, dim), torch.nn.GELU(), linear(dim, dim))
        self.time_embedding = torch.nn.Sequential(linear(c.freq_dim, dim), torch.nn.SiLU(), linear(dim, dim))
        self.time_projection = torch.nn.Sequential(torch.nn.SiLU(), linear(dim, dim * 6))
        self.blocks = torch.nn.ModuleList()
        for _ in range(c.num_layers):
            block = torch.nn.Module()
            for attention in ("self_attn", "cross_attn"):
                attn = torch.nn.Module()
                for name in "qkvo":
                    setattr(attn, name, linear(dim, dim))
                attn.norm_q, attn.norm_k = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
                setattr(block, attention, attn)
            block.norm1, block.norm2, block.norm3 = (torch.nn.LayerNorm(dim) for _ in range(3))
            block.ffn = torch.nn.Sequential(linear(dim, c.ffn_dim), torch.nn.GELU(), linear(c.ffn_dim, dim))
            block.modulation = torch.nn.Parameter(torch.zeros(1, 6, dim))
            self.blocks.append(block)
        self.head = torch.nn.Module()
        self.head.norm = torch.nn.LayerNorm(dim)
        self.head.head = linear(dim, c.out_channels * math.prod(c.patch_size))


def videox_fun_lora_shapes(root, rank, targets=("k", "v", "q", "o", "ffn.0", "ffn.2")):
    """The tensors VideoX-Fun's LoRANetwork creates and saves for FFGo's LORA_MODULES (re-implemented from reading
    it): every Linear under a module of a target class whose name contains one of ``targets`` as a substring,
    named 'lora_unet' + '.' + <root name> + '.' + <child name> with every '.' made '_'."""
    shapes = {}
    for name, module in root.named_modules():
        if type(module).__name__ != "Wan2_2Transformer3DModel":
            continue
        for child_name, child in module.named_modules():
            if isinstance(child, torch.nn.Linear) and any(t in child_name for t in targets):
                lora = f"lora_unet.{name}.{child_name}".replace(".", "_")
                shapes[f"{lora}.lora_down.weight"] = (rank, child.in_features)
                shapes[f"{lora}.lora_up.weight"] = (child.out_features, rank)
                shapes[f"{lora}.alpha"] = ()
    return shapes


def videox_fun_find(root, layer):
    """VideoX-Fun merge_lora's way from a key's layer name to a module (re-implemented from reading it): the name
    after 'lora_unet_' split at '_'; first the whole rest as one attribute, then a front search that descends
    into the first attribute a growing prefix names (trying prefix + the rest at each level), then a back search
    that takes the longest joined run that is an attribute. None where it ends nowhere."""
    parts = layer.split("lora_unet_")[-1].split("_")

    def child(module, name):
        try:
            return torch.nn.Module.__getattr__(module, name)
        except AttributeError:
            return None

    found = child(root, "_".join(parts[1:]))
    if found is not None:
        return found
    module, rest = root, parts[1:]
    name = parts[0]
    while True:  # front search
        whole = child(module, "_".join([name, *rest]))
        if whole is not None:
            return whole
        step = child(module, name) if name else None
        if step is not None:
            module = step
            if not rest:
                return module
            name = rest.pop(0)
        elif rest:
            name = f"{name}_{rest.pop(0)}" if name else rest.pop(0)
        else:
            break
    module, start, end = root, 0 if parts[0] else 1, len(parts)  # back search
    while start < len(parts):
        if start >= end:
            return None
        step = child(module, "_".join(parts[start:end]))
        if step is None:
            end -= 1
        else:
            module, start, end = step, end, len(parts)
    return module


def videox_fun_merge(root, state_dict, multiplier=1.0):
    """VideoX-Fun merge_lora's key parsing and merge (re-implemented from reading it): ComfyUI names rewritten to
    kohya ones by a few replacements, each key split at its first '.', W += multiplier * alpha/rank * up @ down
    in fp32. Returns the layers the official code would crash or skip on (no module, or one without a weight)."""
    updates = {}
    for key, value in state_dict.items():
        if "diffusion_model" in key:
            for old, new in (("diffusion_model.", "lora_unet__"), ("blocks.", "blocks_"),
                             (".self_attn.", "_self_attn_"), (".cross_attn.", "_cross_attn_"), (".ffn.", "_ffn_")):
                key = key.replace(old, new)
        layer, element = key.split(".", 1)
        updates.setdefault(layer, {})[element] = value
    failed = []
    for layer, elements in updates.items():
        module = videox_fun_find(root, layer)
        if module is None or not isinstance(getattr(module, "weight", None), torch.Tensor) \
                or "lora_up.weight" not in elements:
            failed.append(layer)
            continue
        up, down = elements["lora_up.weight"].float(), elements["lora_down.weight"].float()
        scale = elements["alpha"].item() / up.shape[1] if "alpha" in elements else 1.0
        module.weight.data += multiplier * scale * up @ down
    return failed


def trained_adapter(transformer, seed=5):
    """``transformer`` with FFGo's peft adapter (rank 4, alpha 8) and random up weights, as after training."""
    from peft import LoraConfig

    transformer.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=FFGO_TARGET_MODULES,
                                       init_lora_weights=True))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in transformer.named_parameters():
            if ".lora_B." in name:
                parameter.copy_(torch.randn(parameter.shape, generator=g) * 0.1)
    return transformer


def test_official_export_has_videox_funs_keys_dtype_and_header(pipe, tmp_path):
    import hashlib
    import json as jsonlib

    from safetensors import safe_open

    transformer = trained_adapter(pipe.transformer)
    path = save_official_lora(transformer, tmp_path, "high", step=600)
    assert path == tmp_path / "ffgo_wan_14bHigh" / "checkpoint-600.safetensors"
    assert save_official_lora(trained_adapter(pipe.transformer_2), tmp_path, "low", 600).parent.name == "ffgo_wan_14bLow"
    state = load_file(str(path))
    expected = videox_fun_lora_shapes(Wan2_2Transformer3DModel(transformer.config), RANK)
    assert len(expected) == 3 * 21
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert {v.dtype for v in state.values()} == {torch.bfloat16}
    assert state["lora_unet__time_projection_1.alpha"].item() == ALPHA
    with safe_open(str(path), "pt") as handle:
        header = handle.metadata()
    assert set(header) == {"sshs_model_hash", "sshs_legacy_hash"} and len(header["sshs_legacy_hash"]) == 8
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    assert jsonlib.loads(raw[8:8 + length])["__metadata__"] == header
    assert header["sshs_model_hash"] == hashlib.sha256(raw[8 + length:]).hexdigest()  # the data section's hash


def test_videox_fun_merge_places_every_official_key_and_not_the_comfyui_export(pipe, tmp_path):
    transformer = trained_adapter(pipe.transformer)
    state = load_file(str(save_official_lora(transformer, tmp_path, "high", 600)))
    wan = Wan2_2Transformer3DModel(transformer.config)
    for parameter in wan.parameters():
        parameter.data.zero_()
    assert videox_fun_merge(wan, state) == []
    merged = {n: m.weight for n, m in wan.named_modules() if isinstance(m, torch.nn.Linear) and m.weight.abs().sum()}
    assert len(merged) == 21
    for original, path in ffgo_modules(transformer).items():  # the merged update is the adapter's, to bf16
        layer = transformer.get_submodule(path)
        delta = (ALPHA / RANK) * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        assert torch.allclose(wan.get_submodule(original).weight, delta, rtol=2e-2, atol=1e-3), original
    comfy = to_comfyui({f"transformer.{k}": v for k, v in get_peft_model_state_dict(transformer).items()},
                       transformer, alpha=ALPHA)
    assert videox_fun_merge(Wan2_2Transformer3DModel(transformer.config), comfy) == ["lora_unet__time_projection"]


def test_official_export_loads_back_into_diffusers_like_the_trained_adapter(pipe, tmp_path):
    trained = trained_adapter(copy.deepcopy(pipe.transformer))
    path = save_official_lora(trained, tmp_path, "high", 600)
    base = forward(pipe.transformer)
    load_lora(pipe, path, "high", expected_modules=21)
    expected, loaded = forward(trained), forward(pipe.transformer)
    assert (expected - base).abs().max() > 1e-3
    assert torch.allclose(loaded, expected, atol=2e-3), (loaded - expected).abs().max()  # bf16 tensors


def test_official_naming_at_a14b_scale_without_weights():
    from ffstudy.models import skeleton_transformer

    transformer = skeleton_transformer("wan2.2-i2v-a14b")
    state = {}
    for path in ffgo_modules(transformer).values():
        weight = transformer.get_submodule(path).weight
        state[f"transformer.{path}.lora_A.weight"] = torch.empty(128, weight.shape[1], device="meta")
        state[f"transformer.{path}.lora_B.weight"] = torch.empty(weight.shape[0], 128, device="meta")
    official = to_official(state, transformer, alpha=128)
    with torch.device("meta"):
        wan = Wan2_2Transformer3DModel(transformer.config)
    assert {k: tuple(v.shape) for k, v in official.items()} == videox_fun_lora_shapes(wan, 128)
    assert len(official) == 3 * 401
    assert official["lora_unet__blocks_0_ffn_0.lora_up.weight"].shape == (13824, 128)


def test_cli_writes_the_official_layout(pipe, tmp_path, capsys):
    from ffstudy.cli import main

    state, merged = synthetic_lora(pipe.transformer, "kohya")  # rank 4, alpha 8, fp32
    save_file(state, str(tmp_path / "in.safetensors"))
    out = tmp_path / "out.safetensors"
    assert main(["lora", str(tmp_path / "in.safetensors"), str(out), "--to", "official", "--model", "tiny-wan2.2-i2v",
                 "--check-count"]) == 0
    assert "63 tensors in official layout" in capsys.readouterr().out
    written = load_file(str(out))
    assert written.keys() == state.keys() and {v.dtype for v in written.values()} == {torch.bfloat16}
    wan = Wan2_2Transformer3DModel(pipe.transformer.config)
    for parameter in wan.parameters():
        parameter.data.zero_()
    assert videox_fun_merge(wan, written) == []
    for original, path in ffgo_modules(pipe.transformer).items():  # alpha/rank folded: same update
        delta = merged[path] - pipe.transformer.get_submodule(path).weight
        assert torch.allclose(wan.get_submodule(original).weight, delta, rtol=2e-2, atol=2e-3), original


def test_attach_lora_offers_each_route_and_names_what_it_loaded(tmp_path):
    """Chapter 5's routes: the base model, a folder the trainer wrote (expert subfolders), a LoRA file, and the
    official pair — refused on a one-expert backbone and without its folder, named when a file is missing. Fresh
    pipelines: attaching changes them."""
    import torch
    from ffstudy.lora import WEIGHT_NAMES, attach_lora, save_lora
    from ffstudy.train import TrainConfig, add_ffgo_lora

    one = load_pipeline("tiny-wan2.2-ti2v")
    assert attach_lora(one, None) == "no LoRA: the base model"
    trained = load_pipeline("tiny-wan2.2-ti2v")
    add_ffgo_lora(trained.transformer, TrainConfig(manifest="unused.json", rank=4, alpha=4))
    for p in trained.transformer.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.01)
    save_lora(trained.transformer, tmp_path / "run" / "main", "main")
    assert attach_lora(one, tmp_path / "run") == f"your LoRA from {tmp_path / 'run'} (main)"
    assert attach_lora(load_pipeline("tiny-wan2.2-ti2v"), tmp_path / "run" / "main" / WEIGHT_NAMES["main"]).startswith(
        "the LoRA file")
    with pytest.raises(ValueError, match="this backbone has one"):
        attach_lora(load_pipeline("tiny-wan2.2-ti2v"), "official", tmp_path)
    two = load_pipeline("tiny-wan2.2-i2v")
    with pytest.raises(ValueError, match="needs FFGO_LORA_DIR"):
        attach_lora(two, "official")
    with pytest.raises(ValueError, match="found 0; download it with `ffstudy download ffgo-lora"):
        attach_lora(two, "official", tmp_path)
    with pytest.raises(ValueError, match="holds no high_noise_lora.safetensors or low_noise_lora.safetensors"):
        attach_lora(two, tmp_path / "run")
    with pytest.raises(ValueError, match="no such file or folder"):
        attach_lora(two, tmp_path / "nowhere")
