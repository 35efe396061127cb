"""The miniature FFGo experiment: how many composite→scene examples does the LoRA need?

For each N in ``sizes``: write N SpriteWorld examples, train an FFGo LoRA on them with the real trainer
(``ffstudy.train``; N = 0 means no LoRA, trigger phrase only), then generate from held-out composites and measure,
after dropping the transition frames:

- entity retention: the final frame shows the scene (at least ``SCENE_DB`` against the clean plate, sprites left
  out) and every referenced sprite is found in it as an object, with its shape and size — a model that merely
  animates the collage keeps the cut-outs visible but does not retain them *in the scene*;
- background fidelity: PSNR of the final frame against the plate, over pixels no sprite colour claims;
- transition cleanliness: the first kept frame is the scene already (no collage residue).

``controls`` measures the same on the held-out clips themselves and their VAE round trips (should pass), and on
decoded N(0, 1) latents and the composite held still (should fail), so every row has its reference.

The LoRAs train with the config's ``entity_loss_weight`` (ffstudy's entity-weighted loss); with ``compare_plain``
each N is also trained with FFGo's plain loss, a one-variable comparison on the same examples and seeds.

With ``resume`` the LoRAs already in ``out`` are reused (LoRA training is deterministic, so a finished one is the
LoRA this run would train): remeasuring after a decoder or sampler change then costs generation only. A LoRA
stopped part-way continues from its checkpoint, and its training time then counts only this run's part.

Everything runs where the trainer runs: on the GPU when there is one (in float32, as the config asks), else on the
CPU; the results name the device, since a LoRA trained on another device is not the same tensor for tensor.
"""
from __future__ import annotations

import dataclasses
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ..compose import compose_first_frame
from ..generate import fit_first_frame, generate
from ..lora import load_lora
from ..models import default_device, get_backbone, load_pipeline
from ..train import TrainConfig, latest_checkpoint, train_expert
from .fewshot import FEWSHOT_SEED0, HELDOUT_SEED0, write_fewshot_dataset
from .metrics import INF_DB, colour_mask, psnr, sprites_kept
from .world import WorldConfig, generate_clip


TRANSITION_FRAMES = 4  # generate()'s drop_first_frames: the frames out of the composite
SCENE_DB = 20.0  # final frame against the clean plate, sprites left out: real clips ~40 dB, noise and collage < 16


def scene_psnr(frame: np.ndarray, clip) -> float:
    """PSNR of ``frame`` against ``clip``'s clean plate over the pixels no sprite colour claims (grown by 2 px, so
    soft edges stay out): high for the scene with the sprites anywhere in it, low for noise or the collage."""
    from scipy import ndimage

    claimed = np.zeros(frame.shape[:2], bool)
    for sprite in clip.sprites:
        claimed |= colour_mask(frame, sprite.colour)
    scene = ~ndimage.binary_dilation(claimed, iterations=2)
    return min(psnr(np.asarray(clip.background)[scene], frame[scene]), INF_DB) if scene.any() else 0.0


def measure(frames: np.ndarray, clip) -> dict:
    """Retention, background fidelity and cleanliness of one FFGo video (transition dropped), against ``clip``, the
    held-out clip whose cut-outs and plate made the composite: every sprite found as an object (shape and size of
    the clip's last frame) in a final frame that is the scene, and a first kept frame that is the scene already."""
    final_db = scene_psnr(frames[-1], clip)
    kept = sprites_kept(frames, clip)
    return {"retention": kept and final_db >= SCENE_DB, "kept": kept, "final_in_scene": final_db >= SCENE_DB,
            "background_psnr": final_db, "clean": scene_psnr(frames[0], clip) >= SCENE_DB}


