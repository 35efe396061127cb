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
    assert spec.repo_id in message and "huggingface-cli download" in message and "HF_HUB_OFFLINE" in message


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
