"""FFGo LoRAs in every layout people exchange: diffusers/peft, kohya (VideoX-Fun, musubi) and ComfyUI.

- diffusers: ``transformer.blocks.0.attn1.to_q.lora_A.weight`` with adapter metadata (rank, alpha) in the
  safetensors header, loadable with ``pipe.load_lora_weights(folder)``.
- kohya / VideoX-Fun (the official FFGo checkpoints): ``lora_unet__blocks_0_self_attn_q.lora_down.weight``,
  ``lora_up``, ``alpha``, on Wan's original module names (FFGo's double underscore and musubi's single one both
  read).
- ComfyUI: ``diffusion_model.blocks.0.self_attn.q.lora_down.weight`` (``lora_A``/``lora_B`` also read).

Written for the official FFGo / VideoX-Fun scripts (:func:`to_official`, :func:`save_official_lora`): what
VideoX-Fun's ``LoRANetwork.save_weights`` writes, ``lora_unet__<original name, dots as underscores>`` with
``lora_down``/``lora_up``/``alpha``, every tensor bf16, and the two header fields it adds (``sshs_model_hash``,
``sshs_legacy_hash``). Its ``merge_lora`` cannot place ComfyUI's ``time_projection.1`` key (it stops at the
``Sequential``), so the official scripts need this layout.

Foreign files are converted to diffusers keys with ``alpha / rank`` folded into ``lora_B`` and loaded through
``pipe.load_lora_weights``; every key must map onto a Linear of the transformer, and the module count is checked.
Note VideoX-Fun calls the *high*-noise expert ``transformer_2``; diffusers calls it ``transformer``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

# target modules FFGo trained (book: "Parity with the official FFGo code"): 401 per 14B expert
FFGO_TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2", "time_proj"]
WEIGHT_NAMES = {"high": "high_noise_lora.safetensors", "low": "low_noise_lora.safetensors",
                "main": "pytorch_lora_weights.safetensors"}
# the official release keeps each expert's run in a folder named ..._wan_14bHigh_... / ..._wan_14bLow_..., holding
# VideoX-Fun's checkpoint-<step>.safetensors (book: "Parity with the official FFGo code")
OFFICIAL_RUN_DIRS = {"high": "ffgo_wan_14bHigh", "low": "ffgo_wan_14bLow", "main": "ffgo_wan"}

_TO_ORIGINAL = [  # diffusers module path -> Wan's original module path
    (r"^blocks\.(\d+)\.attn1\.to_q$", r"blocks.\1.self_attn.q"), (r"^blocks\.(\d+)\.attn1\.to_k$", r"blocks.\1.self_attn.k"),
    (r"^blocks\.(\d+)\.attn1\.to_v$", r"blocks.\1.self_attn.v"),
    (r"^blocks\.(\d+)\.attn1\.to_out\.0$", r"blocks.\1.self_attn.o"),
    (r"^blocks\.(\d+)\.attn2\.to_q$", r"blocks.\1.cross_attn.q"), (r"^blocks\.(\d+)\.attn2\.to_k$", r"blocks.\1.cross_attn.k"),
    (r"^blocks\.(\d+)\.attn2\.to_v$", r"blocks.\1.cross_attn.v"),
    (r"^blocks\.(\d+)\.attn2\.to_out\.0$", r"blocks.\1.cross_attn.o"),
    (r"^blocks\.(\d+)\.attn2\.add_k_proj$", r"blocks.\1.cross_attn.k_img"),
    (r"^blocks\.(\d+)\.attn2\.add_v_proj$", r"blocks.\1.cross_attn.v_img"),
    (r"^blocks\.(\d+)\.ffn\.net\.0\.proj$", r"blocks.\1.ffn.0"), (r"^blocks\.(\d+)\.ffn\.net\.2$", r"blocks.\1.ffn.2"),
    (r"^condition_embedder\.time_proj$", "time_projection.1"),
    (r"^condition_embedder\.time_embedder\.linear_1$", "time_embedding.0"),
    (r"^condition_embedder\.time_embedder\.linear_2$", "time_embedding.2"),
    (r"^condition_embedder\.text_embedder\.linear_1$", "text_embedding.0"),
    (r"^condition_embedder\.text_embedder\.linear_2$", "text_embedding.2"),
    (r"^proj_out$", "head.head"),
]


class LoraFormatError(ValueError):
    """A LoRA file whose keys do not fit the transformer."""


def original_name(module_path: str) -> str | None:
    for pattern, replacement in _TO_ORIGINAL:
        if re.match(pattern, module_path):
            return re.sub(pattern, replacement, module_path)
    return None


def linear_modules(transformer) -> dict[str, str]:
    """Wan original name -> diffusers path, for every base Linear of the transformer with an original name."""
    names = {}
    for path, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and ".lora_" not in path:
            path = path.removesuffix(".base_layer")  # a Linear already wrapped by peft
            original = original_name(path)
            if original is not None:
                names[original] = path
    return names


def target_module_count(transformer, targets=FFGO_TARGET_MODULES) -> int:
    """How many Linear layers peft wraps for ``targets`` (401 per Wan2.2-A14B expert)."""
    return sum(1 for path in linear_modules(transformer).values()
               if any(path == t or path.endswith("." + t) for t in targets))


# --------------------------------------------------------------------------------------------- reading
def _split(key: str) -> tuple[str, str]:
    """'<module>.lora_down.weight' -> (module, 'A'); '.lora_up.weight' -> 'B'; '.alpha' -> 'alpha'."""
    for suffix, part in ((".lora_down.weight", "A"), (".lora_A.weight", "A"), (".lora_up.weight", "B"),
                         (".lora_B.weight", "B"), (".alpha", "alpha")):
        if key.endswith(suffix):
            return key[: -len(suffix)], part
    raise LoraFormatError(f"unrecognised LoRA key {key!r}")


def detect_format(state_dict: dict) -> str:
    keys = list(state_dict)
    if all(k.startswith("lora_unet_") for k in keys):
        return "kohya"
    if all(k.startswith("diffusion_model.") for k in keys):
        return "comfyui"
    if all(k.startswith("transformer.") for k in keys):
        return "diffusers"
    raise LoraFormatError(f"cannot tell the LoRA layout from keys such as {keys[:3]}; expected 'lora_unet_*' "
                          f"(kohya/VideoX-Fun), 'diffusion_model.*' (ComfyUI) or 'transformer.*' (diffusers)")


def to_diffusers(state_dict: dict[str, torch.Tensor], transformer, expected_modules: int | None = None
                 ) -> dict[str, torch.Tensor]:
    """Convert a kohya or ComfyUI LoRA to diffusers keys for ``transformer``, folding ``alpha/rank`` into B.

    Raises :class:`LoraFormatError` listing every key that maps to no Linear of the transformer, every module
    missing its down or up matrix, and a module count different from ``expected_modules``.
    """
    if not state_dict:
        raise LoraFormatError("the LoRA holds no tensors")
    layout = detect_format(state_dict)
    if layout == "diffusers":
        return dict(state_dict)
    by_original = linear_modules(transformer)
    by_flat = {name.replace(".", "_"): name for name in by_original}
    modules: dict[str, dict] = {}
    unknown = []
    for key, tensor in state_dict.items():
        module, part = _split(key)
        if layout == "kohya":
            original = by_flat.get(module[len("lora_unet_"):].lstrip("_"))
        else:
            original = module[len("diffusion_model."):]
            original = original if original in by_original else None
        if original is None:
            unknown.append(key)
            continue
        modules.setdefault(original, {})[part] = tensor
    incomplete = sorted(m for m, parts in modules.items() if not {"A", "B"} <= set(parts))
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} keys match no Linear of this transformer: {unknown[:10]}")
    if incomplete:
        problems.append(f"modules missing lora_down or lora_up: {incomplete[:10]}")
    if expected_modules is not None and len(modules) != expected_modules:
        problems.append(f"{len(modules)} LoRA modules, expected {expected_modules}")
    if problems:
        raise LoraFormatError(f"{layout} LoRA does not fit the transformer: " + "; ".join(problems))
    out = {}
    for original, parts in modules.items():
        down, up = parts["A"], parts["B"]
        rank = down.shape[0]
        scale = float(parts["alpha"]) / rank if "alpha" in parts else 1.0
        path = by_original[original]
        out[f"transformer.{path}.lora_A.weight"] = down
        out[f"transformer.{path}.lora_B.weight"] = (up.float() * scale).to(up.dtype)
    return out


def to_comfyui(state_dict: dict[str, torch.Tensor], transformer, alpha: float | None = None) -> dict:
    """diffusers keys -> ComfyUI ``diffusion_model.<original>.lora_down/lora_up/alpha`` (alpha = rank unless
    given, so the effective scale is whatever the diffusers weights carry, times ``alpha/rank``)."""
    by_path = {path: original for original, path in linear_modules(transformer).items()}
    out = {}
    for key, tensor in state_dict.items():  # peft names (lora_A/lora_B) and diffusers files (lora.down/lora.up)
        match = re.match(r"^transformer\.(.+)\.lora(?:_([AB])|\.(down|up))\.weight$", key)
        if not match or match.group(1) not in by_path:
            raise LoraFormatError(f"key {key!r} is not a diffusers LoRA key of this transformer")
        original = by_path[match.group(1)]
        down = match.group(2) == "A" or match.group(3) == "down"
        out[f"diffusion_model.{original}.lora_{'down' if down else 'up'}.weight"] = tensor
        if down:
            out[f"diffusion_model.{original}.alpha"] = torch.tensor(float(alpha or tensor.shape[0]))
    return out


def to_official(state_dict: dict[str, torch.Tensor], transformer, alpha: float | None = None) -> dict:
    """diffusers keys -> the official FFGo / VideoX-Fun kohya layout, bf16 like its checkpoints:
    ``lora_unet__blocks_0_self_attn_q.lora_down.weight``, ``.lora_up.weight`` and ``.alpha`` (``alpha``
    defaults to the rank, i.e. the scale the diffusers weights already carry)."""
    parts = {"A": "lora_down.weight", "B": "lora_up.weight", "alpha": "alpha"}
    out = {}
    for key, tensor in to_comfyui(state_dict, transformer, alpha).items():
        module, part = _split(key)
        name = "lora_unet__" + module.removeprefix("diffusion_model.").replace(".", "_")
        out[f"{name}.{parts[part]}"] = tensor.detach().to(torch.bfloat16).contiguous()
    return out


def official_metadata(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """The header VideoX-Fun's ``save_weights`` writes: sd-webui-additional-networks' hashes of the file saved
    without user metadata (sha256 of the data section; legacy: sha256 of 64 KiB at 1 MiB, 8 hex digits)."""
    import hashlib

    from safetensors.torch import save

    data = save(tensors, metadata={})
    header = int.from_bytes(data[:8], "little")
    return {"sshs_model_hash": hashlib.sha256(data[8 + header:]).hexdigest(),
            "sshs_legacy_hash": hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]}


def write_official_lora(tensors: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write official-layout tensors (from :func:`to_official`) with the official header, atomically."""
    from safetensors.torch import save_file

    from .io import atomic_path

    path, tensors = Path(path), {key: tensor.cpu() for key, tensor in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=official_metadata(tensors))
    return path


