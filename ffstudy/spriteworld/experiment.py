"""The miniature FFGo experiment: how many composite→scene examples does the LoRA need?

For each N in ``sizes``: write N SpriteWorld examples, train an FFGo LoRA on them with the real trainer
(``ffstudy.train``; N = 0 means no LoRA, trigger phrase only), then generate from held-out composites and measure,
after dropping the transition frames:

- entity retention: the final frame shows the scene (it is closer to the plate than to the collage) and every
  referenced sprite is identifiable in it — a model that merely animates the collage keeps the cut-outs visible
  but does not retain them *in the scene*;
- background fidelity: PSNR of the final frame against the plate, over pixels no sprite colour claims;
- transition cleanliness: the first kept frame is closer to the plate than to the composite (no collage residue).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from ..compose import compose_first_frame
from ..generate import fit_first_frame, generate
from ..lora import load_lora
from ..models import load_pipeline
from ..train import TrainConfig, train_expert
from .fewshot import FEWSHOT_SEED0, HELDOUT_SEED0, write_fewshot_dataset
from .metrics import colour_mask, entity_persistence, psnr
from .world import WorldConfig, generate_clip


def measure(video, clip, composite_image) -> dict:
    """Retention, background fidelity and cleanliness of one generated FFGo video (transition dropped)."""
    plate = np.asarray(clip.background)
    last = video.frames[-1]
    sprite_pixels = np.zeros(last.shape[:2], bool)
    for sprite in clip.sprites:
        sprite_pixels |= colour_mask(last, sprite.colour)
    scene = ~sprite_pixels
    composite = np.asarray(composite_image, np.float64)

    def in_scene(frame):
        frame = frame.astype(np.float64)
        return bool(np.mean((frame - plate) ** 2) < np.mean((frame - composite) ** 2))

    present = entity_persistence(video.frames, clip.sprites)
    return {"retention": present and in_scene(last), "present": present, "final_in_scene": in_scene(last),
            "background_psnr": psnr(plate[scene], last[scene]) if scene.any() else 0.0,
            "clean": in_scene(video.frames[0])}


def run(out: str | Path, sizes=(0, 5, 10, 20, 50), heldout: int = 40, steps: int = 300, inference_steps: int = 20,
        base: TrainConfig | None = None, world: WorldConfig = WorldConfig()) -> dict:
    out = Path(out)
    base = base or TrainConfig.from_file(Path(__file__).resolve().parents[2] / "configs" / "spriteworld-cpu.yaml")
    results = {"sizes": list(sizes), "heldout_seeds": [HELDOUT_SEED0, HELDOUT_SEED0 + heldout - 1],
               "fewshot_seeds_start": FEWSHOT_SEED0, "steps": steps, "inference_steps": inference_steps, "runs": {}}
    clips = [generate_clip(HELDOUT_SEED0 + i, world, cut=False) for i in range(heldout)]
    for n in sizes:
        started = time.perf_counter()
        pipe = load_pipeline("spriteworld", device="cpu")
        if n:
            manifest = write_fewshot_dataset(out / f"data-{n}", n, FEWSHOT_SEED0, world)
            config = dataclasses.replace(base, manifest=str(manifest), output_dir=str(out / f"lora-{n}"),
                                         max_steps=steps, checkpoint_every=steps, validation_inference_steps=2)
            trained = train_expert(config, "main")
            load_lora(pipe, trained.folder, "main")
        train_seconds = time.perf_counter() - started
        scores = []
        for clip in clips:
            composite = compose_first_frame(clip.cutouts, clip.background)
            video = generate(pipe, composite, clip.caption, num_inference_steps=inference_steps, seed=clip.seed,
                             height=world.height, width=world.width, progress=False)  # the training size
            fitted = fit_first_frame(composite, *video.frames.shape[1:3]).image
            scores.append(measure(video, clip, fitted))
        results["runs"][n] = {key: float(np.mean([s[key] for s in scores])) for key in scores[0]}
        results["runs"][n].update(train_seconds=train_seconds, total_seconds=time.perf_counter() - started)
        print(f"N={n}: {results['runs'][n]}", flush=True)
    return results


def ship_lora(results: dict, out: str | Path, n: int, destination: str | Path) -> Path:
    """Copy the LoRA trained on ``n`` examples to ``destination`` (loadable with ``load_lora(pipe, destination,
    "main")`` or ``pipe.load_lora_weights``) with a card quoting its measured results."""
    import shutil

    from ..io import atomic_path
    from ..lora import WEIGHT_NAMES

    runs = {int(k): v for k, v in results["runs"].items()}  # int keys in memory, str keys once read from JSON
    run = runs[n]
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    with atomic_path(destination / WEIGHT_NAMES["main"]) as tmp:
        shutil.copyfile(Path(out) / f"lora-{n}" / "main" / WEIGHT_NAMES["main"], tmp)
    baseline = f" Without a LoRA (trigger phrase only): retention {runs[0]['retention']:.1%}." if 0 in runs else ""
    card = f"""# SpriteWorld FFGo LoRA

An FFGo LoRA for the SpriteWorld I2V model (`data/models/spriteworld-i2v`), trained by the miniature FFGo experiment
(`python -m ffstudy.spriteworld.experiment --ship-lora {n}`) on **{n}** SpriteWorld composite→scene examples (seeds
from {results['fewshot_seeds_start']}) with `configs/spriteworld-cpu.yaml` for {results['steps']} steps
({run['train_seconds']:.0f} s on the 2-core CPU, including writing and encoding the examples).

```python
pipe = ffstudy.load_pipeline("spriteworld")
ffstudy.lora.load_lora(pipe, "data/models/spriteworld-ffgo-lora", "main")   # or pipe.load_lora_weights(folder)
```

Measured on {results['heldout_seeds'][1] - results['heldout_seeds'][0] + 1} held-out composites (seeds
{results['heldout_seeds'][0]}–{results['heldout_seeds'][1]}), {results['inference_steps']} steps, first 4 frames dropped:
entity retention in the scene {run['retention']:.1%}, sprites present anywhere {run['present']:.1%}, final frame is
the scene {run['final_in_scene']:.1%}, background PSNR {run['background_psnr']:.1f} dB, clean transition
{run['clean']:.1%}.{baseline}
"""
    with atomic_path(destination / "README.md") as tmp:
        tmp.write_text(card)
    return destination


def main(argv=None) -> int:
    import argparse

    from ..io import write_json

    parser = argparse.ArgumentParser(prog="python -m ffstudy.spriteworld.experiment", description=__doc__)
    parser.add_argument("--out", default="outputs/spriteworld-experiment")
    parser.add_argument("--sizes", default="0,5,10,20,50")
    parser.add_argument("--heldout", type=int, default=40)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--results", default="data/models/spriteworld-i2v/experiment.json")
    parser.add_argument("--ship-lora", type=int, metavar="N",
                        help="also copy the LoRA trained on N examples to --lora-dir, with its card")
    parser.add_argument("--lora-dir", default="data/models/spriteworld-ffgo-lora")
    args = parser.parse_args(argv)
    sizes = [int(v) for v in args.sizes.split(",")]
    if args.ship_lora is not None and (args.ship_lora not in sizes or args.ship_lora == 0):
        parser.error(f"--ship-lora {args.ship_lora}: not a trained size among --sizes {args.sizes} (N = 0 has no LoRA)")
    results = run(args.out, sizes, args.heldout, args.steps)
    write_json(args.results, results)
    if args.ship_lora is not None:
        print(f"shipped {ship_lora(results, args.out, args.ship_lora, args.lora_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
