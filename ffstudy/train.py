"""Few-shot FFGo LoRA training on accelerate: read it top to bottom in :func:`train_expert`.

Recipe (``book/parity.md``, "Training"): peft LoRA on attn1/attn2 q,k,v,o, both FFN linears and
``condition_embedder.time_proj``; flow-matching velocity loss with FFGo's outlier mask (|err| ≤ 50); uniform
timestep indices on the shift-5 schedule, split at the 0.9 boundary between Wan2.2's experts (high:
``transformer``, low: ``transformer_2``, one independent run each); AdamW lr 1e-4, wd 3e-2, eps 1e-10; grad-norm
clip 0.05; bf16 autocast on GPU; gradient checkpointing. Clips and prompts are encoded once into a latent cache,
so a step runs only the transformer.

One addition that is ffstudy's, not FFGo's: ``entity_loss_weight`` w > 0 weighs the latent cells an entity touches
1 + w times the rest (examples then need masks, :meth:`FewShotDataset.entity_masks`), because small entities carry
little of a plain loss that the scene dominates; the SpriteWorld experiment measures what it does.

Run with ``ffstudy train --config configs/x.yaml`` or, on several processes,
``accelerate launch --multi_gpu --num_processes N -m ffstudy.train --config configs/x.yaml`` (on a CPU-only
machine this gives N gloo processes; plain ``--num_processes`` without ``--multi_gpu`` starts only one).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import pickle
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from .data import (CLIP_LENGTHS, FewShotDataset, LatentCache, check_dataset, clip_key, encode_clip, encoder_fingerprint,
                   latent_entity_mask)
from .lora import FFGO_TARGET_MODULES, WEIGHT_NAMES, save_lora, target_module_count
from .io import exclusive_output, fsync_tree, write_json
from .models import default_device, get_backbone, load_pipeline, skeleton_transformer


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TargetModulesError(ValueError):
    """``target_modules`` names a layer the model does not have."""


class ResumeMismatchError(ValueError):
    """``--resume`` found a checkpoint that another run (other settings, data or seed) wrote."""


@dataclass
class TrainConfig:
    manifest: str
    model: str = "tiny-wan2.2-i2v"
    model_path: str | None = None
    output_dir: str = "outputs/train"
    expert: str = "both"  # "high", "low", "both" (two-expert models) or "full" (whole range, one transformer)
    height: int = 64
    width: int = 112
    clip_length: str | int = "official"  # "official" (21 frames), "paper" (81) or a frame count 4k+1
    rank: int = 128
    alpha: float = 128.0
    target_modules: list[str] = field(default_factory=lambda: list(FFGO_TARGET_MODULES))
    learning_rate: float = 1e-4
    weight_decay: float = 3e-2
    adam_epsilon: float = 1e-10
    max_grad_norm: float = 0.05
    batch_size: int = 1  # per process
    gradient_accumulation_steps: int = 1
    max_steps: int = 600
    checkpoint_every: int = 100
    validation_every: int = 0  # 0: only at the end
    validation_inference_steps: int = 50
    flow_shift: float = 5.0
    boundary_ratio: float = 0.9
    loss_outlier_threshold: float = 50.0
    entity_loss_weight: float = 0.0  # ffstudy's extension: extra loss weight on entity cells (needs masks)
    gradient_checkpointing: bool = False
    mixed_precision: str = "auto"  # "auto": bf16 on CUDA, none on CPU
    seed: int = 42
    cache_dir: str | None = None

    def __post_init__(self):
        """Check every setting before any work: a bad one used to fail only after minutes of loading and
        encoding, or not at all (checkpoint_every: 0). YAML 1.1 reads an unquoted ``1e-4`` as a string: such a
        string is read as the number it spells."""
        problems = _setting_problems(self)
        if problems:
            raise ValueError("invalid settings: " + "; ".join(problems))

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> "TrainConfig":
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config not found: {path}")
        try:
            values = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ValueError(f"{path} is not valid YAML{where}: {getattr(error, 'problem', None) or error}") from error
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of settings (manifest: ..., model: ...), got "
                             + ("an empty file" if values is None else type(values).__name__))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(map(str, values)) - known)
        if unknown:
            raise ValueError(f"{path}: unknown settings {unknown}; valid ones are {sorted(known)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "manifest" not in values:
            raise ValueError(f"{path}: no manifest given (manifest: path/to/manifest.json)")
        try:
            return cls(**values)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error


_INTEGERS = {"height": 1, "width": 1, "rank": 1, "batch_size": 1, "gradient_accumulation_steps": 1, "max_steps": 1,
             "checkpoint_every": 1, "validation_every": 0, "validation_inference_steps": 1, "seed": 0}
_POSITIVE = ("alpha", "learning_rate", "adam_epsilon", "max_grad_norm", "flow_shift", "loss_outlier_threshold")
_NON_NEGATIVE = ("weight_decay", "entity_loss_weight")
_CHOICES = {"expert": ("high", "low", "both", "full"), "mixed_precision": ("auto", "no", "fp16", "bf16")}
MAX_SEED = 2**63 - 1  # the seed plus 1000 per process must stay within torch.manual_seed's range


def _setting_problems(config: TrainConfig) -> list[str]:
    """What is wrong with ``config``'s values, one entry per setting; numbers spelled as strings are converted."""
    problems = []
    for name in _POSITIVE + _NON_NEGATIVE + ("boundary_ratio",):
        value = getattr(config, name)
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
            else:
                setattr(config, name, value)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            problems.append(f"{name}: {value!r} is not a finite number")
        elif name in _POSITIVE and value <= 0:
            problems.append(f"{name}: {value!r} must be > 0")
        elif name in _NON_NEGATIVE and value < 0:
            problems.append(f"{name}: {value!r} must be >= 0")
        elif name == "boundary_ratio" and not 0 < value < 1:
            problems.append(f"boundary_ratio: {value!r} must be between 0 and 1")
    for name, low in _INTEGERS.items():
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{name}: {value!r} is not an integer")
        elif value < low or (name == "seed" and value > MAX_SEED):
            problems.append(f"{name}: {value!r} must be " + (f">= {low}" if name != "seed" else "in [0, 2**63 - 1]"))
    for name, choices in _CHOICES.items():
        if getattr(config, name) not in choices:
            problems.append(f"{name}: {getattr(config, name)!r} is not one of {list(choices)}")
    length = config.clip_length
    if length not in CLIP_LENGTHS and (isinstance(length, bool) or not isinstance(length, int) or length < 5
                                       or (length - 1) % 4):
        problems.append(f"clip_length: {length!r} must be 'official', 'paper' or a frame count 4k+1 >= 5 (Wan's VAE "
                        "packs 4 frames into each latent after the first)")
    targets = config.target_modules
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t for t in targets):
        problems.append(f"target_modules: {targets!r} must be a non-empty list of module names")
    for name in ("manifest", "model", "output_dir"):
        if not isinstance(getattr(config, name), str) or not getattr(config, name):
            problems.append(f"{name}: {getattr(config, name)!r} must be a non-empty string")
    if isinstance(config.model, str):
        try:
            get_backbone(config.model)
        except KeyError as error:
            problems.append(f"model: {error.args[0]}")
    for name in ("model_path", "cache_dir"):
        if getattr(config, name) is not None and not isinstance(getattr(config, name), str):
            problems.append(f"{name}: {getattr(config, name)!r} must be a path")
    if not isinstance(config.gradient_checkpointing, bool):
        problems.append(f"gradient_checkpointing: {config.gradient_checkpointing!r} must be true or false")
    return problems