# --------------------------------------------------------------------------------------------- files
def read_lora_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A LoRA file's tensors. diffusers files keep alpha only in their header (adapter metadata): it is folded
    into the up weights here, so the returned tensors mean the same at scale 1 in every layout."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    try:
        state = load_file(str(path))
        with safe_open(str(path), "pt") as handle:
            header = handle.metadata() or {}
    except Exception as error:  # safetensors raises its own error types for truncated or foreign files
        raise LoraFormatError(f"{path} is not a readable safetensors LoRA ({error})") from error
    if "lora_adapter_metadata" in header:
        config = json.loads(header["lora_adapter_metadata"])
        if config.get("transformer.rank_pattern") or config.get("transformer.alpha_pattern"):
            raise LoraFormatError(f"{path} uses per-module rank/alpha patterns; load its folder with "
                                  f"pipe.load_lora_weights instead")
        rank, alpha = config.get("transformer.r"), config.get("transformer.lora_alpha")
        if rank and alpha and alpha != rank:
            state = {k: v * (alpha / rank) if k.endswith(("lora.up.weight", "lora_B.weight")) else v
                     for k, v in state.items()}
    return state


def load_lora(pipe, path: str | Path, expert: str = "high", adapter_name: str = "ffgo", weight_name: str | None = None,
              expected_modules: int | None = None) -> str:
    """Load a LoRA of any supported layout into ``pipe``: ``expert="high"`` (or ``"main"``) → ``transformer``,
    ``"low"`` → ``transformer_2``. A folder is read with diffusers' own loader (its metadata keeps alpha)."""
    if expert not in ("high", "low", "main"):
        raise ValueError(f"expert={expert!r}: use 'high', 'low' or 'main'")
    into_2 = expert == "low"
    if into_2 and getattr(pipe, "transformer_2", None) is None:
        raise ValueError("expert='low' needs a two-expert pipeline (Wan2.2-A14B); this one has no transformer_2")
    path = Path(path)
    if path.is_dir():
        pipe.load_lora_weights(str(path), weight_name=weight_name or WEIGHT_NAMES[expert], adapter_name=adapter_name,
                               load_into_transformer_2=into_2)
        check_loaded(pipe, expert, adapter_name, path)
        return adapter_name
    transformer = pipe.transformer_2 if into_2 else pipe.transformer
    state_dict = to_diffusers(read_lora_file(path), transformer, expected_modules)
    pipe.load_lora_weights(state_dict, adapter_name=adapter_name, load_into_transformer_2=into_2)
    check_loaded(pipe, expert, adapter_name, path)
    return adapter_name


