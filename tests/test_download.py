"""ffstudy download: sizes first, a disk check before any byte, and clear errors offline."""
from types import SimpleNamespace

import pytest

from ffstudy import download as dl
from ffstudy.cli import main

SIBLINGS = [SimpleNamespace(rfilename=name, size=size) for name, size in (
    ("10_LargeMixedDatset_wan_14bHigh_f81_x/checkpoint-600.safetensors", 1_200_000_000),
    ("10_LargeMixedDatset_wan_14bLow_f81_x/checkpoint-600.safetensors", 1_200_000_000),
    ("10_LargeMixedDatset_wan_14bHigh_f81_x/checkpoint-500.safetensors", 1_200_000_000),
    ("README.md", 2_000))]


@pytest.fixture
def hub(monkeypatch):
    """A stand-in hub that lists the official LoRA repository's layout and records what would be fetched."""
    import huggingface_hub

    fetched = []
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info",
                        lambda self, repo_id, files_metadata=False: SimpleNamespace(siblings=SIBLINGS))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **kw: fetched.append((repo, kw)))
    return fetched


def test_the_official_lora_download_fetches_the_two_checkpoint_600_files(hub, tmp_path, capsys):
    assert [f for f, _ in dl.download_plan("ffgo-lora")] == [s.rfilename for s in SIBLINGS[:2]]
    dl.download("ffgo-lora", tmp_path / "lora")
    out = capsys.readouterr().out
    assert "2 files, 2.4 GB" in out and "14bHigh" in out and "14bLow" in out
    assert hub == [("Video-Customization/FFGO-Lora-Adapter",
                    {"local_dir": tmp_path / "lora", "allow_patterns": list(dl.DOWNLOADS["ffgo-lora"].allow_patterns)})]


def test_a_download_that_does_not_fit_the_disk_is_refused_before_fetching(hub, tmp_path, monkeypatch):
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda path: SimpleNamespace(free=2_000_000_000))
    with pytest.raises(ValueError, match="2.4 GB to download but 2.0 GB free"):
        dl.download("ffgo-lora", tmp_path / "lora")
    assert hub == [] and not (tmp_path / "lora").exists()


def test_dry_run_prints_the_plan_and_fetches_nothing(hub, tmp_path, capsys):
    assert main(["download", "ffgo-lora", "--to", str(tmp_path / "x"), "--dry-run"]) == 0
    assert "nothing fetched" in capsys.readouterr().out and hub == []


def test_offline_or_unknown_names_are_clear_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["download", "wan2.2-ti2v-5b", "--to", str(tmp_path)]) == 2
    assert "cannot list Wan-AI/Wan2.2-TI2V-5B-Diffusers on the Hugging Face hub" in capsys.readouterr().err
    assert main(["download", "wan3", "--to", str(tmp_path)]) == 2
    assert "nothing to download named 'wan3'" in capsys.readouterr().err