def check_targets_early(config: TrainConfig) -> None:
    """:func:`check_targets` before loading the model, for backbones whose weightless skeleton names the modules."""
    if get_backbone(config.model).transformer_config is not None:
        check_targets(skeleton_transformer(config.model), config)


def check_targets(transformer, config: TrainConfig) -> None:
    """Refuse ``target_modules`` entries that name no Linear layer of ``transformer`` (a typo would otherwise
    train a LoRA on the other targets only)."""
    unknown = [t for t in config.target_modules if not target_module_count(transformer, [t])]
    if unknown:
        raise TargetModulesError(f"target_modules {unknown} match no layer of the {config.model} transformer; FFGo's are "
                         f"{FFGO_TARGET_MODULES}")


def clip_frames(config: TrainConfig) -> int:
    return CLIP_LENGTHS.get(config.clip_length, config.clip_length)


# --------------------------------------------------------------------------------------------- timesteps
def expert_timestep_range(expert: str, boundary_ratio: float, flow_shift: float) -> tuple[torch.Tensor, int, int]:
    """Training sigmas of the shift-``flow_shift`` schedule (1000, descending) and the index range
    ``[lo, hi)`` an expert trains on: high = timesteps above ``boundary_ratio·1000``, low = the rest."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=flow_shift)
    sigmas = scheduler.sigmas[:1000].clone()  # 1000 training sigmas (a trailing 0 appears only after set_timesteps)
    boundary = int(torch.argmin((scheduler.timesteps - boundary_ratio * 1000).abs()))
    lo, hi = {"high": (0, boundary), "low": (boundary, 1000), "full": (0, 1000), "main": (0, 1000)}[expert]
    return sigmas, lo, hi


def sample_flow_inputs(batch: list[dict], sigmas, lo: int, hi: int, generator, device):
    """One flow-matching training input from cached clips: x0 sampled from the cached latent distribution,
    x_t = (1-σ)·x0 + σ·ε with a uniform timestep index in ``[lo, hi)``, target ε − x0 (FFGo §4.3). The posterior's
    std is normalised like its mean, so x0 is a normalised posterior sample; VideoX-Fun, FFGo's trainer, adds the
    raw std to the normalised mean instead.
    Returns the transformer's keyword arguments, the target, the loss mask (TI2V only) and σ."""
    def take(key):
        return torch.cat([b[key] for b in batch]).to(device)

    mean, std = take("latent_mean"), take("latent_std")
    x0 = mean + std * torch.randn(mean.shape, generator=generator).to(device)
    noise = torch.randn(x0.shape, generator=generator).to(device)
    sigma = sigmas[torch.randint(lo, hi, (len(batch),), generator=generator)].to(device).view(-1, 1, 1, 1, 1)
    noisy = (1 - sigma) * x0 + sigma * noise
    timestep = sigma.flatten() * 1000
    if "first_frame_mask" in batch[0]:  # Wan2.2-TI2V: the clean first frame gets timestep 0, as at inference
        frame_mask = take("first_frame_mask")
        model_input = (1 - frame_mask) * take("condition") + frame_mask * noisy
        timestep = (frame_mask[:, 0, :, ::2, ::2] * timestep.view(-1, 1, 1, 1)).flatten(1)
    else:
        frame_mask = None
        model_input = torch.cat([noisy, take("condition")], dim=1)
    inputs = dict(hidden_states=model_input, timestep=timestep, encoder_hidden_states=take("prompt_embeds"),
                  encoder_hidden_states_image=take("image_embeds") if "image_embeds" in batch[0] else None)
    return inputs, noise - x0, frame_mask, sigma


