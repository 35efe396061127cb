"""The shipped SpriteWorld model: present, small, loads offline, generates on the CPU with real behaviour."""
import json
from pathlib import Path

import numpy as np

from ffstudy.cli import data_dir
from ffstudy.generate import generate
from ffstudy.lora import load_lora
from ffstudy.models import SPRITEWORLD_DIR, load_pipeline
from ffstudy.spriteworld.world import generate_clip


def test_the_model_folder_is_complete_and_small():
    files = [p for p in SPRITEWORLD_DIR.rglob("*") if p.is_file()]
    assert {"model_index.json", "README.md", "training.json", "evaluation.json"} <= {p.name for p in files}
    assert sum(p.stat().st_size for p in files) <= 50e6
    card = (SPRITEWORLD_DIR / "README.md").read_text()
    evaluation = json.loads((SPRITEWORLD_DIR / "evaluation.json").read_text())
    assert f"{evaluation['vae_psnr_db']:.2f} dB" in card  # the card reports what was measured


def test_the_card_gives_each_goal_share_its_interval():
    """Kept sprites and retention are shares of 40 to 120 videos: the card quotes them with their Wilson intervals."""
    from ffstudy.spriteworld.metrics import share_interval

    card = (SPRITEWORLD_DIR / "README.md").read_text()
    generation = json.loads((SPRITEWORLD_DIR / "evaluation.json").read_text())["generation"]
    shares = [(generation["kept"], generation["videos"])]
    for name in ("experiment.json", "experiment-check.json"):
        results = json.loads((SPRITEWORLD_DIR / name).read_text())
        first, last = results["heldout_seeds"]
        shares += [(r["retention"], last - first + 1) for r in results["runs"].values()]
    for share, trials in shares:
        low, high = share_interval(share, trials)
        assert f"| {share:.1%} ({low:.0%}–{high:.0%}) |" in card


def test_the_shipped_card_is_exactly_what_its_measurements_render(tmp_path):
    """A card edited by hand, or left stale beside new measurements, differs from ``evaluate --reuse``'s rendering
    (run here through the CLI on a copy, so the shipped folder is never written)."""
    import shutil

    from ffstudy.cli import main

    copy = tmp_path / "spriteworld-i2v"
    shutil.copytree(SPRITEWORLD_DIR, copy)
    shipped = (SPRITEWORLD_DIR / "README.md").read_bytes()
    (copy / "README.md").write_bytes(b"x" * len(shipped))  # stale, and the same size: the card quotes the folder's
    assert main(["spriteworld", "evaluate", "--model-dir", str(copy), "--reuse"]) == 0
    assert (copy / "README.md").read_bytes() == shipped


def test_the_shipped_vae_posterior_is_a_point_exactly_when_its_recipe_says_so():
    """Trainers sample the posterior: with ``vae_point_posterior`` the samples are the latents themselves, without
    it they carry the untrained log-variance's noise, which the transformer then learned to generate."""
    import torch

    from ffstudy.data import video_tensor

    point = json.loads((SPRITEWORLD_DIR / "training.json").read_text())["config"].get("vae_point_posterior", False)
    vae = load_pipeline("spriteworld").vae
    with torch.no_grad():
        posterior = vae.encode(video_tensor(generate_clip(3).frames[:5])[None]).latent_dist
    assert bool(posterior.std.max() < 1e-5) is point and posterior.mean.abs().mean() > 0.1


