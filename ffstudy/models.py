"""Backbone registry: one ``load_pipeline(name)`` for tiny test models, the real Wan checkpoints and SpriteWorld.

Every entry is a real ``diffusers.WanImageToVideoPipeline``. The ``tiny-*`` entries are built from small configs
with seeded random weights and an offline tokenizer, so tests and CPU notebooks run the same code paths as the
real ``wan*`` checkpoints (two experts with ``boundary_ratio``, ``expand_timesteps``, a CLIP image encoder).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch


class ModelNotAvailableError(RuntimeError):
    """Raised when a backbone's weights are not on this machine and cannot be downloaded."""


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    family: str  # "wan2.2-i2v" (two experts), "wan2.2-ti2v" (one expert, expand_timesteps), "wan2.1-i2v"
    description: str
    default_size: tuple[int, int]  # (height, width) at the aspect the backbone was trained for
    default_frames: int
    spatial_factor: int  # pixels per token side: VAE stride x patch size
    repo_id: str | None = None
    builder: Callable[[], object] | None = field(default=None, repr=False)
    local_dir: str | None = None
    requirements: str = ""
    max_sequence_length: int = 512  # text tokens the transformer was trained with (umT5: 512)
    transformer_config: dict | None = field(default=None, repr=False)  # real checkpoints: for weightless skeletons
    guidance_scale: float = 6.0  # what generate() samples with unless told: FFGo's CFG and shift for Wan
    flow_shift: float = 5.0
    sigma_schedule: str = "official"  # the official Wan solver's sigma grid, or "diffusers" (ffstudy.schedulers)

    @property
    def is_tiny(self) -> bool:
        return self.builder is not None


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    _REGISTRY[spec.name] = spec
    return spec


def list_backbones() -> list[BackboneSpec]:
    return list(_REGISTRY.values())