def entity_loss_weights(batch: list[dict], extra: float, device) -> torch.Tensor | None:
    """Per-cell loss weights 1 + ``extra``·mask from the batch's cached ``entity_mask`` (None when ``extra`` is 0):
    the cells an entity touches count 1 + ``extra`` times the rest."""
    if not extra:
        return None
    return 1.0 + extra * torch.cat([b["entity_mask"] for b in batch]).to(device)


def masked_velocity_loss(prediction, target, threshold: float, mask=None, weight=None) -> torch.Tensor:
    """FFGo's loss: squared error on elements with |error| ≤ threshold, averaged over all (masked) elements.
    ``weight`` (broadcast like ``mask``) reweights elements, normalised to mean 1 so the loss keeps its scale."""
    error = prediction.float() - target.float()
    keep = error.abs() <= threshold
    squared = error.pow(2)
    if weight is not None:
        squared = weight.expand_as(error) / weight.mean() * squared
    if mask is not None:
        keep = keep & mask.bool().expand_as(keep)
        return (squared * keep).sum() / mask.expand_as(error).sum().clamp(min=1)
    return (squared * keep).mean()


def batch_loss(accelerator, transformer, batch: list[dict], config: "TrainConfig", sigmas, lo: int, hi: int,
               generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step's loss on cached clips (and its σ): noisy inputs, the transformer under the
    accelerator's autocast (bf16 on GPU), FFGo's masked velocity loss with optional entity weights."""
    inputs, target, frame_mask, sigma = sample_flow_inputs(batch, sigmas, lo, hi, generator, accelerator.device)
    with accelerator.autocast():
        prediction = transformer(**inputs, return_dict=False)[0]
    weight = entity_loss_weights(batch, config.entity_loss_weight, accelerator.device)
    return masked_velocity_loss(prediction, target, config.loss_outlier_threshold, frame_mask, weight), sigma


def add_ffgo_lora(transformer, config: "TrainConfig") -> list[torch.nn.Parameter]:
    """A fresh peft LoRA on the config's targets, seeded so every process starts alike; its weights are kept
    in float32 (the frozen base may be bf16) and are the only trainable parameters, which are returned."""
    from peft import LoraConfig

    check_targets(transformer, config)
    expected = target_module_count(transformer, config.target_modules)
    lora_config = LoraConfig(r=config.rank, lora_alpha=config.alpha, target_modules=config.target_modules,
                             init_lora_weights=True)
    device = next(transformer.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)  # the LoRA's A matrices are random: same seed, same start, in any process
        transformer.add_adapter(lora_config)
    params = [p for n, p in transformer.named_parameters() if "lora_" in n]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    wrapped = sum(1 for n, _ in transformer.named_modules() if n.endswith(".lora_A"))
    if wrapped != expected:
        raise RuntimeError(f"peft wrapped {wrapped} modules, expected {expected} for {config.target_modules}")
    return params


# --------------------------------------------------------------------------------------------- checkpoints
# settings a resumed run may change: they decide how long to train and where to write, not what a step computes
RESUMABLE_SETTINGS = ("manifest", "output_dir", "max_steps", "checkpoint_every", "validation_every",
                      "validation_inference_steps", "cache_dir")


def dataset_digest(manifest: str | Path) -> str:
    """SHA-256 of the manifest and of every file it names: a checkpoint belongs to this data and no other."""
    dataset = FewShotDataset.load(manifest)
    digest = hashlib.sha256(Path(manifest).read_bytes())
    for e in dataset.examples:
        for relative in [e.video, *e.cutouts, e.background, e.composite, e.masks]:
            path = dataset.path(relative) if relative else None
            if path is not None and path.is_file():
                digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def run_fingerprint(config: TrainConfig, expert: str) -> dict:
    """What a checkpoint must share with the run that resumes it: the expert, every setting a step depends on
    (seed included) and the dataset's content."""
    settings = {k: v for k, v in asdict(config).items() if k not in RESUMABLE_SETTINGS}
    return {"expert": expert, "settings": json.loads(json.dumps(settings)), "data": dataset_digest(config.manifest)}


def fingerprint_changes(saved: dict, current: dict) -> list[str]:
    """The differences between a checkpoint's fingerprint and this run's, in words."""
    changes = [f"expert {saved.get('expert')!r} -> {current['expert']!r}"] \
        if saved.get("expert") != current["expert"] else []
    old, new = saved.get("settings", {}), current["settings"]
    changes += [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(old.keys() | new.keys())
                if old.get(k) != new.get(k)]
    if saved.get("data") != current["data"]:
        changes.append("the dataset (the manifest or a file it names) changed")
    return changes


def check_resumable(checkpoint: Path, state: dict, fingerprint: dict, force: bool = False) -> None:
    """Refuse to resume from a checkpoint of another run, saying what differs; ``force`` continues anyway."""
    if "fingerprint" not in state:
        print(f"warning: {checkpoint} was written before ffstudy stored run fingerprints; resuming from it "
              "unchecked", flush=True)
        return
    changes = fingerprint_changes(state["fingerprint"], fingerprint)
    if changes and not force:
        raise ResumeMismatchError(
            f"--resume: {checkpoint} belongs to another run ({'; '.join(changes)}). To start fresh, run without "
            f"--resume (this folder's checkpoints are then replaced) or set another output_dir; to continue from it "
            f"with the new settings anyway, use --force-resume.")
    if changes:
        print(f"warning: --force-resume: continuing {checkpoint} despite {'; '.join(changes)}", flush=True)


class DamagedCheckpointError(ValueError):
    """A checkpoint file cannot be read (a disk error or a bad copy: a kill cannot leave one half-written)."""


def _read(path: Path, loader):
    """``loader(path)``, any failure to read reported as the file's damage."""
    from safetensors import SafetensorError

    try:
        return loader(path)
    except (OSError, ValueError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError) as error:
        raise DamagedCheckpointError(f"{path} cannot be read ({type(error).__name__}: {error})") from error


def _verified_state(checkpoint: Path, expert: str, process_index: int) -> dict:
    """The checkpoint's state.json, after checking that every file this process will read opens (cheaply:
    headers and memory maps, not the tensors)."""
    from safetensors import safe_open

    state = _read(checkpoint / "state.json", lambda p: json.loads(p.read_text()))
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise DamagedCheckpointError(f"{checkpoint / 'state.json'} holds no step")
    _read(checkpoint / WEIGHT_NAMES[expert], lambda p: list(safe_open(str(p), "pt").keys()))
    for name in ("optimizer.pt", f"rng-{process_index}.pt"):
        _read(checkpoint / name, lambda p: torch.load(p, weights_only=True, mmap=True))
    return state


def pick_checkpoint(run_dir: Path, fingerprint: dict, expert: str, force: bool = False,
                    process_index: int = 0) -> Path | None:
    """The newest checkpoint that reads and belongs to this run (see :func:`check_resumable`). A damaged one is
    named and skipped for the one before it; if all are damaged the run stops rather than start over."""
    found = sorted((p for p in run_dir.glob("checkpoint-*") if p.is_dir()), reverse=True)
    for checkpoint in found:
        try:
            state = _verified_state(checkpoint, expert, process_index)
        except DamagedCheckpointError as error:
            print(f"warning: --resume: {error}; skipping {checkpoint.name} for the checkpoint before it", flush=True)
            continue
        check_resumable(checkpoint, state, fingerprint, force)
        return checkpoint
    if found:
        raise DamagedCheckpointError(f"--resume: every checkpoint in {run_dir} is damaged (see the warnings above); "
                                     "start fresh without --resume")
    return None


def latest_checkpoint(directory: Path) -> Path | None:
    done = sorted(p for p in directory.glob("checkpoint-*") if p.is_dir() and (p / "state.json").is_file())
    return done[-1] if done else None


def _state_dict_options(**options):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # full (unsharded) tensors on every process: the same files whether DDP, FSDP or one process wrote them
    return StateDictOptions(full_state_dict=True, **options)


def write_checkpoint(accelerator, directory: Path, step: int, transformer, optimizer, generator, expert: str,
                     fingerprint: dict) -> None:
    """All ranks write their RNG state into a temporary folder; the main rank adds the LoRA, optimizer and
    step, then renames it into place, so a kill at any moment leaves the previous checkpoint intact."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    final = directory / f"checkpoint-{step:06d}"
    staging = directory / f".checkpoint-{step:06d}.partial"
    full_state = accelerator.get_state_dict(transformer)  # every rank takes part when FSDP shards the model
    optimizer_state = get_optimizer_state_dict(transformer, optimizer.optimizer, options=_state_dict_options())
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(generator.get_state(), staging / f"rng-{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_lora(accelerator.unwrap_model(transformer), staging, expert, state_dict=full_state)
        torch.save(optimizer_state, staging / "optimizer.pt")
        (staging / "state.json").write_text(json.dumps({"step": step, "expert": expert, "fingerprint": fingerprint}))
        fsync_tree(staging)
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        fsync_tree(final)  # and the folder that now names it
    accelerator.wait_for_everyone()


def read_checkpoint(accelerator, checkpoint: Path, transformer, optimizer, generator, expert: str,
                    config: TrainConfig) -> int:
    """Every rank reads the full LoRA and optimizer state; ``set_*_state_dict`` shards them as the model is. The
    optimizer's hyperparameters are the config's, not the checkpoint's (they differ only under --force-resume)."""
    from diffusers.utils import convert_unet_state_dict_to_peft
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    lora = load_file(str(checkpoint / WEIGHT_NAMES[expert]))
    lora = convert_unet_state_dict_to_peft({k.removeprefix("transformer."): v for k, v in lora.items()})
    lora = {k.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default."): v
            for k, v in lora.items()}  # peft's names for the adapter "default"
    names = {n.replace("_checkpoint_wrapped_module.", "")  # FSDP's activation checkpointing wraps blocks
             for n, _ in accelerator.unwrap_model(transformer).named_parameters()}
    missing = set(lora) - names
    if missing:
        raise ValueError(f"{checkpoint}: LoRA tensors this model does not have: {sorted(missing)[:5]}")
    set_model_state_dict(transformer, lora, options=_state_dict_options(strict=False))
    set_optimizer_state_dict(transformer, optimizer.optimizer, torch.load(checkpoint / "optimizer.pt",
                                                                          weights_only=True),
                             options=_state_dict_options())
    for group in optimizer.param_groups:
        group.update(lr=config.learning_rate, weight_decay=config.weight_decay, eps=config.adam_epsilon)
    generator.set_state(torch.load(checkpoint / f"rng-{accelerator.process_index}.pt", weights_only=True))
    return json.loads((checkpoint / "state.json").read_text())["step"]


def _trim_log(path: Path, step: int) -> None:
    """On resume, drop logged rows past the checkpoint so the log reads as one uninterrupted run."""
    if path.is_file():
        rows = list(csv.DictReader(path.open()))
        kept = [r for r in rows if int(r["step"]) <= step]
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS)
            writer.writeheader()
            writer.writerows(kept)


