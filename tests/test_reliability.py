"""Issue 42: runs that cannot mix, files other users can read, no lost work, and exit 2 with a message (never a
traceback or a silent wrong result) for bad input."""
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
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


# --------------------------------------------------------------------------------------------- 2. file modes
@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_respect_the_umask_and_keep_an_existing_mode(tmp_path, umask):
    from ffstudy.io import atomic_dir, write_json

    previous = os.umask(umask)
    try:
        write_json(tmp_path / "new.json", {})
        with atomic_dir(tmp_path / "model") as staging:
            write_json(staging / "config.json", {})
        kept = tmp_path / "kept.json"
        kept.write_text("{}")
        os.chmod(kept, 0o640)
        write_json(kept, {"a": 1})
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((tmp_path / "model" / "config.json").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640 and json.loads(kept.read_text()) == {"a": 1}


# --------------------------------------------------------------------------------------------- 6. concurrency
def _write_model(target: Path, tag: str, files: int = 20) -> None:
    from ffstudy.io import atomic_dir

    with atomic_dir(target) as staging:
        for i in range(files):
            (staging / f"part-{i:02d}.txt").write_text(tag * 1000)


def _consistent(target: Path) -> set[str]:
    """The writers whose content the folder holds: exactly one for a whole folder."""
    parts = sorted(target.iterdir())
    assert [p.name for p in parts] == [f"part-{i:02d}.txt" for i in range(20)]
    return {p.read_text()[0] for p in parts}


def test_concurrent_atomic_dir_writers_leave_one_whole_result(tmp_path):
    target = tmp_path / "model"
    errors = []

    def writer(tag):
        try:
            for _ in range(15):
                _write_model(target, tag)
        except Exception as error:  # noqa: BLE001 - any failure of a writer is the test's failure
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(tag,)) for tag in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(_consistent(target)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging or old folder left behind


def test_a_kill_at_any_moment_leaves_a_whole_model_folder(tmp_path):
    target = tmp_path / "model"
    _write_model(target, "0")
    script = ("import sys; from pathlib import Path; from ffstudy.io import atomic_dir\n"
              "print('ready', flush=True)\n"
              "for i in range(10**6):\n"
              "    with atomic_dir(Path(sys.argv[1])) as staging:\n"
              "        for j in range(20): (staging / f'part-{j:02d}.txt').write_text('ab'[i % 2] * 1000)\n")
    seen = set()
    for delay in (0.05, 0.1, 0.2, 0.3):
        process = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True,
                                   cwd=Path(__file__).parents[1])
        assert process.stdout.readline() == "ready\n"
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        seen |= _consistent(target)
    assert seen & {"a", "b"}, "the writer never replaced the folder before it was killed"
    _write_model(target, "c")  # the next writer clears what the killed ones left
    assert _consistent(target) == {"c"} and [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_kill_between_the_fallback_renames_is_repaired(tmp_path):
    """Without renameat2 the old folder is moved aside, then the new one in: a killed writer's aside folder
    comes back when the next writer starts, even if that writer fails."""
    from ffstudy.io import _HOST, atomic_dir

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    aside = tmp_path / f".model.{int(dead.stdout)}_{_HOST}.abcd1234.old"
    aside.mkdir()
    (aside / "weights.bin").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "model"):
            raise RuntimeError("interrupted")
    assert (tmp_path / "model" / "weights.bin").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]



def test_a_second_writer_of_an_output_folder_is_refused_and_a_dead_ones_lock_taken_over(tmp_path):
    from ffstudy.io import _HOST, OutputBusyError, exclusive_output

    with exclusive_output(tmp_path / "out"):
        with pytest.raises(OutputBusyError, match="being written by another ffstudy run"):
            with exclusive_output(tmp_path / "out"):
                pass
    assert list((tmp_path / "out").iterdir()) == []
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "out" / ".ffstudy.lock").write_text(f"{int(dead.stdout)}_{_HOST}")
    with exclusive_output(tmp_path / "out"):
        pass