def get_backbone(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; choose one of {sorted(_REGISTRY)}") from None


# ----------------------------------------------------------------------------------------------- tiny models
TINY_VOCABULARY = (
    "ad23r2 the camera view suddenly changes. a an and with of on in over under near behind through across "
    "red green blue yellow purple orange white black gray pink striped dotted checkered plain "
    "cat dog ball box star circle square triangle ring heart cross diamond sprite robot hand cup "
    "drift drifts move moves bounce bounces orbit orbits grow grows shrink shrinks fly flies roll rolls "
    "meadow sky ground sea desert night city room kitchen gradient stripes noise field scene background "
    "video person man woman play plays holding table floor wall light dark bright slowly quickly left right up down"
)


def tiny_tokenizer():
    """A byte-level BPE tokenizer trained in-process on a fixed corpus: deterministic and offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<pad>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([TINY_VOCABULARY] * 4, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512)


def tiny_text_encoder(tokenizer, d_model: int = 32):
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1)
    return UMT5EncoderModel(config).eval()


def _tiny_transformer(in_channels=36, out_channels=16, text_dim=32, **extra):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=24, in_channels=in_channels,
        out_channels=out_channels, text_dim=text_dim, freq_dim=256, ffn_dim=64, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=1024, **extra).eval()


def ffgo_scheduler(config=None, flow_shift: float = 5.0, sigma_schedule: str = "official"):
    """The sampler FFGo uses: UniPC on flow-matching sigmas (Wan's solver), shift 5; ``config`` keeps the rest
    of a checkpoint's scheduler settings. ``sigma_schedule="official"`` samples the official scripts' sigma grid
    (:func:`~ffstudy.schedulers.use_official_sigmas`); ``"diffusers"`` gives diffusers' default grid back.

    Either way it is a plain ``diffusers.UniPCMultistepScheduler`` (class and config), so a pipeline holding it
    saves a standard diffusers folder."""
    from diffusers import UniPCMultistepScheduler

    from .schedulers import SIGMA_SCHEDULES, use_official_sigmas

    if sigma_schedule not in SIGMA_SCHEDULES:
        raise ValueError(f"sigma_schedule={sigma_schedule!r}: use one of {SIGMA_SCHEDULES}")
    settings = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift)
    if config is None:
        scheduler = UniPCMultistepScheduler(num_train_timesteps=1000, **settings)
    else:
        scheduler = UniPCMultistepScheduler.from_config(config, **settings)
    return use_official_sigmas(scheduler) if sigma_schedule == "official" else scheduler


def at_flow_shift(scheduler, flow_shift: float):
    """``scheduler`` set to sample at ``flow_shift``. diffusers' flow-matching Euler sampler (``shift``; also
    its ``stochastic_sampling`` variant) is kept and only re-shifted, so a pipeline's ``pipe.scheduler =
    FlowMatchEulerDiscreteScheduler(...)`` is honoured; any other scheduler becomes :func:`ffgo_scheduler` at that
    shift, keeping its sigma grid."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        if scheduler.config.shift == flow_shift and not scheduler.config.use_dynamic_shifting:
            return scheduler
        return FlowMatchEulerDiscreteScheduler.from_config(scheduler.config, shift=flow_shift,
                                                          use_dynamic_shifting=False)
    if scheduler.config.get("flow_shift") == flow_shift:
        return scheduler
    return ffgo_scheduler(scheduler.config, flow_shift=flow_shift, sigma_schedule=sigma_schedule_of(scheduler))


def is_stochastic(scheduler) -> bool:
    """Whether ``scheduler`` draws fresh noise at each step (diffusers' ``stochastic_sampling``)."""
    return bool(scheduler.config.get("stochastic_sampling", False))


def sigma_schedule_of(scheduler) -> str:
    """``"official"`` for :func:`ffgo_scheduler`'s official sampler, else ``"diffusers"``."""
    from .schedulers import has_official_sigmas

    return "official" if has_official_sigmas(scheduler) else "diffusers"


def _build_tiny(family: str, seed: int = 0):
    from diffusers import AutoencoderKLWan, WanImageToVideoPipeline

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text_encoder = tiny_text_encoder(tokenizer)
    parts = dict(tokenizer=tokenizer, text_encoder=text_encoder, scheduler=ffgo_scheduler(),
                 image_encoder=None, image_processor=None)
    if family == "wan2.2-ti2v":
        vae = AutoencoderKLWan(base_dim=3, z_dim=48, in_channels=12, out_channels=12, is_residual=True, patch_size=2,
                               scale_factor_spatial=16, latents_mean=[0.0] * 48, latents_std=[1.0] * 48,
                               dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
        return WanImageToVideoPipeline(vae=vae.eval(), transformer=_tiny_transformer(48, 48), transformer_2=None,
                                       boundary_ratio=None, expand_timesteps=True, **parts)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True]).eval()
    if family == "wan2.2-i2v":
        return WanImageToVideoPipeline(vae=vae, transformer=_tiny_transformer(), transformer_2=_tiny_transformer(),
                                       boundary_ratio=0.9, **parts)
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    image_encoder = CLIPVisionModel(CLIPVisionConfig(hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                                     image_size=32, intermediate_size=16, patch_size=8)).eval()
    parts.update(image_encoder=image_encoder, image_processor=CLIPImageProcessor(crop_size=32, size=32))
    return WanImageToVideoPipeline(vae=vae, transformer=_tiny_transformer(image_dim=8, added_kv_proj_dim=48),
                                   **parts)


_WAN_DOWNLOAD = ("`ffstudy download {name} --to <folder>` (it prints the sizes first), then "
                 "load_pipeline('{name}', path='<folder>') or set FFSTUDY_MODEL_DIR=<parent folder>; or "
                 "load_pipeline('{name}', download=True) to fetch {repo} into the Hugging Face cache")

for _name, _family, _desc in (
    ("tiny-wan2.2-i2v", "wan2.2-i2v", "Wan2.2-I2V-A14B architecture in miniature: two experts, boundary_ratio 0.9"),
    ("tiny-wan2.2-ti2v", "wan2.2-ti2v", "Wan2.2-TI2V-5B architecture in miniature: one expert, expand_timesteps"),
    ("tiny-wan2.1-i2v", "wan2.1-i2v", "Wan2.1-I2V architecture in miniature: CLIP image encoder, one expert"),
):
    register_backbone(BackboneSpec(
        _name, _family, _desc + " (random weights; for tests and code paths, not for results)",
        default_size=(64, 112), default_frames=9, spatial_factor=32 if _family == "wan2.2-ti2v" else 16,
        builder=(lambda family=_family: _build_tiny(family))))