def _start_over(run_dir: Path, log_path: Path) -> None:
    """A run without --resume replaces what an earlier run left, so a later --resume cannot pick up its steps."""
    earlier = sorted(run_dir.glob("checkpoint-*"))
    if earlier:
        print(f"starting over in {run_dir}: removing {len(earlier)} checkpoint(s) of an earlier run "
              f"({earlier[-1].name} last; --resume continues a run instead)", flush=True)
    for folder in earlier:
        shutil.rmtree(folder)
    log_path.unlink(missing_ok=True)


LOG_FIELDS = ["step", "expert", "loss", "grad_norm", "sigma", "learning_rate", "seconds"]


# --------------------------------------------------------------------------------------------- the loop
def encode_dataset(accelerator, pipe, config: TrainConfig) -> list[dict[str, torch.Tensor]]:
    dataset = FewShotDataset.load(config.manifest)
    settings = dict(model=config.model, height=config.height, width=config.width, clip_length=config.clip_length,
                    encoders=encoder_fingerprint(pipe))
    problems = check_dataset(dataset, clip_frames(config), config.height, config.width,
                             need_masks=config.entity_loss_weight > 0)
    if problems:
        raise ValueError(f"{config.manifest}: {len(problems)} problem(s), fix them before training:\n  "
                         + "\n  ".join(problems))
    cache = LatentCache(config.cache_dir or Path(config.output_dir) / "cache")
    text_length = pipe.ffstudy_backbone.max_sequence_length
    with accelerator.main_process_first():  # rank 0 encodes, the others read its cache
        encoded = [cache.get(clip_key(dataset, e, {**settings, "text_length": text_length}), lambda e=e: encode_clip(
            pipe, dataset.training_clip(e, config.height, config.width, config.clip_length), text_length))
            for e in dataset.examples]
    if config.entity_loss_weight:  # cheap to rebuild, so kept out of the cache
        for item, e in zip(encoded, dataset.examples):
            masks = dataset.entity_masks(e, config.height, config.width, config.clip_length)
            item["entity_mask"] = latent_entity_mask(masks, pipe.vae_scale_factor_temporal,
                                                     pipe.vae_scale_factor_spatial)
    return encoded


