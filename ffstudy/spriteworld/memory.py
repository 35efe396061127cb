"""Is the first frame memory? Position-controlled and causal tests of retrieval on the SpriteWorld model.

Two questions the probe alone cannot answer:

1. **Content or position?** Later tokens on a sprite put more attention on that sprite's first-frame keys than
   other tokens do, but in plain image-to-video the sprite has barely moved, so attending to the same place would
   look the same. :mod:`ffstudy.retrieval` subtracts what a position-only model of the same attention predicts,
   and this study measures the rest where position and content disagree: held-out clips after a hard cut (the
   same sprites reappear elsewhere) and FFGo composites (cut-outs on the left, the scene on the right), beside a
   shuffled-entity control (the same tokens, read against another sprite's keys).
2. **Does the model use it?** :class:`~ffstudy.intervene.FirstFrameIntervention` removes (α = 0) or reweights one
   sprite's first-frame keys for later frames; the object-level detector then says whether that sprite is still
   an object in the predicted frames, beside a control that removes as many background keys.

Teacher-forced, so it measures the model on real clips rather than on its own (imperfect) videos: each clip is
noised to σ and denoised once; the prediction of the clean video is decoded and searched for sprites.

    python -m ffstudy.spriteworld.memory --out data/models/spriteworld-i2v/memory.json     # about 40 min on 2 cores
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..compose import compose_first_frame
from ..generate import fit_first_frame, with_trigger
from ..intervene import FirstFrameIntervention, entity_keys
from ..probe import FirstFrameProbe
from ..retrieval import own_entity_retrieval
from .evaluate import decode_normalised, encode, teacher_forced
from .metrics import first_frame_entities, sprites_found, token_labels
from .world import WorldConfig, generate_clip

SEED0 = 1_000_000  # the card's held-out seeds
COMPOSITE_SEED0 = 3_000_000  # the few-shot experiment's held-out composites
SIGMAS = (0.3, 0.6, 0.9)
KNOCKOUT_SIGMA = 0.6  # high enough that frame 0 matters, low enough that predictions still show objects
ALPHAS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
KEY_SHARE = 0.25  # a first-frame token is an entity's key when the entity covers at least this share of it
TRANSITION = 4  # composite frames at the start of an FFGo clip
STRIDE = 4  # image frames per latent frame


def interval(values, repeats: int = 2000, seed: int = 0) -> list[float]:
    """Mean and 95% bootstrap interval over clips (percentiles of resampled means: shares stay within 0–1)."""
    values = np.asarray(values, float)
    means = values[np.random.default_rng(seed).integers(len(values), size=(repeats, len(values)))].mean(1)
    return [float(values.mean()), *np.percentile(means, [2.5, 97.5]).tolist()]


def ffgo_clip(clip, world: WorldConfig):
    """The FFGo training clip of ``clip``: its first 4 frames replaced by the composite of its cut-outs and plate,
    and that composite (entity k is sprite k)."""
    composite = fit_first_frame(compose_first_frame(clip.cutouts, clip.background), world.height, world.width)
    frames = clip.frames.copy()
    frames[:TRANSITION] = np.asarray(composite.image)
    return frames, composite, with_trigger(clip.caption)


@torch.no_grad()
def predicted_video(pipe, inputs: dict, sigma: float) -> np.ndarray:
    """One denoising pass: the predicted clean video x₀ = x_σ − σ·v, decoded to uint8 frames."""
    velocity = pipe.transformer(**inputs, return_dict=False)[0]
    return decode_normalised(pipe.vae, inputs["hidden_states"][:, :velocity.shape[1]] - sigma * velocity)


def scene_start(clip, ffgo: bool) -> int:
    """The first image frame where position and content disagree: after the composite's transition, or the cut."""
    return TRANSITION if ffgo else clip.cut_frame


def knockout_frames(clip, ffgo: bool) -> list[int]:
    """The image frames a knock-out is scored on: every 4th one that shows the scene where the sprites have left
    their first-frame places."""
    return [t for t in range(STRIDE, len(clip.frames), STRIDE) if t >= scene_start(clip, ffgo)]


def later_frames(clip, latent_frames: int, ffgo: bool) -> list[int]:
    """Latent frames whose image frames all show the scene where position and content disagree."""
    return [t for t in range(1, latent_frames) if STRIDE * t - (STRIDE - 1) >= scene_start(clip, ffgo)]