_WAN14B = dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=36, out_channels=16,
               text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
               qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)

register_backbone(BackboneSpec(
    "wan2.2-i2v-a14b", "wan2.2-i2v", "Wan2.2-I2V-A14B, the backbone of the FFGo paper (two 14B experts)",
    default_size=(720, 1280), default_frames=81, spatial_factor=16, repo_id="Wan-AI/Wan2.2-I2V-A14B-Diffusers",
    requirements="about 2 x 28 GB of bf16 expert weights plus an 11 GB umT5-XXL text encoder on disk; 720p x 81 "
                 "frames needs an H200 (141 GB) or model CPU offload on an 80 GB GPU with >= 80 GB host RAM",
    transformer_config=_WAN14B))
register_backbone(BackboneSpec(
    "wan2.2-ti2v-5b", "wan2.2-ti2v", "Wan2.2-TI2V-5B (one 5B expert, 16x16 VAE)",
    default_size=(704, 1280), default_frames=81, spatial_factor=32, repo_id="Wan-AI/Wan2.2-TI2V-5B-Diffusers",
    requirements="about 10 GB of bf16 transformer weights plus the 11 GB text encoder; a 24 GB GPU with model "
                 "CPU offload",
    transformer_config={**_WAN14B, "num_attention_heads": 24, "in_channels": 48, "out_channels": 48,
                        "ffn_dim": 14336, "num_layers": 30}))
register_backbone(BackboneSpec(
    "wan2.1-i2v-14b-480p", "wan2.1-i2v", "Wan2.1-I2V-14B-480P (one expert, CLIP image encoder)",
    default_size=(480, 832), default_frames=81, spatial_factor=16, repo_id="Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
    requirements="about 33 GB of bf16 transformer weights plus the 11 GB text encoder and CLIP; an 80 GB GPU, or "
                 "model CPU offload on a 40 GB one",
    transformer_config={**_WAN14B, "image_dim": 1280, "added_kv_proj_dim": 5120}))


SPRITEWORLD_DIR = Path(__file__).resolve().parents[1] / "data" / "models" / "spriteworld-i2v"
register_backbone(BackboneSpec(
    "spriteworld", "spriteworld", "SpriteWorld I2V: Wan I2V architecture pretrained by ffstudy on procedural sprite "
    "videos (one transformer, no image encoder); runs on a laptop CPU with real behaviour",
    default_size=(96, 160), default_frames=17, spatial_factor=16, local_dir=str(SPRITEWORLD_DIR),
    max_sequence_length=128, requirements="the folder data/models/spriteworld-i2v of the ffstudy repository "
                                          "(rebuild it with `ffstudy spriteworld pretrain`)",
    guidance_scale=1.0,  # its transformer never trained CFG's unconditional branch (no caption dropout)
    sigma_schedule="diffusers"))  # what its model card's numbers were measured with


# ----------------------------------------------------------------------------------------------- loading
def _resolve_local(spec: BackboneSpec, path: str | os.PathLike | None) -> str | None:
    if path is not None:
        return str(path)
    if spec.local_dir is not None:
        return spec.local_dir
    root = os.environ.get("FFSTUDY_MODEL_DIR")
    if root and spec.repo_id:
        candidate = Path(root) / spec.repo_id.split("/")[-1]
        if candidate.is_dir():
            return str(candidate)
    return None