def test_the_shipped_model_was_trained_by_the_documented_recipe():
    """The card's command reproduces the weights only if the recipe in the repo is the one they were trained with:
    the shipped training.json must name the pretraining config file's values and the default world."""
    from dataclasses import asdict

    import pytest

    from ffstudy.spriteworld.pretrain import PretrainConfig
    from ffstudy.spriteworld.world import WorldConfig

    training = json.loads((SPRITEWORLD_DIR / "training.json").read_text())
    path = Path(__file__).resolve().parents[1] / "configs" / "spriteworld-pretrain.yaml"
    recipe = PretrainConfig.from_file(path)
    variant = PretrainConfig.from_file(path, vae_frames=9, transformer_cut_probability=None)  # the benchmarks' way
    assert asdict(variant) == {**asdict(recipe), "vae_frames": 9, "transformer_cut_probability": None}
    with pytest.raises(ValueError, match=r"overrides: unknown settings \['vae_frame'\]"):
        PretrainConfig.from_file(path, vae_frame=9)
    # a setting added after the model was trained counts at its default, the value that reproduces the old recipe
    assert {**asdict(PretrainConfig()), **training["config"]} == asdict(recipe)
    assert training["world"] == json.loads(json.dumps(asdict(WorldConfig())))  # tuples are lists in JSON


def test_the_card_names_the_recipe_of_weights_assembled_from_stage_runs():
    """A model the stage benchmarks assembled (vae_stage.py, then transformer_stage.py --vae) must say so, and
    describe the VAE stage it really had."""
    from ffstudy.spriteworld.card import render_card

    training = json.loads((SPRITEWORLD_DIR / "training.json").read_text())
    evaluation = json.loads((SPRITEWORLD_DIR / "evaluation.json").read_text())
    sizes = dict.fromkeys(("vae_params", "vae_mb", "transformer_params", "transformer_mb", "text_params", "text_mb",
                           "total_mb"), 1.0)
    pretrained = {k: v for k, v in training.items() if not k.endswith("_stage_run")}  # as pretrain writes it
    card = render_card(pretrained, evaluation, sizes)
    assert "of these weights was run on its own" not in card and "has not been run end to end" not in card
    assert "so the command reproduces these weights" in card
    pretrained["config"] = {**pretrained["config"], "vae_frames": 17}  # whole clips: no windows to speak of
    assert "-frame windows" not in render_card(pretrained, evaluation, sizes)
    training["config"] |= {"vae_frames": 9, "vae_batch": 8, "vae_crop": 32}
    training["vae_stage_run"] = "recipes/spriteworld/vae_stage.py --decoder"
    card = render_card(training, evaluation, sizes)
    assert "The VAE stage of these weights was run on its own, by recipes/spriteworld/vae_stage.py --decoder." in card
    assert "the command has not been run end to end for them" in card
    assert "8 × 9-frame 32² crops" in card and "only ever sees 9-frame windows" in card