def check_loaded(pipe, expert: str, adapter_name: str, source) -> None:
    """diffusers loads a LoRA that fits no layer, or one of NaNs, without a word (no LoRA, or a black video):
    refuse both, taking the adapter out again."""
    transformer = pipe.transformer_2 if expert == "low" else pipe.transformer
    weights = [p for n, p in transformer.named_parameters() if ".lora_" in n and f".{adapter_name}." in n]
    broken = sum(1 for p in weights if not torch.isfinite(p).all())
    if weights and not broken:
        return
    if weights:
        pipe.delete_adapters(adapter_name)
    raise LoraFormatError(f"{source}: " + (f"{broken} of its {len(weights)} tensors hold NaN or infinite values"
                                           if weights else "none of its tensors fits a layer of this transformer "
                                           "(a LoRA for another model?)"))


def load_ffgo_lora(pipe, high: str | Path, low: str | Path | None = None, adapter_name: str = "ffgo") -> None:
    """The official FFGo pair: the *High* file into ``transformer``, the *Low* one into ``transformer_2``
    (VideoX-Fun names them the other way round), each checked for FFGo's module count."""
    load_lora(pipe, high, "high", adapter_name, expected_modules=target_module_count(pipe.transformer))
    if low is not None:
        load_lora(pipe, low, "low", adapter_name, expected_modules=target_module_count(pipe.transformer_2))