def train_expert(config: TrainConfig, expert: str, resume: bool = False, keep_pipeline: bool = False,
                 force_resume: bool = False) -> "TrainResult":
    """Train one LoRA (one expert); the result names its folder and diffusers-format file. ``resume`` continues
    from the latest checkpoint if it belongs to this run (``force_resume``: even if not); without it the run
    starts over and replaces the folder's checkpoints."""
    from accelerate import Accelerator

    cuda = default_device().type == "cuda"
    precision = ("bf16" if cuda else "no") if config.mixed_precision == "auto" else config.mixed_precision
    accelerator = Accelerator(cpu=not cuda, mixed_precision=precision,
                              gradient_accumulation_steps=config.gradient_accumulation_steps)
    run_dir = Path(config.output_dir) / expert
    # one run per folder: a second trainer into it is refused before it loads anything (the main process holds
    # the lock for all of them), and what a killed run left half-written is removed under that lock
    hold = exclusive_output(run_dir, argument="output_dir") if accelerator.is_main_process else nullcontext()
    with hold:
        if accelerator.is_main_process:
            _remove_partial_checkpoints(run_dir)
        return _train_expert(accelerator, config, expert, run_dir, resume, keep_pipeline, force_resume)


def _remove_partial_checkpoints(run_dir: Path) -> None:
    """Remove checkpoint folders a killed run left unfinished (never renamed into place, so never resumable)."""
    for partial in sorted(run_dir.glob(".checkpoint-*.partial")):
        print(f"removing {partial}: a checkpoint an interrupted run did not finish", flush=True)
        shutil.rmtree(partial, ignore_errors=True)