def test_a_model_assembled_from_stage_runs_records_only_the_stages_it_had(tmp_path):
    """transformer_stage.py --save writes training.json as pretrain would: a VAE record without a decoder stage
    leaves no decoder time or loss behind, and one with it carries both and the decoder's log."""
    from recipes.spriteworld.transformer_stage import save_model

    pipe = load_pipeline("spriteworld")
    record = {"overrides": {"transformer_steps": 2}, "own_clips": False, "encode_seconds": 1.0,
              "transformer_seconds": 2.0, "transformer_final_loss": 3.0,
              "log": [{"stage": "transformer", "step": s, "loss": 3.0} for s in (1, 2)]}
    vae_log = [{"stage": "vae", "step": 1, "loss": 0.5}]
    plain = {"overrides": {"decoder_steps": 0}, "vae_seconds": 10.0, "log": vae_log}
    with_decoder = {**plain, "overrides": {}, "decoder_seconds": 4.0,
                    "log": vae_log + [{"stage": "decoder", "step": 1, "loss": 0.25}]}
    for name, vae_record in (("plain", plain), ("decoder", with_decoder)):
        save_model(pipe, SPRITEWORLD_DIR, tmp_path / name, record, vae_record)
    plain_training = json.loads((tmp_path / "plain" / "training.json").read_text())
    assert "decoder_seconds" not in plain_training["timings"] and "decoder" not in plain_training["final_losses"]
    assert plain_training["timings"]["vae_seconds"] == 10.0
    training = json.loads((tmp_path / "decoder" / "training.json").read_text())
    assert training["timings"]["decoder_seconds"] == 4.0 and training["final_losses"]["decoder"] == 0.25
    log = [json.loads(line) for line in (tmp_path / "decoder" / "training_log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in log] == ["vae", "transformer", "transformer", "decoder"]  # pretrain's order
    assert "warm restart" not in training["transformer_stage_run"]
    save_model(pipe, SPRITEWORLD_DIR, tmp_path / "continued", {**record, "from_shipped": True}, None)
    continued = json.loads((tmp_path / "continued" / "training.json").read_text())
    assert "the shipped transformer trained further (a warm restart, not a recipe)" in continued["transformer_stage_run"]


def test_loads_offline_and_generates_on_cpu_deterministically():
    pipe = load_pipeline("spriteworld")
    assert pipe.transformer.config.in_channels == 36 and pipe.image_encoder is None
    clip = generate_clip(1_000_001, cut=False)
    kwargs = dict(trigger=None, num_inference_steps=10, drop_first_frames=0, seed=1, progress=False)
    a = generate(pipe, clip.frames[0], clip.caption, **kwargs)
    b = generate(pipe, clip.frames[0], clip.caption, **kwargs)
    assert a.frames.shape == (17, 96, 160, 3) and np.array_equal(a.frames, b.frames)
    assert a.settings["backbone"] == "spriteworld"
    assert (a.settings["guidance_scale"], a.settings["flow_shift"]) == (1.0, 5.0)  # the backbone's sampler
    guided = generate(pipe, clip.frames[0], clip.caption, **{**kwargs, "guidance_scale": 6.0})
    assert guided.settings["guidance_scale"] == 6.0 and not np.array_equal(a.frames, guided.frames)


def test_the_shipped_model_reproduces_its_first_frame_and_is_not_noise():
    """A regression to noise fails here: on 4 held-out clips the generated frame 0 reaches the goal against its
    conditioning frame (decoded N(0, 1) latents: about 12 dB) and the video is about as sharp as the real clip
    (decoded noise: over twice as sharp)."""
    from ffstudy.spriteworld.evaluate import FRAME0_GOAL_DB, generation_metrics
    from ffstudy.spriteworld.pretrain import EVAL_SEED0

    measured = generation_metrics(load_pipeline("spriteworld"), range(EVAL_SEED0, EVAL_SEED0 + 4))
    assert measured["frame0_reproduced"] == 1.0 and measured["frame0_psnr"] >= FRAME0_GOAL_DB, measured
    assert 0.7 <= measured["sharpness_ratio"] <= 1.3, measured


def test_a_fresh_decoder_keeps_the_shipped_encoder_and_its_latents():
    """recipes/spriteworld/decoder_stage.py --fresh-decoder swaps the decoder for a new width: the encoder, and so the latents
    the shipped transformer learnt, must stay exactly the shipped ones, and the result must round-trip through
    save_pretrained with its width."""
    import tempfile

    import torch
    from diffusers import AutoencoderKLWan

    from recipes.spriteworld.decoder_capacity import with_fresh_decoder
    from ffstudy.data import video_tensor

    shipped = load_pipeline("spriteworld").vae
    fresh = with_fresh_decoder(shipped, 16)
    x = video_tensor(generate_clip(1_000_003).frames[:5])[None]
    with torch.no_grad():
        assert torch.equal(fresh.encode(x).latent_dist.mode(), shipped.encode(x).latent_dist.mode())
        assert fresh.decode(shipped.encode(x).latent_dist.mode()).sample.shape == x.shape
    widest = shipped.config.dim_mult[-1]  # the decoder opens at its base width times the last multiplier
    assert fresh.decoder.conv_in.out_channels == 16 * widest
    assert shipped.decoder.conv_in.out_channels == shipped.config.base_dim * widest != 16 * widest
    with tempfile.TemporaryDirectory() as folder:
        fresh.save_pretrained(folder)
        assert AutoencoderKLWan.from_pretrained(folder).config.decoder_base_dim == 16


def test_the_pretrained_model_reads_each_sprite_from_the_first_frame():
    """Real, not random, behaviour: later-frame tokens on sprite k read sprite k in frame 0 (per token of area)
    well above chance; a freshly initialised transformer of the same architecture does not."""
    from ffstudy.spriteworld.evaluate import probe_clip
    from ffstudy.spriteworld.metrics import retrieval_accuracy
    from ffstudy.spriteworld.pretrain import PretrainConfig, build_untrained

    pipe = load_pipeline("spriteworld")
    clips = [generate_clip(seed, cut=False) for seed in range(1_000_000, 1_000_006)]
    chance = np.mean([1 / (len(c.sprites) + 1) for c in clips])

    def best_block_accuracy():
        per_block = [retrieval_accuracy(probe_clip(pipe, c, 0.6), c, per="token") for c in clips]
        return max(np.mean([a[b] for a in per_block if b in a]) for b in per_block[0])

    trained = best_block_accuracy()
    pipe.transformer = build_untrained(PretrainConfig()).transformer.eval()
    untrained = best_block_accuracy()
    assert trained > chance + 0.15 and trained > untrained + 0.1, (trained, untrained, chance)


def test_the_shipped_ffgo_lora_loads_and_changes_the_video():
    pipe = load_pipeline("spriteworld")
    clip = generate_clip(3_000_001, cut=False)
    from ffstudy.compose import compose_first_frame

    composite = compose_first_frame(clip.cutouts, clip.background)
    base = generate(pipe, composite, clip.caption, num_inference_steps=5, progress=False)
    load_lora(pipe, data_dir() / "models" / "spriteworld-ffgo-lora", "main")
    tuned = generate(pipe, composite, clip.caption, num_inference_steps=5, progress=False)
    assert not np.array_equal(base.frames, tuned.frames)


def test_the_check_pools_its_composites_with_the_experiments_and_points_to_what_was_tried_on_a_miss():
    """80 check composites at 37.5 % and 40 tuning ones at 25 % are 40 of 120 pooled; sets that overlap are not
    pooled (a composite would count twice), and only a missed goal sends the reader to what was tried."""
    from ffstudy.spriteworld.card import pooled_retention, render_check

    def results(first, count, no_lora, weighted):
        row = dict(final_in_scene=1.0, background_psnr=15.0, clean=0.5)
        return {"heldout_seeds": [first, first + count - 1], "sizes": [0, 50], "entity_loss_weight": 19.0,
                "guidance_scale": 1.0, "runs": {"0": {**row, "retention": no_lora, "kept": no_lora},
                                                "50": {**row, "retention": weighted, "kept": weighted}}}

    tuned, check = results(3_000_000, 40, 0.25, 0.975), results(3_000_040, 80, 0.375, 0.9625)
    assert pooled_retention(check, tuned) == ("\nPooled with the experiment's 40 composites (120 in all, weighted "
                                              "loss): N = 0 33.3% (26%–42%), N = 50 96.7% (92%–99%).\n")
    assert pooled_retention(results(3_000_039, 80, 0.375, 0.9625), tuned) == ""  # seed 3,000,039 is in both
    card = render_check(check, tuned)
    assert "N = 0 retention ≤ 30%: **missed**" in card
    assert "A goal missed here is discussed in the project README" in card
    met = render_check(results(3_000_040, 80, 0.25, 0.9625), tuned)
    assert "**missed**" not in met and "A goal missed here" not in met and "N = 0 25.0% (18%–33%)" in met


def test_the_miniature_experiment_runs_end_to_end_and_ships_a_loadable_lora(tmp_path):
    import torch

    from ffstudy.spriteworld.experiment import run, ship_lora

    from ffstudy.spriteworld.card import render_check, render_experiment

    results = run(tmp_path, sizes=(0, 2), heldout=1, steps=2, inference_steps=2, compare_plain=True,
                  first_heldout=3_000_040)
    assert results["heldout_seeds"] == [3_000_040, 3_000_040]
    assert results["entity_loss_weight"] > 0  # the course config trains with the entity-weighted loss
    assert set(results["runs"]) == {0, 2} and set(results["plain_loss_runs"]) == {2}  # N = 0: one shared baseline
    assert {"retention", "kept", "final_in_scene", "background_psnr", "clean", "train_seconds"} <= \
        set(results["runs"][2])
    card = render_experiment(results)
    assert f"`entity_loss_weight: {results['entity_loss_weight']:g}`" in card and "FFGo's plain loss" in card
    check = render_check(results)  # the same run, read as a check on untouched composites
    assert "--first-heldout 3000040 --heldout 1" in check and "| plain loss | 2 |" in check
    assert "--compare-plain" in check and "Goals, measured here: N = 0 retention ≤ 30%" in check
    assert "| no LoRA | 0 |" in render_check(json.loads(json.dumps(results)))  # keys are strings once saved
    assert results["device"].startswith("CPU (") and results["device"].endswith(f", {torch.get_num_threads()} threads)")
    assert f"Training and generation ran on\n{results['device']};" in card
    assert "on the same device: the same weights, tensor for tensor" in render_check(results, results)
    for elsewhere in ("NVIDIA H100 80GB HBM3", "CPU (Apple M2, 8 threads)"):  # another CPU is another device too
        other = {**results, "device": elsewhere}
        assert f"retrained from the same seeds on {elsewhere})" in render_check(other, results)
    shipped = ship_lora(results, tmp_path, 2, tmp_path / "shipped")
    assert "**2** SpriteWorld composite" in (shipped / "README.md").read_text()
    assert f" s on the {results['device']}, including writing" in (shipped / "README.md").read_text()
    weighted, plain = (tmp_path / f"lora-2-w{w:g}" / "main" / "pytorch_lora_weights.safetensors"
                       for w in (results["entity_loss_weight"], 0))
    assert (shipped / weighted.name).read_bytes() == weighted.read_bytes() != plain.read_bytes()
    pipe = load_pipeline("spriteworld")
    load_lora(pipe, shipped, "main")
    assert pipe.get_active_adapters() == ["ffgo"]


def test_the_experiment_resumes_with_its_finished_loras_and_their_training_times(tmp_path):
    import pytest
    import torch
    from safetensors.torch import load_file

    from ffstudy.spriteworld.card import render_check, render_experiment
    from ffstudy.spriteworld.experiment import run

    settings = dict(sizes=(2,), heldout=1, steps=2, inference_steps=2, first_heldout=3_000_040)
    first = json.loads(json.dumps(run(tmp_path, **settings)))  # as read back from the results file
    lora = tmp_path / f"lora-2-w{first['entity_loss_weight']:g}" / "main" / "pytorch_lora_weights.safetensors"
    trained = load_file(lora)
    with pytest.raises(ValueError, match="training time"):
        run(tmp_path, **settings, resume=True)  # a reused LoRA needs the run that timed it
    again = run(tmp_path, **settings, resume=True, previous=first)
    reloaded = load_file(lora)  # the file is written again, its header's module list in set order
    assert reloaded.keys() == trained.keys() and all(torch.equal(reloaded[k], trained[k]) for k in trained)
    row = again["runs"][2]
    assert row["lora_reused"] and row["train_seconds"] == first["runs"]["2"]["train_seconds"]
    assert {k: row[k] for k in ("retention", "kept", "clean")} == \
        {k: first["runs"]["2"][k] for k in ("retention", "kept", "clean")}
    assert "(`--resume`) reloaded and re-measured them" in render_experiment(again) and "(`--resume`)" in \
        render_check(again)
    assert "--resume --trained-by data/models/spriteworld-i2v/experiment.json`" in render_check(again, first)
    assert "The same LoRAs (the experiment's own files, reloaded)" in render_check(again, first)
    assert "--trained-by" not in render_check(first) and "(retrained from the same seeds" in render_check(first, first)
    assert "(`--resume`)" not in render_experiment(first) and "steps and CFG 1," in render_experiment(first)
    before_cfg_was_recorded = {k: v for k, v in first.items() if k != "guidance_scale"}
    assert "CFG 6 (results saved before the CFG was recorded)" in render_experiment(before_cfg_was_recorded)
    changed = r"lora-2-w\S+ holds a LoRA trained with other settings \(checkpoint_every, max_steps\)"
    with pytest.raises(ValueError, match=changed):
        run(tmp_path, **{**settings, "steps": 3}, resume=True, previous=first)


def test_the_experiment_command_checks_other_composites_with_the_training_times_of_the_run_that_trained_them(
        tmp_path, capsys):
    """The model card's check reruns finished LoRAs on other composites into its own results file; their training
    times must come from the experiment's file (``--trained-by``), since the check's file has none to give."""
    import pytest

    from ffstudy.spriteworld.experiment import main

    out, trained, check = tmp_path / "runs", tmp_path / "experiment.json", tmp_path / "check.json"
    common = ["--out", str(out), "--sizes", "2", "--heldout", "1", "--steps", "2"]
    assert main(common + ["--results", str(trained)]) == 0
    again = common + ["--first-heldout", "3000040", "--results", str(check), "--resume"]
    with pytest.raises(ValueError, match=r"run that trained it \(--trained-by\)"):
        main(again)
    with pytest.raises(SystemExit):
        main(again + ["--trained-by", str(tmp_path / "missing.json")])
    assert "missing.json: no such results file" in capsys.readouterr().err
    assert main(again + ["--trained-by", str(trained)]) == 0
    row, first = (json.loads(f.read_text())["runs"]["2"] for f in (check, trained))
    assert row["lora_reused"] and row["train_seconds"] == first["train_seconds"] and "lora_reused" not in first


def test_lora_training_on_the_shipped_model_repeats_in_any_process(tmp_path):
    """A model read from disk leaves torch's global RNG as the process found it (seeded at random at start-up), so
    the LoRA's random A matrices must come from the config's seed: two runs from differently seeded global RNGs
    train the same weights, and another seed trains other weights."""
    import dataclasses

    import torch
    from safetensors.torch import load_file

    from ffstudy.spriteworld.fewshot import write_fewshot_dataset
    from ffstudy.train import TrainConfig, train_expert

    manifest = write_fewshot_dataset(tmp_path / "data", 2)
    base = TrainConfig(manifest=str(manifest), model="spriteworld", expert="full", height=96, width=160,
                       clip_length=17, rank=4, alpha=4, max_steps=3, checkpoint_every=3, validation_inference_steps=1,
                       cache_dir=str(tmp_path / "cache"))
    weights = []
    for global_seed, seed in ((1, 42), (2, 42), (1, 7)):
        torch.manual_seed(global_seed)
        result = train_expert(dataclasses.replace(base, seed=seed, output_dir=str(tmp_path / f"{global_seed}-{seed}")),
                              "main")
        weights.append(load_file(str(result.lora)))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def test_the_stage_scripts_vary_the_recipe_in_this_repository(monkeypatch):
    """The stage scripts start from configs/spriteworld-pretrain.yaml; they moved a folder deeper once and then
    looked for it under recipes/."""
    import importlib

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "recipes" / "spriteworld"))  # as run
    for name in ("decoder_capacity", "decoder_stage", "transformer_stage", "vae_stage"):
        repo = importlib.import_module(name).REPO
        assert (repo / "configs" / "spriteworld-pretrain.yaml").is_file(), name