def _official_file(folder: Path, expert: str) -> Path:
    found = sorted(folder.glob(f"*14b{expert}*/checkpoint-600.safetensors"))
    if len(found) != 1:
        raise ValueError(f"FFGO_LORA_DIR {folder}: expected one */checkpoint-600.safetensors of the 14b{expert} run, "
                         f"found {len(found)}; download it with `ffstudy download ffgo-lora --to {folder}`")
    return found[0]


def attach_lora(pipe, lora: str | Path | None, official_dir: str | Path | None = None) -> str:
    """Load one of the LoRAs a generation can use and say which, in words. ``lora``: ``None`` (the base model),
    ``"official"`` (the official FFGo pair for Wan2.2-I2V-A14B, from ``official_dir`` as ``ffstudy download
    ffgo-lora`` lays it out), a folder ffstudy's trainer wrote (its ``main`` LoRA, or ``high``/``low`` for two
    experts; also a folder holding the weight file itself) or a LoRA file of any supported layout."""
    if lora is None:
        return "no LoRA: the base model"
    two_experts = getattr(pipe, "transformer_2", None) is not None
    if lora == "official":
        if not two_experts:
            raise ValueError("LORA='official': the official FFGo LoRAs are for Wan2.2-I2V-A14B's two experts and this "
                             "backbone has one; train your own (chapter 4) or use LORA=None for the base model")
        if official_dir is None:
            raise ValueError("LORA='official' needs FFGO_LORA_DIR, the folder of `ffstudy download ffgo-lora --to "
                             "FOLDER`")
        high, low = (_official_file(Path(official_dir), e) for e in ("High", "Low"))
        load_ffgo_lora(pipe, high, low)
        return f"the official FFGo LoRA ({high.parent.name}: High -> transformer, Low -> transformer_2)"
    path = Path(lora)
    experts = ("high", "low") if two_experts else ("main",)
    if path.is_file():
        load_lora(pipe, path, experts[0])
        return f"the LoRA file {path} ({experts[0]} expert)"
    if not path.is_dir():
        raise ValueError(f"LORA={str(lora)!r}: no such file or folder; give a LoRA file, a folder ffstudy's trainer "
                         "wrote, 'official' (Wan2.2-I2V-A14B) or None")
    found = {e: folder for e in experts for folder in (path, path / e) if (folder / WEIGHT_NAMES[e]).is_file()}
    if not found:
        raise ValueError(f"LORA={str(lora)!r}: the folder holds no {' or '.join(WEIGHT_NAMES[e] for e in experts)} "
                         f"(in it or in {'/'.join(experts)}/ below it) for this {len(experts)}-expert backbone")
    for expert, folder in found.items():
        load_lora(pipe, folder, expert)
    return f"your LoRA from {path} ({', '.join(found)})"