def _train_expert(accelerator, config: TrainConfig, expert: str, run_dir: Path, resume: bool, keep_pipeline: bool,
                  force_resume: bool) -> "TrainResult":
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    check_targets_early(config)
    fingerprint = run_fingerprint(config, expert)
    checkpoint = pick_checkpoint(run_dir, fingerprint, expert, force_resume, accelerator.process_index) \
        if resume or force_resume else None  # before minutes of loading and encoding

    # 1. the backbone, frozen, with a fresh LoRA on the expert being trained
    pipe = load_pipeline(config.model, device=accelerator.device, path=config.model_path)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.transformer, pipe.transformer_2, pipe.vae, pipe.text_encoder, pipe.image_encoder):
        if module is not None:
            module.requires_grad_(False)
    transformer = pipe.transformer_2 if expert == "low" else pipe.transformer
    params = add_ffgo_lora(transformer, config)  # checks it wrapped every target module
    if config.gradient_checkpointing:
        fsdp = getattr(accelerator.state, "fsdp_plugin", None)
        if fsdp is not None:  # FSDP checkpoints inside each sharded block; diffusers' own fails under FSDP2
            fsdp.activation_checkpointing = True
        else:
            transformer.enable_gradient_checkpointing()

    # 2. clips and prompts, encoded once
    encoded = encode_dataset(accelerator, pipe, config)

    parked = park_idle_modules(pipe, transformer, accelerator.device)

    # 3. optimiser, distribution, and where to start
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, betas=(0.9, 0.999),
                                  weight_decay=config.weight_decay, eps=config.adam_epsilon)
    transformer, optimizer = accelerator.prepare(transformer, optimizer)
    params = [p for p in transformer.parameters() if p.requires_grad]  # FSDP replaces them with sharded ones
    generator = torch.Generator().manual_seed(config.seed + 1000 * accelerator.process_index)
    sigmas, lo, hi = expert_timestep_range(expert, config.boundary_ratio, config.flow_shift)
    step, log_path = 0, run_dir / "loss.csv"
    if checkpoint is not None:
        step = read_checkpoint(accelerator, checkpoint, transformer, optimizer, generator, expert, config)
        accelerator.print(f"resumed {expert} from {checkpoint} at step {step}")
    if accelerator.is_main_process:  # every check passed: the run's folder is written from here on
        write_json(run_dir / "config.json", asdict(config))
        if checkpoint is not None:
            _trim_log(log_path, step)
        else:
            _start_over(run_dir, log_path)
    accelerator.wait_for_everyone()
    accelerator.print(f"training the {expert} expert: {len(params)} LoRA tensors on {len(params) // 2} modules, "
                      f"timestep indices [{lo}, {hi}), {len(encoded)} clips, {accelerator.num_processes} process(es)")

    # 4. the loop
    bar = tqdm(total=config.max_steps, initial=step, desc=f"FFGo LoRA ({expert})",
               disable=not accelerator.is_local_main_process)
    while step < config.max_steps:
        started = time.perf_counter()
        for _ in range(config.gradient_accumulation_steps):
            with accelerator.accumulate(transformer):
                batch = [encoded[int(i)] for i in torch.randint(len(encoded), (config.batch_size,),
                                                                generator=generator)]
                loss, sigma = batch_loss(accelerator, transformer, batch, config, sigmas, lo, hi, generator)
                mean_loss = accelerator.reduce(loss.detach(), "mean")
                if not torch.isfinite(mean_loss):
                    last = latest_checkpoint(run_dir)
                    raise TrainingDivergedError(
                        f"{expert} expert: loss became {mean_loss.item()} at step {step + 1}; stopped without "
                        f"saving. Last good checkpoint: {last or 'none yet'}. Lower learning_rate, check the data "
                        f"(ffstudy data check) or resume from that checkpoint.")
                accelerator.backward(loss)
                grad_norm = accelerator.clip_grad_norm_(params, config.max_grad_norm) \
                    if accelerator.sync_gradients else None
                optimizer.step()
                optimizer.zero_grad()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{mean_loss.item():.4f}")
        if accelerator.is_main_process:
            new = not log_path.exists()
            with log_path.open("a", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS)
                if new:
                    writer.writeheader()
                writer.writerow(dict(step=step, expert=expert, loss=f"{mean_loss.item():.8f}",
                                     grad_norm=f"{float(grad_norm):.6f}", sigma=f"{float(sigma.mean()):.4f}",
                                     learning_rate=config.learning_rate,
                                     seconds=f"{time.perf_counter() - started:.4f}"))
        if step % config.checkpoint_every == 0 or step == config.max_steps:
            write_checkpoint(accelerator, run_dir, step, transformer, optimizer, generator, expert, fingerprint)
        if config.validation_every and step % config.validation_every == 0 and step < config.max_steps:
            validate(accelerator, pipe, config, run_dir, step, parked)
    bar.close()

    # 5. the final LoRA, a check that every process holds the same weights, and a validation video
    replicas = gather_object([_digest(params)])
    full_state = accelerator.get_state_dict(transformer)
    if accelerator.is_main_process:
        fsync_tree(save_lora(accelerator.unwrap_model(transformer), run_dir, expert, state_dict=full_state))
        write_json(run_dir / "replicas.json", {"lora_sha256": replicas, "in_sync": len(set(replicas)) == 1})
        if len(set(replicas)) != 1:
            raise RuntimeError(f"processes ended with different LoRA weights: {replicas}")
    validate(accelerator, pipe, config, run_dir, step, parked)
    accelerator.wait_for_everyone()
    if keep_pipeline:
        for module in parked:
            module.to(accelerator.device)
    losses = [float(r["loss"]) for r in csv.DictReader(log_path.open())] if accelerator.is_main_process else []
    return TrainResult(run_dir, run_dir / WEIGHT_NAMES[expert], losses, pipe if keep_pipeline else None)