def run(out: str | Path, sizes=(0, 5, 10, 20, 50), heldout: int = 40, steps: int | None = None,
        inference_steps: int = 20, base: TrainConfig | None = None, world: WorldConfig = WorldConfig(),
        compare_plain: bool = False, first_heldout: int = HELDOUT_SEED0, resume: bool = False,
        previous: dict | None = None, sheet: dict | None = None) -> dict:
    """``previous``: the results of the run that trained the LoRAs ``resume`` finds finished; their training
    times are carried over from it (this run only loads them). ``sheet``: a dict that receives, for each N of
    ``SHEET_SIZES`` (entity-weighted loss), the first ``SHEET_COMPOSITES`` videos, for :func:`experiment_sheet`."""
    out = Path(out)
    base = base or TrainConfig.from_file(Path(__file__).resolve().parents[2] / "configs" / "spriteworld-cpu.yaml")
    steps = steps or base.max_steps  # the course config's step count unless a run asks for another
    results = {"sizes": list(sizes), "heldout_seeds": [first_heldout, first_heldout + heldout - 1],
               "fewshot_seeds_start": FEWSHOT_SEED0, "steps": steps, "inference_steps": inference_steps,
               "guidance_scale": get_backbone("spriteworld").guidance_scale,
               "entity_loss_weight": base.entity_loss_weight, "device": device_name(), "runs": {}}
    clips = [generate_clip(first_heldout + i, world, cut=False) for i in range(heldout)]
    results["controls"] = control_scores(load_pipeline("spriteworld", device="cpu").vae, clips, world)
    settings = {"runs": base.entity_loss_weight}
    if compare_plain and base.entity_loss_weight:
        settings["plain_loss_runs"] = 0.0
    for n in sizes:
        started = time.perf_counter()
        manifest = write_fewshot_dataset(out / f"data-{n}", n, FEWSHOT_SEED0, world) if n else None
        writing_seconds = time.perf_counter() - started  # counted in every LoRA trained on these examples
        for key, weight in settings.items():
            if key != "runs" and not n:
                continue  # N = 0 trains nothing: one baseline serves both
            started = time.perf_counter()
            pipe = load_pipeline("spriteworld")  # where train_expert trains: CUDA when there is one
            reused = False
            if n:
                config = dataclasses.replace(base, manifest=str(manifest), output_dir=str(lora_dir(out, n, weight)),
                                             max_steps=steps, checkpoint_every=steps, validation_inference_steps=2,
                                             entity_loss_weight=weight)
                reused = resume and finished_lora(config)
                load_lora(pipe, train_expert(config, "main", resume=resume).folder, "main")
            train_seconds = writing_seconds + time.perf_counter() - started
            if reused:
                train_seconds = carried_train_seconds(previous, key, n, config.output_dir)
            shown = [] if sheet is not None and key == "runs" and n in SHEET_SIZES else None
            row = mean_scores(pipe, clips, inference_steps, world, videos=shown)
            if shown is not None:
                sheet[n] = shown[:SHEET_COMPOSITES]
            row.update(train_seconds=train_seconds, total_seconds=writing_seconds + time.perf_counter() - started)
            if reused:
                row["lora_reused"] = True  # trained by the run ``previous`` records; total_seconds is this run's
            results.setdefault(key, {})[n] = row
            print(f"N={n}, entity_loss_weight {weight:g}: {row}", flush=True)
    return results


def device_name() -> str:
    """Where this run trains and generates (``default_device``), as its results record it: the GPU's name, or the
    CPU's model and thread count — a LoRA trained on another CPU is not the same tensor for tensor either."""
    device = default_device()
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    models = [line.split(":", 1)[1].strip() for line in
              (cpuinfo.read_text().splitlines() if cpuinfo.exists() else []) if line.startswith("model name")]
    model = models[0] if models else platform.processor() or platform.machine()
    return f"CPU ({model}, {torch.get_num_threads()} threads)"


def lora_dir(out: str | Path, n: int, weight: float) -> Path:
    return Path(out) / f"lora-{n}-w{weight:g}"


def finished_lora(config: TrainConfig) -> bool:
    """Whether ``config``'s run folder holds its final checkpoint; a folder trained with another config is an
    error, not something to resume."""
    run_dir = Path(config.output_dir) / "main"
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        return False
    saved = json.loads((run_dir / "config.json").read_text())
    wanted = json.loads(json.dumps(dataclasses.asdict(config)))
    changed = sorted(k for k in wanted.keys() | saved.keys() if saved.get(k) != wanted.get(k))
    if changed:
        raise ValueError(f"{run_dir} holds a LoRA trained with other settings ({', '.join(changed)}): remove it "
                         "or give another --out to train afresh")
    return json.loads((checkpoint / "state.json").read_text())["step"] >= config.max_steps


def carried_train_seconds(previous: dict | None, key: str, n: int, folder: str) -> float:
    rows = {str(size): row for size, row in (previous or {}).get(key, {}).items()}  # str keys once read from JSON
    row = rows.get(str(n))
    if row is None:
        raise ValueError(f"{folder} holds a finished LoRA but the previous results have no {key}[{n}] row to take "
                         "its training time from: pass the results file of the run that trained it (--trained-by)")
    return row["train_seconds"]


