import numpy as np
import pytest
import torch

from ffstudy.compose import compose_first_frame
from ffstudy.generate import generate
from ffstudy.models import ModelNotAvailableError, get_backbone, list_backbones, load_pipeline

REAL = ["wan2.2-i2v-a14b", "wan2.2-ti2v-5b", "wan2.1-i2v-14b-480p"]


def test_registry_lists_tiny_and_real_backbones():
    names = {spec.name for spec in list_backbones()}
    assert {"tiny-wan2.2-i2v", "tiny-wan2.2-ti2v", "tiny-wan2.1-i2v", *REAL} <= names
    with pytest.raises(KeyError, match="unknown backbone 'wan3'"):
        get_backbone("wan3")


def test_tiny_backbones_have_the_real_architecture(tiny_pipe):
    a14b = tiny_pipe("tiny-wan2.2-i2v")
    assert a14b.transformer_2 is not None and a14b.config.boundary_ratio == 0.9
    assert a14b.transformer.config.in_channels == 36 and a14b.image_encoder is None
    assert tiny_pipe("tiny-wan2.2-ti2v").config.expand_timesteps
    assert tiny_pipe("tiny-wan2.1-i2v").transformer.config.image_dim is not None


@pytest.mark.parametrize("name", REAL)
def test_real_backbones_fail_offline_with_download_instructions(name):
    spec = get_backbone(name)
    with pytest.raises(ModelNotAvailableError) as info:
        load_pipeline(name)
    message = str(info.value)
    assert spec.repo_id in message and f"ffstudy download {name}" in message and "HF_HUB_OFFLINE" in message


def test_a_hub_model_is_never_downloaded_unasked(monkeypatch):
    """With HF_HUB_OFFLINE unset (Colab), loading a hub id reads the Hugging Face cache only; download=True asks
    the hub. Recorded at diffusers' from_pretrained, so nothing is fetched either way."""
    from diffusers import AutoencoderKLWan

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    seen = []

    def record(source, **kwargs):
        seen.append(kwargs.get("local_files_only"))
        raise OSError("not in the cache")

    monkeypatch.setattr(AutoencoderKLWan, "from_pretrained", record)
    with pytest.raises(ModelNotAvailableError, match="nothing is downloaded unless asked") as info:
        load_pipeline("wan2.2-ti2v-5b")
    assert "ffstudy download wan2.2-ti2v-5b" in str(info.value)
    with pytest.raises(ModelNotAvailableError):
        load_pipeline("wan2.2-ti2v-5b", download=True)
    assert seen == [True, False]


def test_real_loading_code_loads_a_local_folder_of_the_same_architecture(tmp_path, tiny_pipe, cutout, plate):
    tiny = tiny_pipe("tiny-wan2.2-i2v")
    tiny.save_pretrained(tmp_path / "a14b")
    with pytest.warns(UserWarning, match="hours per video"):
        loaded = load_pipeline("wan2.2-i2v-a14b", path=tmp_path / "a14b", dtype=torch.float32, device="cpu")
    assert loaded.vae.dtype == torch.float32 and loaded.scheduler.config.flow_shift == 5.0
    comp = compose_first_frame([cutout], plate)
    a = generate(tiny, comp, "x", num_inference_steps=2, progress=False, height=64, width=112, num_frames=9)
    b = generate(loaded, comp, "x", num_inference_steps=2, progress=False, height=64, width=112, num_frames=9)
    assert np.abs(a.frames.astype(int) - b.frames.astype(int)).max() <= 1


def test_a_missing_local_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="wan2.2-ti2v-5b"):
        load_pipeline("wan2.2-ti2v-5b", path=tmp_path / "nowhere")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only guard")
def test_offload_without_cuda_is_refused():
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        load_pipeline("tiny-wan2.2-i2v", offload="model")