def _digest(params) -> str:
    digest = hashlib.sha256()
    for p in params:
        full = p.full_tensor() if hasattr(p, "full_tensor") else p  # FSDP2 shards are DTensors
        digest.update(full.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class TrainResult:
    folder: Path
    lora: Path
    losses: list[float]
    pipe: object = None  # the pipeline with the trained adapter, when asked for


def park_idle_modules(pipe, trained, device) -> list:
    """On a GPU, move what a training step does not use (encoders, the other expert) to the CPU: on
    Wan2.2-A14B that frees the other 28 GB expert and the 11 GB text encoder. Validation brings them back."""
    if torch.device(device).type != "cuda":
        return []
    idle = [m for m in (pipe.text_encoder, pipe.image_encoder, pipe.vae, pipe.transformer, pipe.transformer_2)
            if m is not None and m is not trained]
    for module in idle:
        module.to("cpu")
    torch.cuda.empty_cache()
    return idle


def validate(accelerator, pipe, config: TrainConfig, run_dir: Path, step: int, parked: list = ()) -> None:
    """A video from the first training example's composite, with the settings of final inference. Under FSDP
    every process runs the denoising (each step gathers the sharded weights); the main process saves it."""
    from accelerate.utils import DistributedType

    if not accelerator.is_main_process and accelerator.distributed_type != DistributedType.FSDP:
        return
    from .generate import generate

    for module in parked:
        module.to(accelerator.device)

    dataset = FewShotDataset.load(config.manifest)
    example = dataset.examples[0]
    video = generate(pipe, dataset.composite(example), example.caption, height=config.height, width=config.width,
                     num_frames=clip_frames(config), num_inference_steps=config.validation_inference_steps,
                     boundary_ratio=config.boundary_ratio, flow_shift=config.flow_shift, progress=False)
    if accelerator.is_main_process:
        video.save(run_dir / "validation" / f"step-{step:06d}")
    for module in parked:
        module.to("cpu")
    if parked:
        torch.cuda.empty_cache()


def train(config: TrainConfig, resume: bool = False, force_resume: bool = False) -> dict[str, "TrainResult"]:
    """Train the experts ``config.expert`` asks for, one after the other; returns ``{expert: result}``."""
    two_experts = get_backbone(config.model).family == "wan2.2-i2v"
    if config.expert == "both":
        if not two_experts:
            raise ValueError(f"expert='both' needs a two-expert backbone; {config.model} has one: use 'full'")
        experts = ["high", "low"]
    elif config.expert in ("high", "low"):
        if not two_experts:
            raise ValueError(f"expert={config.expert!r} needs a two-expert backbone; use 'full' for {config.model}")
        experts = [config.expert]
    elif config.expert == "full":
        experts = ["main"]
    else:
        raise ValueError(f"expert={config.expert!r}: use 'high', 'low', 'both' or 'full'")
    return {expert: train_expert(config, expert, resume, force_resume=force_resume) for expert in experts}


def build_parser() -> argparse.ArgumentParser:
    from .cli import add_train_arguments

    return add_train_arguments(argparse.ArgumentParser(prog="ffstudy train",
                                                       description="Train an FFGo LoRA from a YAML config."))


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Train as the parsed command line asks (``ffstudy train`` and ``python -m ffstudy.train``)."""
    config = TrainConfig.from_file(args.config, max_steps=args.max_steps, output_dir=args.output_dir,
                                   manifest=args.manifest)
    try:
        results = train(config, resume=args.resume, force_resume=args.force_resume)
    except TargetModulesError as error:  # a setting of the file, found once the model names its modules
        raise ValueError(f"{args.config}: {error}") from error
    for expert, result in results.items():
        if result.losses:
            print(f"{expert}: {len(result.losses)} steps, loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}; "
                  f"LoRA in {result.lora}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