def _from_pretrained(spec: BackboneSpec, source: str, dtype: torch.dtype, download: bool = False):
    from diffusers import AutoencoderKLWan, WanImageToVideoPipeline

    local = Path(source).exists()
    fetch = {} if local else {"local_files_only": not download}  # a hub id: the cache only, unless asked
    if not local and spec.repo_id is None:
        raise ModelNotAvailableError(f"backbone {spec.name!r}: folder {source} not found; it needs "
                                     f"{spec.requirements or 'a diffusers pipeline folder'}")
    try:
        # Wan's VAE is numerically fragile in bf16; the reference implementations keep it in fp32.
        vae = AutoencoderKLWan.from_pretrained(source, subfolder="vae", torch_dtype=torch.float32, **fetch)
        pipe = WanImageToVideoPipeline.from_pretrained(source, vae=vae, torch_dtype=dtype, **fetch)
    except (OSError, ValueError) as error:  # missing files, offline hub, gated repo, partial download
        how = _WAN_DOWNLOAD.format(repo=spec.repo_id, name=spec.name) if spec.repo_id else "check the folder"
        offline = (" (HF_HUB_OFFLINE is set, so nothing was downloaded)" if os.environ.get("HF_HUB_OFFLINE") else
                   " (not in the Hugging Face cache; nothing is downloaded unless asked)" if fetch.get("local_files_only")
                   else "")
        raise ModelNotAvailableError(
            f"could not load backbone {spec.name!r} from {source}{offline}: {type(error).__name__}: {error}\n"
            f"To use it, download the weights ({spec.requirements or 'see the model card'}): {how}") from error
    return pipe