def derangement(n: int) -> np.ndarray | None:
    """Entity e reads entity e+1 (cyclically): the shuffled-entity control; None for a single sprite."""
    return None if n < 2 else np.roll(np.arange(n), -1)


def retrieval_rows(pipe, clip, encoded: dict, composite, ffgo: bool, sigma: float) -> dict[int, dict]:
    """Per block: own-sprite retrieval (observed, position-predicted, content) and the shuffled control."""
    inputs = teacher_forced(encoded, sigma, clip.seed)
    with FirstFrameProbe(pipe.transformer, composite, keep_attention=True) as probe:
        pipe.transformer(**inputs, return_dict=False)
    result = probe.result
    f, h, w = result.grid
    masks = composite.masks(h, w)
    weights = np.stack([masks[name].reshape(-1) for name in result.entity_names], axis=1)  # sprites first
    labels = np.stack([token_labels(clip.masks[min(STRIDE * t, len(clip.masks) - 1)], h, w)
                       for t in range(1, f)]).reshape(f - 1, h * w)
    frames_measured = later_frames(clip, f, ffgo)
    rows = {}
    for record, r in enumerate(result.records):
        own = own_entity_retrieval(result, weights, labels, frames_measured, record)
        if own is None:
            continue
        shuffle = derangement(len(clip.sprites))
        shuffled = (own_entity_retrieval(result, weights, labels, frames_measured, record, shuffle)
                    if shuffle is not None else None)
        rows[r["block"]] = {"own": own, "shuffled": shuffled}
    return rows


def found_share(video: np.ndarray, clip, sprite: int, frames) -> float:
    """Share of ``frames`` in which ``sprite`` is found as an object (shape and size, not colour alone)."""
    return float(np.mean([sprites_found(video, clip, frame=t)[sprite] is not None for t in frames]))


def background_keys(clip, rows: int, cols: int, count: int, seed: int) -> np.ndarray:
    """``count`` first-frame tokens that no sprite touches, away from every sprite: the knock-out control."""
    from scipy import ndimage

    touched = token_labels(clip.masks[0], rows, cols, threshold=0.01) > 0
    free = np.flatnonzero(~ndimage.binary_dilation(touched).ravel())
    chosen = np.random.default_rng(seed).choice(free, size=min(count, len(free)), replace=False)
    mask = np.zeros(rows * cols, bool)
    mask[chosen] = True
    return mask.reshape(rows, cols)


