"""Explicit downloads of the real weights: what each name fetches, how large it is, and whether it fits the disk.

Nothing in ffstudy downloads by itself: ``load_pipeline`` reads local folders and the Hugging Face cache only,
unless asked (``download=True``). ``ffstudy download NAME`` (or :func:`download`) lists the files with their
sizes from the hub, refuses when the disk cannot hold them, and only then fetches them.

    ffstudy download wan2.2-ti2v-5b --to models/ti2v --dry-run  # the files and sizes, nothing fetched
    ffstudy download ffgo-lora --to models/ffgo-lora             # the official FFGo LoRAs for Wan2.2-I2V-A14B
"""
from __future__ import annotations

import fnmatch
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Download:
    repo_id: str
    description: str
    allow_patterns: tuple[str, ...] = ("*",)


DOWNLOADS = {
    "wan2.2-i2v-a14b": Download("Wan-AI/Wan2.2-I2V-A14B-Diffusers",
                                "Wan2.2-I2V-A14B in diffusers format, the paper's backbone (two 14B experts)"),
    "wan2.2-ti2v-5b": Download("Wan-AI/Wan2.2-TI2V-5B-Diffusers",
                               "Wan2.2-TI2V-5B in diffusers format (one 5B expert): fits a 24 GB GPU with offload"),
    "wan2.1-i2v-14b-480p": Download("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
                                    "Wan2.1-I2V-14B at 480p in diffusers format"),
    # the official FFGo LoRAs, one per Wan2.2-I2V-A14B expert (VideoX-Fun names: 14bHigh, 14bLow)
    "ffgo-lora": Download("Video-Customization/FFGO-Lora-Adapter",
                          "the official FFGo LoRAs for Wan2.2-I2V-A14B (High and Low expert, checkpoint-600)",
                          ("*14bHigh*/checkpoint-600.safetensors", "*14bLow*/checkpoint-600.safetensors")),
}
DISK_MARGIN = 1.05  # refuse unless the free space exceeds the files' size by 5 %


def _entry(name: str) -> Download:
    if name not in DOWNLOADS:
        raise ValueError(f"nothing to download named {name!r}: choose one of {sorted(DOWNLOADS)}")
    return DOWNLOADS[name]


def download_plan(name: str) -> list[tuple[str, int]]:
    """``(file, bytes)`` for each file ``name`` would fetch, read from the hub (needs the network)."""
    from huggingface_hub import HfApi

    entry = _entry(name)
    try:
        info = HfApi().model_info(entry.repo_id, files_metadata=True)
    except Exception as error:  # offline, unknown repo, gated repo: the hub's errors share no base class
        raise ValueError(f"cannot list {entry.repo_id} on the Hugging Face hub ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else 'no detail'}); check the network, "
                         "HF_HUB_OFFLINE and, for gated models, `huggingface-cli login`") from error
    files = [(s.rfilename, int(s.size or 0)) for s in info.siblings
             if any(fnmatch.fnmatch(s.rfilename, p) for p in entry.allow_patterns)]
    if not files:
        raise ValueError(f"{entry.repo_id} holds no file matching {list(entry.allow_patterns)}: its layout has "
                         "changed; download by hand with huggingface-cli")
    return files


def gigabytes(size: int) -> str:
    return f"{size / 1e9:.1f} GB"


def download(name: str, to: str | Path, dry_run: bool = False) -> Path:
    """Fetch ``name`` (a key of ``DOWNLOADS``) into the folder ``to`` after printing its files and sizes; refused,
    before any byte is fetched, when the disk under ``to`` has less free space than the files need."""
    from huggingface_hub import snapshot_download

    entry = _entry(name)
    files = download_plan(name)
    total = sum(size for _, size in files)
    target = Path(to)
    existing = next(p for p in (target, *target.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    print(f"{name}: {entry.description}\n{entry.repo_id}: {len(files)} files, {gigabytes(total)}")
    for file, size in sorted(files, key=lambda f: -f[1])[:8]:
        print(f"  {gigabytes(size):>9}  {file}")
    if len(files) > 8:
        print(f"  … and {len(files) - 8} smaller files")
    if total * DISK_MARGIN > free:
        raise ValueError(f"--to {target}: {gigabytes(total)} to download but {gigabytes(free)} free on that disk; "
                         "free space or choose another folder")
    if dry_run:
        print(f"would download into {target} ({gigabytes(free)} free); nothing fetched (--dry-run)")
        return target
    snapshot_download(entry.repo_id, local_dir=target, allow_patterns=list(entry.allow_patterns))
    print(f"downloaded into {target}")
    return target