def save_lora(transformer, directory: str | Path, expert: str = "main", adapter_name: str = "default",
              state_dict: dict | None = None) -> Path:
    """Save ``transformer``'s peft adapter in diffusers format with its adapter metadata, atomically.
    ``state_dict``: the model's full state dict when it is sharded (``accelerator.get_state_dict``)."""
    from diffusers import WanImageToVideoPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    from .io import atomic_path

    directory = Path(directory)
    config = transformer.peft_config[adapter_name]
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(transformer, state_dict=state_dict,
                                                                      adapter_name=adapter_name))
    target = directory / WEIGHT_NAMES[expert]
    with atomic_path(target) as tmp:
        WanImageToVideoPipeline.save_lora_weights(
            tmp.parent, transformer_lora_layers=state, weight_name=tmp.name,
            transformer_lora_adapter_metadata=config.to_dict())
    return target


def save_official_lora(transformer, directory: str | Path, expert: str, step: int, adapter_name: str = "default",
                       state_dict: dict | None = None) -> Path:
    """Save ``transformer``'s peft adapter the way an official FFGo run does, for its scripts to merge:
    ``<directory>/ffgo_wan_14bHigh/checkpoint-<step>.safetensors`` (``14bLow`` for the low-noise expert), kohya
    keys, bf16, alpha = the adapter's ``lora_alpha``. ``state_dict`` as in :func:`save_lora`."""
    from peft.utils import get_peft_model_state_dict

    if expert not in OFFICIAL_RUN_DIRS:
        raise ValueError(f"expert={expert!r}: use one of {sorted(OFFICIAL_RUN_DIRS)}")
    config = transformer.peft_config[adapter_name]
    if config.rank_pattern or config.alpha_pattern:
        raise LoraFormatError("the official format has one alpha per module but save_official_lora takes the "
                              "adapter's single lora_alpha; this adapter has per-module rank/alpha patterns")
    state = get_peft_model_state_dict(transformer, state_dict=state_dict, adapter_name=adapter_name)
    state = {f"transformer.{key}": value for key, value in state.items()}
    path = Path(directory) / OFFICIAL_RUN_DIRS[expert] / f"checkpoint-{step}.safetensors"
    return write_official_lora(to_official(state, transformer, alpha=config.lora_alpha), path)