def knockout_keys(pipe, clip, inputs: dict, composite) -> tuple[np.ndarray, np.ndarray]:
    """The first-frame token masks an intervention acts on: sprite 1's (tokens at least ``KEY_SHARE`` sprite 1)
    and, for the control, as many background tokens away from every sprite."""
    h, w = (n // p for n, p in zip(inputs["hidden_states"].shape[3:], pipe.transformer.config.patch_size[1:]))
    target = entity_keys(composite, composite.names[0], h, w, threshold=KEY_SHARE)
    return target, background_keys(clip, h, w, int(target.sum()), clip.seed)


def knockout_rows(pipe, clip, encoded: dict, composite, ffgo: bool, sigma: float = KNOCKOUT_SIGMA) -> dict | None:
    """Teacher-forced predictions with sprite 0's first-frame keys reweighted (every α, all blocks; α = 0 in each
    block alone) and with as many background keys removed; per condition, the share of later frames in which
    sprite 0 and the other sprites are found."""
    inputs = teacher_forced(encoded, sigma, clip.seed)
    target, control = knockout_keys(pipe, clip, inputs, composite)
    if not target.any():
        return None
    measured = knockout_frames(clip, ffgo)
    others = range(1, len(clip.sprites))

    def measure(video):
        return {"target": found_share(video, clip, 0, measured),
                "others": (float(np.mean([found_share(video, clip, k, measured) for k in others]))
                           if len(clip.sprites) > 1 else None)}

    rows = {"tokens": int(target.sum()), "alpha": {}, "block": {}}
    for alpha in ALPHAS:
        with FirstFrameIntervention(pipe.transformer, target, alpha):
            rows["alpha"][str(alpha)] = measure(predicted_video(pipe, inputs, sigma))
    with FirstFrameIntervention(pipe.transformer, control, 0.0):
        rows["background control"] = measure(predicted_video(pipe, inputs, sigma))
    for block in range(len(pipe.transformer.blocks)):
        with FirstFrameIntervention(pipe.transformer, target, 0.0, blocks=[block]):
            rows["block"][str(block)] = measure(predicted_video(pipe, inputs, sigma))
    return rows


def knockout_videos(pipe, clip, encoded: dict, composite, sigma: float = KNOCKOUT_SIGMA) -> dict[str, np.ndarray]:
    """The teacher-forced prediction of one clip: the model as it is, with sprite 1's first-frame keys removed for
    later frames, and with as many background keys removed (the control) — to look at."""
    inputs = teacher_forced(encoded, sigma, clip.seed)
    target, control = knockout_keys(pipe, clip, inputs, composite)
    videos = {"model": predicted_video(pipe, inputs, sigma)}
    for name, keys in (("sprite 1's keys removed", target), ("as many background keys removed", control)):
        with FirstFrameIntervention(pipe.transformer, keys, 0.0):
            videos[name] = predicted_video(pipe, inputs, sigma)
    return videos


def plot_retrieval_by_block(memory: dict, sigma: str | None = None):
    """Content retrieval per block with 95% intervals, own sprite against the shuffled control, one panel per
    setting (cut clips, FFGo composites), at ``sigma`` (default: the knock-out's)."""
    import matplotlib.pyplot as plt

    sigma = sigma or str(memory["knockout_sigma"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
    for ax, (setting, results) in zip(axes, memory["settings"].items()):
        rows = results["retrieval"][sigma]
        blocks = np.array([int(b) for b in rows])
        for offset, key, label, colour in ((-0.15, "content", "own sprite", "tab:red"),
                                           (0.15, "shuffled_content", "another sprite (control)", "tab:grey")):
            values = np.array([rows[str(b)][key] or [np.nan] * 3 for b in blocks])
            ax.errorbar(blocks + offset, values[:, 0], yerr=[values[:, 0] - values[:, 1], values[:, 2] - values[:, 0]],
                        fmt="o", capsize=3, color=colour, label=label)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_title(f"{setting}, σ = {sigma}", fontsize=10)
        ax.set_xlabel("transformer block")
        ax.set_xticks(blocks)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("attention mass beyond position")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_interventions(memory: dict):
    """Paired change (same clips, against the unchanged model) in how often sprite 1 and the other sprites are found
    after sprite 1's keys are reweighted by α (dose-response, with the background-keys control), and after a
    knock-out in one block only: one row of panels per setting, 95% intervals."""
    import matplotlib.pyplot as plt

    def bars(values):
        values = 100 * np.array(values)
        return values[:, 0], [values[:, 0] - values[:, 1], values[:, 2] - values[:, 0]]

    fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharey=True)
    for row, (setting, results) in zip(axes, memory["settings"].items()):
        knock = results["knockout"]
        alphas = list(knock["alpha"])
        x = np.arange(len(alphas) + 1)
        for key, label, colour, shift in (("target_change", "sprite 1", "tab:red", -0.1),
                                          ("others_change", "other sprites", "tab:blue", 0.1)):
            mean, err = bars([knock["alpha"][a][key] for a in alphas] + [knock["background control"][key]])
            row[0].errorbar(x + shift, mean, yerr=err, fmt="o", capsize=3, color=colour, label=label)
        row[0].set_xticks(x, [f"α = {float(a):g}" for a in alphas] + ["background\nkeys removed"], fontsize=8)
        row[0].set_title(f"{setting}: sprite 1's first-frame keys weighted by α", fontsize=9)
        blocks = list(knock["block"])
        mean, err = bars([knock["block"][b]["target_change"] for b in blocks])
        row[1].bar(range(len(blocks)), mean, yerr=err, color="tab:red", alpha=0.7, capsize=3)
        row[1].set_xticks(range(len(blocks)), blocks)
        row[1].set_xlabel("sprite 1's keys removed in this block only")
        row[1].set_title(f"{setting}: knock-out in one block only", fontsize=9)
        row[0].set_ylabel("change in % of later frames\nwhere found (points)")
        for ax in row:
            ax.axhline(0, color="black", lw=0.8)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def summarise_retrieval(per_clip: list[dict[int, dict]]) -> dict:
    """Per block: mean and 95% interval over clips of own-sprite content retrieval, the observed/position ratio,
    and the shuffled control's content retrieval."""
    blocks = sorted({b for rows in per_clip for b in rows})
    out = {}
    for b in blocks:
        own = [rows[b]["own"] for rows in per_clip if b in rows]
        shuffled = [rows[b]["shuffled"] for rows in per_clip if b in rows and rows[b]["shuffled"]]
        out[str(b)] = {"content": interval([o["content"] for o in own]),
                       "observed": interval([o["observed"] for o in own]),
                       "position": interval([o["position"] for o in own]),
                       "shuffled_content": interval([s["content"] for s in shuffled]) if shuffled else None,
                       "clips": len(own)}
    return out


def summarise_knockouts(rows: list[dict]) -> dict:
    """Per condition, mean and 95% interval over clips of the found shares (``target``, ``others``) and of their
    paired change from the unchanged model on the same clip (``target_change``, ``others_change``)."""
    def pooled(get):
        values = [v for v in (get(r) for r in rows) if v is not None]
        return interval(values) if values else None

    def change(row, unchanged, key):
        return None if row[key] is None else row[key] - unchanged[key]

    def summary(get):
        out = {k: pooled(lambda r, k=k: get(r)[k]) for k in ("target", "others")}
        out.update({f"{k}_change": pooled(lambda r, k=k: change(get(r), r["alpha"]["1.0"], k))
                    for k in ("target", "others")})
        return out

    out = {"clips": len(rows), "alpha": {}, "block": {}}
    for alpha in ALPHAS:
        out["alpha"][str(alpha)] = summary(lambda r, a=str(alpha): r["alpha"][a])
    out["background control"] = summary(lambda r: r["background control"])
    for block in rows[0]["block"]:
        out["block"][block] = summary(lambda r, b=block: r["block"][b])
    return out


AMPLIFY = (1.0, 2.0, 4.0)  # weights on the cut-outs' keys at N = 0 (1: the base model)


def roc_auc(scores, labels) -> float | None:
    """Probability that a random positive scores above a random negative (ties count half); None without both."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = scores[labels], scores[~labels]
    if not len(pos) or not len(neg):
        return None
    return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))


def auc_interval(rows: list[list[tuple[float, bool]]], repeats: int = 2000, seed: int = 0) -> list | None:
    """ROC AUC of (retrieval, survived) pairs pooled over composites, with a 95% bootstrap interval that resamples
    composites (entities of one composite are not independent)."""
    point = roc_auc(*zip(*[pair for r in rows for pair in r])) if any(rows) else None
    if point is None:
        return None
    rng, samples = np.random.default_rng(seed), []
    for _ in range(repeats):
        pairs = [pair for i in rng.integers(len(rows), size=len(rows)) for pair in rows[i]]
        if (value := roc_auc(*zip(*pairs))) is not None:
            samples.append(value)
    return [point, *np.percentile(samples, [2.5, 97.5]).tolist()]


def generation_study(pipe, clips: int, steps: int, world: WorldConfig) -> dict:
    """On held-out FFGo composites, generating: (a) amplification as a training-free FFGo at N = 0 — the cut-outs'
    first-frame keys weighted by α in every block and step — scored by the few-shot experiment's retention; (b) with
    the N = 50 LoRA, each sprite's position-controlled retrieval during generation (content mass that tokens of the
    scene frames put on its keys, over the probed blocks and steps) against whether it survives as an object in
    the last frame: ROC AUC."""
    from ..cli import data_dir
    from ..generate import generate
    from ..lora import load_lora
    from ..retrieval import entity_retrieval
    from .experiment import measure

    composites = [generate_clip(seed, world, cut=False) for seed in range(COMPOSITE_SEED0, COMPOSITE_SEED0 + clips)]
    amplified = {str(a): [] for a in AMPLIFY}
    for clip in tqdm(composites, desc="amplifying cut-outs (N = 0)"):
        _, composite, _ = ffgo_clip(clip, world)
        grid = (world.height // 16, world.width // 16)
        keys = entity_keys(composite, [e.name for e in composite.objects], *grid, threshold=KEY_SHARE)
        for alpha in AMPLIFY:
            with FirstFrameIntervention(pipe, keys, alpha):
                video = generate(pipe, composite, clip.caption, num_inference_steps=steps, seed=clip.seed,
                                 height=world.height, width=world.width, progress=False)
            amplified[str(alpha)].append(measure(video.frames, clip))
    load_lora(pipe, data_dir() / "models/spriteworld-ffgo-lora", "main")
    pairs = []
    try:
        for clip in tqdm(composites, desc="retrieval vs survival (N = 50)"):
            _, composite, _ = ffgo_clip(clip, world)
            with FirstFrameProbe(pipe, composite, keep_attention=True) as probe:
                video = generate(pipe, composite, clip.caption, num_inference_steps=steps, seed=clip.seed,
                                 height=world.height, width=world.width, progress=False)
            result = probe.result
            masks = composite.masks(*result.grid[1:])
            weights = np.stack([masks[name].reshape(-1) for name in result.entity_names], axis=1)
            scene = [t - 1 for t in later_frames(clip, result.grid[0], ffgo=True)]
            content = np.mean([entity_retrieval(result, weights, r)["content"][scene].sum(1).mean(0)
                               for r in range(len(result.records))], axis=0)  # per entity
            found = sprites_found(video.frames, clip)
            pairs.append([(float(content[k]), found[k] is not None) for k in range(len(clip.sprites))])
    finally:
        pipe.unload_lora_weights()
    survived = [ok for r in pairs for _, ok in r]
    return {"composites": clips, "steps": steps,
            "amplification": {a: {k: interval([float(m[k]) for m in rows]) for k in ("retention", "kept",
                                                                                       "final_in_scene")}
                              for a, rows in amplified.items()},
            "survival": {"entities": len(survived), "survived": int(sum(survived)),
                         "auc": auc_interval(pairs),
                         "retrieval_survived": interval([c for r in pairs for c, ok in r if ok])
                         if sum(survived) > 1 else None,
                         "retrieval_lost": interval([c for r in pairs for c, ok in r if not ok])}}


def run(pipe, clips: int = 40, sigmas=SIGMAS, world: WorldConfig = WorldConfig(), steps: int = 20) -> dict:
    """The whole study on ``clips`` held-out clips with a hard cut and as many FFGo composites."""
    started = time.perf_counter()
    results = {"sigmas": list(sigmas), "knockout_sigma": KNOCKOUT_SIGMA, "clips": clips, "settings": {}}
    for setting, seed0, ffgo in (("cut clips", SEED0, False), ("FFGo composites", COMPOSITE_SEED0, True)):
        retrieval = {str(s): [] for s in sigmas}
        knockouts = []
        for seed in tqdm(range(seed0, seed0 + clips), desc=setting):
            clip = generate_clip(seed, world, cut=not ffgo)
            if ffgo:
                frames, composite, caption = ffgo_clip(clip, world)
            else:
                frames, composite, caption = clip.frames, first_frame_entities(clip), clip.caption
            encoded = encode(pipe, frames, caption)
            for sigma in sigmas:
                retrieval[str(sigma)].append(retrieval_rows(pipe, clip, encoded, composite, ffgo, sigma))
            if (rows := knockout_rows(pipe, clip, encoded, composite, ffgo)) is not None:
                knockouts.append(rows)
        results["settings"][setting] = {
            "seeds": [seed0, seed0 + clips - 1],
            "retrieval": {s: summarise_retrieval(rows) for s, rows in retrieval.items()},
            "knockout": summarise_knockouts(knockouts)}
    results["generation"] = generation_study(pipe, clips, steps, world)
    results["seconds"] = time.perf_counter() - started
    return results


def main(argv=None) -> int:
    from ..io import write_json
    from ..models import load_pipeline

    parser = argparse.ArgumentParser(prog="python -m ffstudy.spriteworld.memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="spriteworld", help="SpriteWorld model name or folder")
    parser.add_argument("--clips", type=int, default=40, help="held-out cut clips and FFGo composites (each)")
    parser.add_argument("--out", required=True, help="results JSON to write")
    args = parser.parse_args(argv)
    if args.clips < 2:
        parser.error(f"--clips {args.clips}: intervals need at least 2 clips")
    torch.set_num_threads(2)
    pipe = load_pipeline(args.model)
    write_json(Path(args.out), run(pipe, args.clips))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