def default_device() -> torch.device:
    """CUDA when there is a GPU, else the CPU: where ``load_pipeline`` puts a model and where the trainer trains."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_pipeline(name: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                  offload: str | None = None, vae_tiling: bool = False, path: str | os.PathLike | None = None,
                  sigma_schedule: str | None = None, download: bool = False):
    """Build or load backbone ``name`` as a ``WanImageToVideoPipeline`` with FFGo's sampler.

    ``device``: where to put it (default: CUDA when available, else CPU). ``dtype``: float32 for tiny models,
    bfloat16 for real weights by default. ``offload``: ``"model"`` or ``"sequential"`` CPU offload (CUDA only),
    the way to fit the 14B experts on an 80 GB card. ``vae_tiling``: decode in tiles to save memory at 720p.
    ``path``: a local diffusers folder to load instead of the hub repo. ``sigma_schedule``: ``"official"`` (the
    official FFGo scripts' sigmas, the default for Wan backbones) or ``"diffusers"`` (diffusers' default grid);
    default: the backbone's. ``download``: fetch a hub model that is not in the Hugging Face cache (tens of GB;
    by default nothing is downloaded: see ``ffstudy download``, which checks sizes and disk space first).
    """
    if offload not in (None, "model", "sequential"):
        raise ValueError(f"offload={offload!r}: use None, 'model' or 'sequential'")
    if offload and not torch.cuda.is_available():
        raise RuntimeError(f"offload={offload!r} needs a CUDA GPU and none is available; use offload=None on CPU")
    spec = get_backbone(name)
    if spec.is_tiny:
        pipe = spec.builder()  # built in float32
        if dtype not in (None, torch.float32):
            pipe.to(dtype=dtype)
    else:
        default = torch.float32 if spec.repo_id is None else torch.bfloat16  # local small models run in fp32
        pipe = _from_pretrained(spec, _resolve_local(spec, path) or spec.repo_id, dtype or default, download)
    pipe.scheduler = ffgo_scheduler(pipe.scheduler.config, spec.flow_shift, sigma_schedule or spec.sigma_schedule)
    if vae_tiling:
        pipe.vae.enable_tiling()
    if offload == "model":
        pipe.enable_model_cpu_offload()
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload()
    else:
        device = torch.device(device) if device else default_device()
        if device.type == "cpu" and not spec.is_tiny and spec.local_dir is None:
            warnings.warn(f"{name} on the CPU will take hours per video; use a CUDA GPU", stacklevel=2)
        pipe.to(device)
    pipe.ffstudy_backbone = spec  # lets generate/probe read the token geometry without guessing
    return pipe


# Settings per GPU memory (GiB at least -> height, width, frames, offload, vae_tiling). Estimates from the weights'
# sizes (bf16: 28 GB per 14B expert, 10 GB for the 5B transformer, 11 GB for umT5-XXL) and the activations of the
# tokens at each size, not measurements: a GPU run that measures them replaces them here.
_GPU_SETTINGS = {
    "wan2.2-i2v": [(130, 720, 1280, 81, None, False), (75, 720, 1280, 81, "model", True),
                   (38, 480, 832, 81, "model", True)],
    "wan2.2-ti2v": [(40, 704, 1280, 81, None, True), (20, 704, 1280, 81, "model", True),
                    (14, 480, 832, 49, "sequential", True)],
    "wan2.1-i2v": [(75, 480, 832, 81, None, False), (38, 480, 832, 81, "model", True),
                   (20, 480, 832, 49, "sequential", True)],
}


def suggested_settings(name: str, memory_gib: float | None = None) -> dict:
    """Size, frames, offload and VAE tiling for backbone ``name`` on a GPU of ``memory_gib`` (default: this
    machine's first CUDA device; without one, the backbone's CPU defaults). Estimates, labelled ``estimate``."""
    spec = get_backbone(name)
    height, width = spec.default_size
    cpu = {"height": height, "width": width, "num_frames": spec.default_frames, "offload": None,
           "vae_tiling": False, "estimate": False}
    if spec.family not in _GPU_SETTINGS:
        return cpu
    if memory_gib is None:
        if not torch.cuda.is_available():
            return cpu
        memory_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    for least, h, w, frames, offload, tiling in _GPU_SETTINGS[spec.family]:
        if memory_gib >= least:
            return {"height": h, "width": w, "num_frames": frames, "offload": offload, "vae_tiling": tiling,
                    "estimate": True}
    raise ValueError(f"{name} on a {memory_gib:.0f} GiB GPU is not practical (it needs at least "
                     f"{_GPU_SETTINGS[spec.family][-1][0]} GiB with offload); use wan2.2-ti2v-5b or a larger GPU")


# Dense bf16 tensor throughput in TFLOP/s from the vendors' data sheets (T4: fp16), matched by name.
_PEAK_TFLOPS = {"H200": 989, "H100": 989, "A100": 312, "L40S": 362, "L4": 121, "A10": 125, "T4": 65}
ESTIMATE_EFFICIENCY = 0.4  # the share of that peak a large attention model sustains: an assumption, not a measurement


def estimate_seconds(name: str, height: int, width: int, num_frames: int, steps: int = 50, cfg: bool = True,
                     gpu: str | None = None) -> float | None:
    """A rough time for one video: the transformer's FLOPs per pass (2 x parameters x tokens for the linear layers,
    4 x layers x tokens² x width for attention) x passes (steps, twice with CFG), at ``ESTIMATE_EFFICIENCY`` of the
    GPU's peak. ``gpu``: its name (default: this machine's CUDA device). None when the GPU or layout is unknown.
    An estimate to plan with, not a measurement; the progress bar measures."""
    spec = get_backbone(name)
    if gpu is None and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
    peak = next((v for k, v in _PEAK_TFLOPS.items() if gpu and k in gpu.upper().replace("NVIDIA", "")), None)
    if peak is None or spec.transformer_config is None:
        return None
    config = spec.transformer_config
    parameters = sum(p.numel() for p in skeleton_transformer(name).parameters())
    tokens = ((num_frames - 1) // 4 + 1) * (height // spec.spatial_factor) * (width // spec.spatial_factor)
    width_ = config["num_attention_heads"] * config["attention_head_dim"]
    flops = 2 * parameters * tokens + 4 * config["num_layers"] * tokens**2 * width_
    return flops * steps * (2 if cfg else 1) / (peak * 1e12 * ESTIMATE_EFFICIENCY)


def skeleton_transformer(name: str):
    """A backbone's transformer with its real layout and no weights (meta tensors): enough to name its modules,
    count LoRA targets and convert LoRA files without downloading anything."""
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    spec = get_backbone(name)
    if spec.transformer_config is None:
        raise ValueError(f"{name!r} has no stored transformer layout; load it with load_pipeline instead")
    with init_empty_weights():
        return WanTransformer3DModel(**spec.transformer_config)


def backbone_of(pipe) -> BackboneSpec | None:
    return getattr(pipe, "ffstudy_backbone", None)
