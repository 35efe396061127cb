"""Rerun the SpriteWorld transformer stage with other settings, on the shipped VAE, and measure the base model.

The transformer trains on latents from the VAE stage's encoder, and the decoder stage after it leaves the encoder
frozen, so the shipped VAE encodes exactly what ``pretrain`` feeds the transformer; the transformer starts from the
same seeded weights (the script checks the text encoder, built just before it, against the shipped one). What it
measures with the new transformer: the model card's generation measures on its held-out seeds (frame 0, scene,
sharpness, sprites kept as objects, animated, directions), and the few-shot experiment's N = 0 row (no LoRA, trigger
phrase only) on its tuning composites: how often the base model already cuts into the scene with every sprite, which
is what FFGo's LoRA has to teach.

    .venv/bin/python recipes/spriteworld/transformer_stage.py --overrides '{"transformer_cut_probability": 0.03}'

``--vae DIR --vae-record FILE`` trains on another VAE instead: one that ``recipes/spriteworld/vae_stage.py --decoder --save DIR
--record FILE`` trained with a variant of the VAE stage. Its overrides join the config, and the saved folder takes
that VAE with its stages' settings, times and log, so the three stage runs together are ``pretrain`` with the
variant.

``--from-shipped`` trains the shipped transformer further instead of a fresh one, with the overrides' steps and
learning rate (the schedule starts again): more training, not a recipe.

``--guidance-scales 2 2.5`` measures at those CFG scales instead of the backbone's (SpriteWorld: 1).

About 11 min encoding, 28 min training, 4 min measuring per CFG scale (2-core CPU, 5 with CFG). ``--save`` writes
a complete model folder (the shipped one with this transformer, its settings, time, loss and log in training.json /
training_log.jsonl; no model card or evaluation: run ``ffstudy spriteworld evaluate`` on it).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan

from ffstudy.io import atomic_dir, write_json
from ffstudy.models import get_backbone, load_pipeline
from ffstudy.spriteworld.evaluate import generation_metrics
from ffstudy.spriteworld.experiment import mean_scores
from ffstudy.spriteworld.fewshot import HELDOUT_SEED0
from ffstudy.spriteworld.pretrain import (EVAL_SEED0, PretrainConfig, build_untrained, collapse_posterior, final_loss,
                                          training_clips, transformer_stage, transformer_world)
from ffstudy.spriteworld.world import WorldConfig, generate_clip

REPO = Path(__file__).resolve().parents[2]


def save_model(pipe, shipped: Path, out: str, record: dict, vae_record: dict | None) -> None:
    """The shipped model folder with ``pipe``'s transformer and the stage's settings, time, loss and log (and with
    those of ``vae_record``'s VAE and decoder stages when ``pipe`` carries that VAE)."""
    training = json.loads((shipped / "training.json").read_text())
    training["config"].update(record["overrides"])
    timings = training["timings"]
    if vae_record:
        old_log = vae_record["log"]
        decoder = "decoder_seconds" in vae_record  # vae_stage.py --decoder: the decoder stage ran too
        stages = ("vae", "decoder") if decoder else ("vae",)
        timings.pop("decoder_seconds", None)  # as pretrain writes them: a stage's time and loss only if it ran
        training["final_losses"].pop("decoder", None)
        timings.update({f"{stage}_seconds": vae_record[f"{stage}_seconds"] for stage in stages})
        training["final_losses"].update({stage: final_loss(old_log, stage) for stage in stages})
        training.pop("decoder_stage_run", None)
        training["vae_stage_run"] = (("recipes/spriteworld/vae_stage.py --decoder, which runs the decoder stage right after it "
                                      "(that stage depends on the VAE stage's weights only)" if decoder else
                                      "recipes/spriteworld/vae_stage.py (no decoder stage)")
                                     + f", the recipe's seeds with {json.dumps(vae_record['overrides'])}")
    else:
        old_log = [json.loads(line) for line in (shipped / "training_log.jsonl").read_text().splitlines()]
    timings.pop("transformer_render_seconds", None)
    if record["own_clips"]:  # pretrain renders the transformer's clips apart only if their share of cuts differs
        timings["transformer_render_seconds"] = record["render_seconds"]
    timings.update(encode_seconds=record["encode_seconds"], transformer_seconds=record["transformer_seconds"])
    training["final_losses"]["transformer"] = record["transformer_final_loss"]
    training["transformer_stage_run"] = (f"recipes/spriteworld/transformer_stage.py on {time.strftime('%Y-%m-%d')}: "
                                         f"{'that' if vae_record else 'the shipped'} VAE's encoder, the recipe's seeds"
                                         + (", the shipped transformer trained further (a warm restart, not a recipe)"
                                            if record.get("from_shipped") else ""))
    log = ([r for r in old_log if r["stage"] == "vae"] + record["log"]  # pretrain's order of stages
           + [r for r in old_log if r["stage"] == "decoder"])
    with atomic_dir(out) as staging:
        pipe.save_pretrained(staging, safe_serialization=True)
        for config in staging.rglob("*.json"):  # diffusers records where the shipped parts were loaded from
            values = json.loads(config.read_text())
            if isinstance(values, dict) and values.pop("_name_or_path", None) is not None:
                config.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
        write_json(staging / "training.json", training)
        (staging / "training_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--overrides", default="{}", help="PretrainConfig fields to change, as JSON")
    parser.add_argument("--videos", type=int, default=40, help="held-out card seeds and tuning composites")
    parser.add_argument("--save", help="also write the model folder here")
    parser.add_argument("--record", help="also write the result and the transformer's per-step log here (JSON)")
    parser.add_argument("--vae", help="train on this VAE folder (vae_stage.py --save) instead of the shipped VAE")
    parser.add_argument("--vae-record", help="that VAE's vae_stage.py --record file (settings, times, log)")
    parser.add_argument("--from-shipped", action="store_true",
                        help="train the shipped transformer further (a warm restart: more training, not a recipe)")
    parser.add_argument("--guidance-scales", type=float, nargs="+", metavar="CFG",
                        help="measure at these CFG scales instead of the backbone's")
    args = parser.parse_args()
    vae_record = json.loads(Path(args.vae_record).read_text()) if args.vae_record else None
    if bool(args.vae) != bool(vae_record):
        parser.error("--vae and --vae-record come together, from one vae_stage.py run")
    overrides = {**(vae_record["overrides"] if vae_record else {}), **json.loads(args.overrides)}
    if vae_record and "decoder_seconds" not in vae_record:
        overrides.setdefault("decoder_steps", 0)  # that VAE had no decoder stage, so its recipe has none
    config = PretrainConfig.from_file(REPO / "configs/spriteworld-pretrain.yaml", **overrides)
    torch.set_num_threads(config.threads)
    shipped_dir = Path(get_backbone("spriteworld").local_dir)
    shipped = load_pipeline("spriteworld")
    pipe = build_untrained(config)  # pretrain's construction order and seed: the transformer's initial weights
    text_encoder = shipped.text_encoder.state_dict()
    if not all(torch.equal(v, text_encoder[k]) for k, v in pipe.text_encoder.state_dict().items()):
        raise SystemExit("the rebuilt text encoder differs from the shipped one: the seeded construction changed")
    pipe.text_encoder.requires_grad_(False)
    if args.from_shipped:
        pipe.transformer = shipped.transformer
    pipe.vae = AutoencoderKLWan.from_pretrained(args.vae).eval() if args.vae else shipped.vae
    if config.vae_point_posterior:  # what the VAE stage then does last; the encoder's mean is unchanged
        collapse_posterior(pipe.vae)
    shipped.vae = pipe.vae
    pipe.set_progress_bar_config(disable=True)
    world, started = transformer_world(config, WorldConfig()), time.perf_counter()
    clips = training_clips(config, world, config.transformer_clips)
    timings, log = {"render_seconds": time.perf_counter() - started}, []
    transformer_stage(pipe, clips, config, log, timings)
    record = {"overrides": overrides, "from_shipped": args.from_shipped,
              "own_clips": world != WorldConfig() or len(clips) != config.train_clips,
              "transformer_cut_clips": sum(c.cut_frame is not None for c in clips),
              **{key: round(seconds, 1) for key, seconds in timings.items()},
              "transformer_final_loss": final_loss(log, "transformer")}
    shipped.transformer = pipe.transformer
    if args.save:
        save_model(shipped, shipped_dir, args.save, {**record, "log": log}, vae_record)
    print(json.dumps(record, indent=1), flush=True)  # then each CFG scale's measurements as they finish
    composites = [generate_clip(HELDOUT_SEED0 + i, WorldConfig(), cut=False) for i in range(args.videos)]
    default = shipped.ffstudy_backbone.guidance_scale
    for scale in args.guidance_scales or [default]:
        suffix = "" if scale == default else f"_cfg_{scale:g}"
        measured = {f"base_model_on_composites{suffix}": mean_scores(shipped, composites, 20, WorldConfig(), scale),
                    f"generation{suffix}": generation_metrics(shipped, range(EVAL_SEED0, EVAL_SEED0 + args.videos),
                                                              guidance_scale=scale)}
        record |= measured
        print(json.dumps(measured, indent=1), flush=True)
    if args.record:
        write_json(args.record, {**record, "log": log})


if __name__ == "__main__":
    main()