def measure_clip(pipe, clip, inference_steps: int, world: WorldConfig, guidance_scale: float | None = None,
                 videos: list | None = None) -> dict:
    """Generate from the clip's composite at the training size (CFG: the backbone's unless given) and
    :func:`measure` the video (``videos``: a list that receives the clip, the whole video and the measures)."""
    composite = compose_first_frame(clip.cutouts, clip.background)
    video = generate(pipe, composite, clip.caption, num_inference_steps=inference_steps, seed=clip.seed,
                     height=world.height, width=world.width, guidance_scale=guidance_scale, progress=False)
    scores = measure(video.frames, clip)
    if videos is not None:
        videos.append((clip, video.full, scores))
    return scores


def mean_scores(pipe, clips: list, inference_steps: int, world: WorldConfig,
                guidance_scale: float | None = None, videos: list | None = None) -> dict:
    """Each of :func:`measure`'s scores averaged over the clips' composites: one row of the few-shot curve
    (``videos``: as :func:`measure_clip`'s, for every clip)."""
    return _means([measure_clip(pipe, clip, inference_steps, world, guidance_scale, videos) for clip in clips])


def _means(scores: list[dict]) -> dict:
    """Each of :func:`measure`'s scores averaged over videos (shares for the yes/no ones)."""
    return {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}


SHEET_COMPOSITES, SHEET_SIZES = 4, (0, 5, 50)  # what the card's contact sheet shows


def experiment_sheet(videos: dict[int, list]):
    """A contact sheet of the first composites: each held-out clip, then what each N generated from its composite
    (whole videos: frame 0 is the composite, the measures start after the 4 transition frames)."""
    from ..viz import contact_sheet

    rows = []
    for i, (clip, _, _) in enumerate(next(iter(videos.values()))):
        rows.append((f"seed {clip.seed}\nreal clip", clip.frames))
        for n, generated in sorted(videos.items()):
            _, frames, row = generated[i]
            rows.append((f"N = {n}\nkept: {'yes' if row['kept'] else 'no'}\nscene {row['background_psnr']:.1f} dB",
                         frames))
    return contact_sheet(rows)


def control_scores(vae, clips: list, world: WorldConfig, drop: int = TRANSITION_FRAMES) -> dict[str, dict]:
    """:func:`mean_scores`' row for each control on ``clips``, with the number of clips it was measured on: the clips
    themselves and their VAE round trips after the transition (should pass), decoded N(0, 1) latents, the composite
    held still, the sprites melted and the sprites as discs (should fail; the discs only for clips with a sprite that
    is not a circle)."""
    from .evaluate import control_videos

    rows: dict[str, list] = {}
    for clip in clips:
        composite = fit_first_frame(compose_first_frame(clip.cutouts, clip.background), world.height, world.width)
        videos = control_videos(vae, clip, clip.seed)
        del videos["first frame held still"]  # FFGo starts from the collage, so the collage is what is held still
        videos["composite held still"] = np.repeat(np.asarray(composite.image)[None], len(clip.frames), 0)
        for name, frames in videos.items():
            rows.setdefault(name, []).append(measure(frames[drop:], clip))
    return {name: {**_means(scores), "videos": len(scores)} for name, scores in rows.items()}