def test_a_second_trainer_is_refused_and_a_killed_runs_partial_checkpoint_removed(tmp_path, finished_run):
    """Two trainers into one run folder would interleave checkpoints and logs: while a live run holds it, a second
    is refused before loading anything, the folder unchanged. A checkpoint a killed run never finished is removed
    by the next run, which resumes from the last finished one."""
    from ffstudy.io import OutputBusyError, exclusive_output

    digest = tree_digest(finished_run)
    with exclusive_output(finished_run):  # another live run holds the folder
        with pytest.raises(OutputBusyError, match="being written by another ffstudy run"):
            train_expert(train_config(tmp_path, max_steps=6), "high", resume=True)
    assert tree_digest(finished_run) == digest
    partial = finished_run / ".checkpoint-000006.partial"  # killed while writing its next checkpoint
    partial.mkdir()
    (partial / "rng-0.pt").write_bytes(b"half")
    train_expert(train_config(tmp_path, max_steps=6), "high", resume=True)
    assert not partial.exists() and not (finished_run / ".ffstudy.lock").exists()
    assert logged_steps(finished_run) == [1, 2, 3, 4, 5, 6]


# --------------------------------------------------------------------------------------------- 4./5. generate
@pytest.fixture
def no_sampling(tiny_pipe, monkeypatch):
    """The tiny pipeline with sampling forbidden: what must be refused before any work."""
    pipe = tiny_pipe()

    def sample(*args, **kwargs):
        raise AssertionError("sampled although the request was invalid")

    monkeypatch.setattr(type(pipe), "__call__", sample)
    return pipe


@pytest.mark.parametrize("case, message", [
    ("file", "is a file, not a folder"),
    ("under_a_file", "cannot write there"),
    ("folder_in_the_way", "is a folder where the output file video.mp4 goes"),
])
def test_generate_checks_the_output_folder_before_sampling(tmp_path, no_sampling, cutout, plate, case, message):
    from ffstudy.compose import compose_first_frame
    from ffstudy.generate import generate

    (tmp_path / "file").write_text("keep")
    out = {"file": tmp_path / "file", "under_a_file": tmp_path / "file" / "out",
           "folder_in_the_way": tmp_path / "out"}[case]
    (tmp_path / "out" / "video.mp4").mkdir(parents=True)
    before = tree_digest(tmp_path)
    with pytest.raises(ValueError, match=message):
        generate(no_sampling, compose_first_frame([cutout], plate), "x", num_inference_steps=1, output_dir=out,
                 progress=False)
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize("kwargs, message", [
    (dict(guidance_scale=float("nan")), "guidance_scale=nan must be a finite number"),
    (dict(flow_shift=float("inf")), "flow_shift=inf must be a finite number"),
    (dict(num_frames=0), "num_frames=0 must be 4k"),
    (dict(num_inference_steps=0), "num_inference_steps=0 must be an integer >= 1"),
    (dict(seed=-1), r"seed=-1 must be an integer in \[0, 2\*\*64 - 1\]"),
    (dict(seed=2**64), "seed=18446744073709551616"),
])
def test_generate_refuses_settings_that_gave_garbage(tmp_path, no_sampling, cutout, plate, kwargs, message):
    from ffstudy.compose import compose_first_frame
    from ffstudy.generate import generate

    with pytest.raises(ValueError, match=message):
        generate(no_sampling, compose_first_frame([cutout], plate), "x", output_dir=tmp_path / "out",
                 progress=False, **{"num_inference_steps": 1, **kwargs})
    assert not (tmp_path / "out").exists()


def test_a_failed_final_write_keeps_the_result_elsewhere_and_the_old_one_whole(tmp_path, tiny_pipe, cutout, plate,
                                                                             monkeypatch):
    import errno
    import importlib

    from ffstudy.compose import compose_first_frame
    from ffstudy.io import read_video

    generate_module = importlib.import_module("ffstudy.generate")  # the package exports its function by that name
    out = tmp_path / "out"
    comp = compose_first_frame([cutout], plate)
    video = generate_module.generate(tiny_pipe(), comp, "x", num_inference_steps=1, progress=False, output_dir=out)
    before = tree_digest(out)
    real_write_video = generate_module.write_video

    def full_disk(path, *args, **kwargs):
        if Path(path).parent == out:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write_video(path, *args, **kwargs)

    monkeypatch.setattr(generate_module, "write_video", full_disk)
    with pytest.raises(generate_module.ResultKeptElsewhereError, match="No space left") as info:
        video.save(out)
    rescue = Path(str(info.value).split("saved in ")[1].split(" instead")[0])
    assert read_video(rescue / "video.mp4")[0].shape == video.frames.shape
    assert json.loads((rescue / "generation.json").read_text())["prompt"] == video.prompt
    assert tree_digest(out) == before  # no new file beside the old set
    shutil.rmtree(rescue)


