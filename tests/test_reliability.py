"""Issue 42: runs that cannot mix, files other users can read, no lost work, and exit 2 with a message (never a
traceback or a silent wrong result) for bad input."""
import hashlib
import json
from pathlib import Path

import pytest
import torch

from ffstudy.cli import main
from ffstudy.train import ResumeMismatchError, TrainConfig, train_expert

from .fewshot import make_dataset


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (or ``root`` itself) by its SHA-256: 'unchanged' means this is equal."""
    root = Path(root)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def train_config(tmp_path, **overrides) -> TrainConfig:
    manifest = tmp_path / "ds" / "manifest.json"
    values = dict(manifest=str(manifest if manifest.is_file() else make_dataset(tmp_path / "ds")),
                  output_dir=str(tmp_path / "run"), clip_length=13, rank=4, alpha=8, learning_rate=1e-3,
                  max_grad_norm=1.0, max_steps=4, checkpoint_every=2, validation_inference_steps=1)
    values.update(overrides)
    return TrainConfig(**values)


def logged_steps(run: Path) -> list[int]:
    return [int(line.split(",")[0]) for line in (run / "loss.csv").read_text().splitlines()[1:]]


# --------------------------------------------------------------------------------------------- 1. resume
@pytest.fixture
def finished_run(tmp_path):
    """A 4-step run with checkpoints at steps 2 and 4, and its folder's digest."""
    train_expert(train_config(tmp_path), "high")
    return tmp_path / "run" / "high"


def edit_caption(manifest: Path) -> None:
    data = json.loads(manifest.read_text())
    data["examples"][0]["caption"] += " slowly"
    manifest.write_text(json.dumps(data))


@pytest.mark.parametrize("change, expected", [
    (dict(learning_rate=2e-3), "learning_rate: 0.001 -> 0.002"),
    (dict(seed=7), "seed: 42 -> 7"),
    ("manifest", "the dataset (the manifest or a file it names) changed"),
])
def test_resume_refuses_another_runs_checkpoint_and_changes_nothing(tmp_path, finished_run, change, expected):
    if change == "manifest":
        edit_caption(tmp_path / "ds" / "manifest.json")
        change = {}
    before = tree_digest(finished_run)
    with pytest.raises(ResumeMismatchError) as info:
        train_expert(train_config(tmp_path, max_steps=6, **change), "high", resume=True)
    message = str(info.value)
    assert expected in message and "checkpoint-000004" in message
    assert "without --resume" in message and "--force-resume" in message
    assert tree_digest(finished_run) == before


def test_resume_of_the_same_run_with_more_steps_is_accepted(tmp_path, finished_run):
    result = train_expert(train_config(tmp_path, max_steps=6, checkpoint_every=3), "high", resume=True)
    assert len(result.losses) == 6 and logged_steps(finished_run) == [1, 2, 3, 4, 5, 6]


def test_a_fresh_run_replaces_an_earlier_runs_checkpoints(tmp_path, finished_run, capsys):
    """The issue's case: a fresh run in a folder holding another run's checkpoints 2 and 4, stopped after its own
    step 2, then resumed, used to continue from the other run's step 4."""
    train_expert(train_config(tmp_path, seed=7, max_steps=2), "high")
    assert "removing 2 checkpoint(s) of an earlier run" in capsys.readouterr().out
    assert sorted(p.name for p in finished_run.glob("checkpoint-*")) == ["checkpoint-000002"]
    train_expert(train_config(tmp_path, seed=7, max_steps=4), "high", resume=True)
    assert logged_steps(finished_run) == [1, 2, 3, 4]


def test_force_resume_continues_with_the_new_learning_rate(tmp_path, finished_run):
    train_expert(train_config(tmp_path, max_steps=6, learning_rate=2e-3), "high", force_resume=True)
    optimizer = torch.load(finished_run / "checkpoint-000006" / "optimizer.pt", weights_only=True)
    assert {group["lr"] for group in optimizer["param_groups"]} == {2e-3}
    assert logged_steps(finished_run) == [1, 2, 3, 4, 5, 6]


def test_cli_resume_mismatch_exits_2_without_traceback(tmp_path, finished_run, capsys):
    from dataclasses import asdict

    import yaml

    config = tmp_path / "changed.yaml"
    config.write_text(yaml.safe_dump(asdict(train_config(tmp_path, learning_rate=5e-4))))
    before = tree_digest(finished_run)
    assert main(["train", "--config", str(config), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "learning_rate: 0.001 -> 0.0005" in err and "Traceback" not in err
    assert tree_digest(finished_run) == before