def official_wan_schedule(steps, shift=5.0):
    """The official solver's numbers, from its formula: sigmas linspace(0.999, 0, n + 1)[:-1] shifted, then 0;
    timesteps sigma x 1000 cast to int64."""
    sigmas = np.linspace(0.999, 0, steps + 1)[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return np.append(sigmas, 0.0), (sigmas * 1000).astype(np.int64)


@pytest.mark.parametrize("steps", [4, 50])
def test_wan_backbones_sample_the_official_schedule(tiny_pipe, steps):
    from ffstudy.models import ffgo_scheduler

    scheduler = tiny_pipe("tiny-wan2.2-i2v").scheduler
    scheduler.set_timesteps(steps)
    sigmas, timesteps = official_wan_schedule(steps)
    assert np.abs(scheduler.sigmas.numpy() - sigmas).max() < 1e-6
    assert np.array_equal(scheduler.timesteps.numpy(), timesteps)
    default = ffgo_scheduler(scheduler.config, sigma_schedule="diffusers")
    default.set_timesteps(steps)
    assert np.abs(default.sigmas.numpy() - sigmas).max() > 1e-3  # the setting matters
    assert np.isclose(default.sigmas[0].item(), 1.0, atol=1e-5)  # diffusers starts at 1 - 1e-6


def test_official_schedule_numbers_at_the_papers_settings():
    from ffstudy.models import ffgo_scheduler

    scheduler = ffgo_scheduler()  # shift 5, 50 steps: FFGo's inference
    scheduler.set_timesteps(50)
    assert scheduler.timesteps[:5].tolist() == [999, 995, 991, 987, 982]
    assert round(scheduler.sigmas[0].item(), 6) == 0.9998  # 5 x 0.999 / (1 + 4 x 0.999)
    assert int((scheduler.timesteps >= 900).sum()) == 18  # steps of the high-noise expert (boundary 0.9)
    with pytest.raises(ValueError, match="sigma_schedule='karras'"):
        ffgo_scheduler(sigma_schedule="karras")


def test_sigma_schedule_is_a_setting_that_survives_a_new_shift(tiny_pipe, cutout, plate):
    from ffstudy.models import sigma_schedule_of

    assert get_backbone("wan2.2-i2v-a14b").sigma_schedule == "official"
    assert get_backbone("spriteworld").sigma_schedule == "diffusers"  # its card was measured so
    pipe = load_pipeline("tiny-wan2.2-i2v", sigma_schedule="diffusers")
    assert sigma_schedule_of(pipe.scheduler) == "diffusers"
    comp = compose_first_frame([cutout], plate)
    kwargs = dict(num_inference_steps=2, progress=False, height=64, width=112, num_frames=9)
    video = generate(pipe, comp, "x", flow_shift=3.0, **kwargs)
    assert sigma_schedule_of(pipe.scheduler) == "diffusers" and pipe.scheduler.config.flow_shift == 3.0
    assert video.settings["sigma_schedule"] == "diffusers"
    official = generate(tiny_pipe(), comp, "x", **kwargs)
    assert official.settings["sigma_schedule"] == "official"
    assert not np.array_equal(official.frames, generate(load_pipeline("tiny-wan2.2-i2v", sigma_schedule="diffusers"),
                                                        comp, "x", **kwargs).frames)


def test_a_flow_euler_scheduler_set_by_the_user_is_kept_reshifted_and_seeded(cutout, plate):
    """``pipe.scheduler = FlowMatchEulerDiscreteScheduler(...)`` is honoured, not swapped for UniPC; its
    stochastic variant draws step noise from torch's global RNG (the Wan pipeline gives it no generator), so
    generate seeds that in a fork: the seed fixes the video and the caller's RNG is left as it was."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    comp = compose_first_frame([cutout], plate)
    kwargs = dict(num_inference_steps=3, progress=False, height=64, width=112, num_frames=9)
    pipe = load_pipeline("tiny-wan2.2-i2v")  # not the shared one: its scheduler is changed here
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, stochastic_sampling=True)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = generate(pipe, comp, "x", seed=1, **kwargs)
    assert torch.equal(torch.get_rng_state(), state)
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler" and pipe.scheduler.config.shift == 5.0
    assert first.settings["scheduler"] == "FlowMatchEulerDiscreteScheduler" and first.settings["stochastic_sampling"]
    assert np.array_equal(first.frames, generate(pipe, comp, "x", seed=1, **kwargs).frames)
    assert not np.array_equal(first.frames, generate(pipe, comp, "x", seed=2, **kwargs).frames)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)  # the same sampler without fresh noise
    ode = generate(pipe, comp, "x", seed=1, **kwargs)
    assert not ode.settings["stochastic_sampling"] and not np.array_equal(first.frames, ode.frames)


@pytest.mark.filterwarnings("ignore:.*on the CPU will take hours")
def test_saved_pipelines_are_standard_diffusers_folders(tmp_path, tiny_pipe):
    """The official schedule lives on a plain UniPCMultistepScheduler: a folder ffstudy saves names only diffusers
    and transformers classes, loads in a Python that never imported ffstudy, and ffstudy's own load puts the
    official grid back."""
    import copy
    import json
    import subprocess
    import sys

    from ffstudy.models import sigma_schedule_of

    pipe = tiny_pipe("tiny-wan2.2-i2v")
    assert type(pipe.scheduler).__name__ == "UniPCMultistepScheduler" and sigma_schedule_of(pipe.scheduler) == "official"
    assert sigma_schedule_of(copy.deepcopy(pipe.scheduler)) == "official"
    folder = tmp_path / "saved"
    pipe.save_pretrained(folder)
    scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler_config["_class_name"] == "UniPCMultistepScheduler"
    assert scheduler_config["use_flow_sigmas"] and scheduler_config["flow_shift"] == 5.0
    index = json.loads((folder / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "UniPCMultistepScheduler"]
    assert all(value[0] in ("diffusers", "transformers", None) for key, value in index.items()
               if isinstance(value, list)), index
    plain = ("import json, sys, diffusers\n"
             "pipe = diffusers.WanImageToVideoPipeline.from_pretrained(sys.argv[1])\n"
             "assert 'ffstudy' not in sys.modules\n"
             "pipe.scheduler.set_timesteps(50)\n"
             "print(json.dumps([type(pipe.scheduler).__name__, round(pipe.scheduler.sigmas[0].item(), 4)]))\n")
    done = subprocess.run([sys.executable, "-c", plain, str(folder)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["UniPCMultistepScheduler", 1.0]  # diffusers' grid
    loaded = load_pipeline("wan2.2-i2v-a14b", path=folder, dtype=torch.float32, device="cpu")
    assert sigma_schedule_of(loaded.scheduler) == "official" and type(loaded.scheduler).__name__ == "UniPCMultistepScheduler"
    loaded.scheduler.set_timesteps(50)
    assert round(loaded.scheduler.sigmas[0].item(), 6) == 0.9998  # the official grid
    assert loaded.scheduler.timesteps[:5].tolist() == [999, 995, 991, 987, 982]


def test_suggested_settings_follow_gpu_memory_and_are_labelled_estimates():
    from ffstudy.models import suggested_settings

    assert suggested_settings("wan2.2-i2v-a14b", 141) == {"height": 720, "width": 1280, "num_frames": 81,
                                                          "offload": None, "vae_tiling": False, "estimate": True}
    assert suggested_settings("wan2.2-i2v-a14b", 80)["offload"] == "model"
    assert suggested_settings("wan2.2-ti2v-5b", 24)["offload"] == "model"
    assert suggested_settings("wan2.2-ti2v-5b", 15)["offload"] == "sequential"
    with pytest.raises(ValueError, match="not practical"):
        suggested_settings("wan2.2-i2v-a14b", 16)
    sprite = suggested_settings("spriteworld", 80)
    assert (sprite["height"], sprite["width"], sprite["num_frames"], sprite["estimate"]) == (96, 160, 17, False)


def test_time_estimates_scale_with_the_work_and_say_none_when_unknown():
    from ffstudy.models import estimate_seconds

    a14b = estimate_seconds("wan2.2-i2v-a14b", 720, 1280, 81, gpu="NVIDIA H200")
    assert 10 * 60 < a14b < 60 * 60  # tens of minutes at 720p x 81 frames, 50 steps with CFG
    assert estimate_seconds("wan2.2-i2v-a14b", 720, 1280, 81, steps=25, gpu="NVIDIA H200") == pytest.approx(a14b / 2)
    assert estimate_seconds("wan2.2-i2v-a14b", 720, 1280, 81, gpu="Tesla T4") > 10 * a14b
    assert estimate_seconds("wan2.2-ti2v-5b", 704, 1280, 81, gpu="NVIDIA L4") < estimate_seconds(
        "wan2.2-i2v-a14b", 720, 1280, 81, gpu="NVIDIA L4")
    assert estimate_seconds("wan2.2-i2v-a14b", 720, 1280, 81, gpu="Some Future GPU") is None
    assert estimate_seconds("spriteworld", 96, 160, 17, gpu="NVIDIA H100") is None  # no stored layout: measure it