def ship_lora(results: dict, out: str | Path, n: int, destination: str | Path) -> Path:
    """Copy the LoRA trained on ``n`` examples to ``destination`` (loadable with ``load_lora(pipe, destination,
    "main")`` or ``pipe.load_lora_weights``) with a card quoting its measured results."""
    import shutil

    from ..io import atomic_path
    from ..lora import WEIGHT_NAMES
    from .card import device_of

    runs = {int(k): v for k, v in results["runs"].items()}  # int keys in memory, str keys once read from JSON
    run = runs[n]
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    with atomic_path(destination / WEIGHT_NAMES["main"]) as tmp:
        shutil.copyfile(lora_dir(out, n, results["entity_loss_weight"]) / "main" / WEIGHT_NAMES["main"], tmp)
    baseline = f" Without a LoRA (trigger phrase only): retention {runs[0]['retention']:.1%}." if 0 in runs else ""
    card = f"""# SpriteWorld FFGo LoRA

An FFGo LoRA for the SpriteWorld I2V model (`data/models/spriteworld-i2v`), trained by the miniature FFGo experiment
(`python -m ffstudy.spriteworld.experiment --ship-lora {n}`) on **{n}** SpriteWorld composite→scene examples (seeds
from {results['fewshot_seeds_start']}) with `configs/spriteworld-cpu.yaml` for {results['steps']} steps
({run['train_seconds']:.0f} s on the {device_of(results)}, including writing and encoding the examples), with
`entity_loss_weight: {results['entity_loss_weight']:g}`.

```python
pipe = ffstudy.load_pipeline("spriteworld")
ffstudy.lora.load_lora(pipe, "data/models/spriteworld-ffgo-lora", "main")   # or pipe.load_lora_weights(folder)
```

Measured on {results['heldout_seeds'][1] - results['heldout_seeds'][0] + 1} held-out composites \
(seeds {results['heldout_seeds'][0]}–{results['heldout_seeds'][1]}), {results['inference_steps']} steps, \
CFG {results['guidance_scale']:g}, first 4 frames dropped: entity retention in the scene {run['retention']:.1%}, \
every sprite an object anywhere in the final frame {run['kept']:.1%}, final frame is the scene {run['final_in_scene']:.1%}, \
background PSNR {run['background_psnr']:.1f} dB, clean transition {run['clean']:.1%}.{baseline}
"""
    with atomic_path(destination / "README.md") as tmp:
        tmp.write_text(card)
    return destination


def sheet_path(results: str | Path) -> Path:
    """Where the contact sheet of a results file goes: beside it, ``<name>-sheet.png``."""
    results = Path(results)
    return results.with_name(f"{results.stem}-sheet.png")


def main(argv=None) -> int:
    import argparse

    from ..io import write_json
    from ..viz import save_sheet

    parser = argparse.ArgumentParser(prog="python -m ffstudy.spriteworld.experiment", description=__doc__)
    parser.add_argument("--out", default="outputs/spriteworld-experiment")
    parser.add_argument("--sizes", default="0,5,10,20,50")
    parser.add_argument("--heldout", type=int, default=40)
    parser.add_argument("--first-heldout", type=int, default=HELDOUT_SEED0,
                        help="seed of the first held-out composite (another range checks a tuned setting afresh)")
    parser.add_argument("--steps", type=int, help="LoRA steps (default: max_steps of configs/spriteworld-cpu.yaml)")
    parser.add_argument("--results", default="data/models/spriteworld-i2v/experiment.json")
    parser.add_argument("--ship-lora", type=int, metavar="N",
                        help="also copy the LoRA trained on N examples to --lora-dir, with its card")
    parser.add_argument("--lora-dir", default="data/models/spriteworld-ffgo-lora")
    parser.add_argument("--compare-plain", action="store_true",
                        help="also train every N with FFGo's plain loss (entity_loss_weight 0) and report both")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the LoRAs already trained in --out (only generation and measurement rerun); "
                             "their training times are carried over from the --trained-by file")
    parser.add_argument("--trained-by", metavar="FILE",
                        help="with --resume: the results file of the run that trained those LoRAs (default: --results, "
                             "so a check on other composites names the experiment's file here)")
    args = parser.parse_args(argv)
    sizes = [int(v) for v in args.sizes.split(",")]
    if args.ship_lora is not None and (args.ship_lora not in sizes or args.ship_lora == 0):
        parser.error(f"--ship-lora {args.ship_lora}: not a trained size among --sizes {args.sizes} (N = 0 has no LoRA)")
    if args.trained_by is not None and not (args.resume and Path(args.trained_by).is_file()):
        parser.error(f"--trained-by {args.trained_by}: " + ("no such results file" if args.resume else "needs --resume"))
    trained_by = Path(args.trained_by or args.results)
    previous = json.loads(trained_by.read_text()) if args.resume and trained_by.exists() else None
    sheet: dict = {}
    results = run(args.out, sizes, args.heldout, args.steps, compare_plain=args.compare_plain,
                  first_heldout=args.first_heldout, resume=args.resume, previous=previous, sheet=sheet)
    if sheet:
        save_sheet(experiment_sheet(sheet), sheet_path(args.results))
    write_json(args.results, results)
    if args.ship_lora is not None:
        print(f"shipped {ship_lora(results, args.out, args.ship_lora, args.lora_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