# --------------------------------------------------------------------------------------------- damaged files
@pytest.mark.parametrize("damage", ["truncated LoRA", "random optimizer.pt", "broken state.json", "no rng"])
def test_resume_names_a_damaged_checkpoint_and_continues_from_the_one_before(tmp_path, finished_run, capsys,
                                                                            damage):
    latest = finished_run / "checkpoint-000004"
    file = {"truncated LoRA": "high_noise_lora.safetensors", "random optimizer.pt": "optimizer.pt",
            "broken state.json": "state.json", "no rng": "rng-0.pt"}[damage]
    data = (latest / file).read_bytes()
    if damage == "no rng":
        (latest / file).unlink()
    else:
        (latest / file).write_bytes(data[: len(data) // 2] if damage != "random optimizer.pt" else os.urandom(500))
    result = train_expert(train_config(tmp_path, max_steps=6), "high", resume=True)
    out = capsys.readouterr().out
    assert f"{latest / file} cannot be read" in out and "skipping checkpoint-000004" in out
    assert "resumed high from" in out and "checkpoint-000002 at step 2" in out
    assert len(result.losses) == 6 and logged_steps(finished_run) == [1, 2, 3, 4, 5, 6]


def test_resume_stops_when_every_checkpoint_is_damaged(tmp_path, finished_run):
    for checkpoint in finished_run.glob("checkpoint-*"):
        (checkpoint / "optimizer.pt").write_bytes(b"garbage")
    before = tree_digest(finished_run)
    with pytest.raises(ValueError, match="every checkpoint in .* is damaged.*start fresh without --resume"):
        train_expert(train_config(tmp_path, max_steps=6), "high", resume=True)
    assert tree_digest(finished_run) == before


def test_a_damaged_latent_cache_entry_is_encoded_again(tmp_path, finished_run, capsys):
    from safetensors.torch import load_file

    entry = sorted((tmp_path / "run" / "cache").glob("*.safetensors"))[0]
    good = {k: v.clone() for k, v in load_file(str(entry)).items()}  # not views of the file damaged next
    entry.write_bytes(entry.read_bytes()[:100])
    train_expert(train_config(tmp_path, max_steps=1), "high")
    assert f"latent cache entry {entry} cannot be read" in capsys.readouterr().out
    again = load_file(str(entry))
    assert again.keys() == good.keys() and all(torch.equal(good[k], again[k]) for k in good)


def test_sigterm_removes_the_lock_and_temporary_files(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "ffstudy.cli", "generate", "--model", "spriteworld", "-f",
               "data/references/red_star.png", "-b", "data/backgrounds/meadow.png", "-p", "x", "--steps", "400",
               "-o", str(out)]
    process = subprocess.Popen(command, cwd=Path(__file__).parents[1], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / ".ffstudy.lock").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert (out / ".ffstudy.lock").exists(), process.stderr.read()[-2000:]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    assert "Traceback" not in process.stderr.read()
    assert not out.exists()  # created by the run, left empty: removed with its lock


def test_a_file_size_limit_is_reported_in_a_line(tmp_path):
    """ulimit -f: Python gets EFBIG, ffmpeg dies; generate names both folders it tried, compose the file."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    cut, plate = "data/references/red_star.png", "data/backgrounds/meadow.png"
    commands = {"generate": ["generate", "--model", "tiny-wan2.2-i2v", "-f", cut, "-b", plate, "-p", "x",
                             "--steps", "1", "-o", str(tmp_path / "gen")],
                "compose": ["compose", "-f", cut, "-b", plate, "-o", str(tmp_path / "comp")]}
    for name, argv in commands.items():
        done = subprocess.run([sys.executable, "-m", "ffstudy.cli", *argv], cwd=Path(__file__).parents[1],
                              preexec_fn=limit, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
        last = done.stderr.strip().splitlines()[-1]
        if name == "generate":
            assert f"could not write the result into {tmp_path / 'gen'} ({tmp_path / 'gen' / 'video.mp4'}: ffmpeg " \
                "could not write the video) nor into a temporary folder" in last
        else:
            assert "File too large" in last and "file size limit" in last and str(tmp_path / "comp") in last
