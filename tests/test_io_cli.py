import numpy as np
import pytest

from ffstudy.cli import main
from ffstudy.io import atomic_dir, atomic_path, read_video, write_video


def test_video_round_trip(tmp_path):
    frames = np.zeros((5, 32, 48, 3), np.uint8)
    frames[:, :, :24] = 200
    frames, fps = read_video(write_video(tmp_path / "v.mp4", frames, fps=16))
    assert frames.shape == (5, 32, 48, 3) and fps == 16
    assert abs(int(frames[0, 16, 10, 0]) - 200) < 8 and frames[0, 16, 40, 0] < 8


def test_unreadable_videos_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        read_video(tmp_path / "missing.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match="bad.mp4 is not a readable video"):
        read_video(bad)
    with pytest.raises(ValueError, match=r"expected shape \(F, H, W, 3\)"):
        write_video(tmp_path / "x.mp4", np.zeros((4, 4, 3)))


def test_atomic_writes_keep_the_old_file_on_failure(tmp_path):
    target = tmp_path / "result.json"
    target.write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "good" and list(tmp_path.iterdir()) == [target]


def test_atomic_dir_replaces_a_folder_whole_or_not_at_all(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale.json").write_text("old evaluation")
    (target / "weights.bin").write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as staging:
            (staging / "weights.bin").write_text("half")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in target.iterdir()) == ["stale.json", "weights.bin"]
    assert (target / "weights.bin").read_text() == "good" and list(tmp_path.iterdir()) == [target]
    with atomic_dir(target) as staging:
        (staging / "weights.bin").write_text("new")
    assert [p.name for p in target.iterdir()] == ["weights.bin"] and (target / "weights.bin").read_text() == "new"
    assert list(tmp_path.iterdir()) == [target]
    with pytest.raises(ValueError, match="weights.bin is a file, not a folder"):
        with atomic_dir(target / "weights.bin"):
            pass


def test_cli_demo_writes_video_and_composite(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "demo on spriteworld" in out and "ad23r2 the camera view suddenly changes." in out
    assert "4 transition frames dropped" in out
    assert read_video(tmp_path / "video.mp4")[0].shape[0] == 13  # SpriteWorld's 17 frames, 4 dropped
    assert (tmp_path / "first_frame" / "composite.json").is_file()


def test_cli_compose_then_generate(tmp_path, capsys):
    data = ["-f", "data/references/red_star.png", "-f", "data/references/blue_ring.png",
            "-b", "data/backgrounds/night_city.png"]
    assert main(["compose", *data, "--layout", "grid", "-o", str(tmp_path / "c")]) == 0
    assert "background   box x[640, 1280) y[180, 540)" in capsys.readouterr().out
    assert main(["generate", "--model", "tiny-wan2.1-i2v", "--composite", str(tmp_path / "c"), "-p", "a star",
                 "--steps", "1", "--frames", "13", "-o", str(tmp_path / "g")]) == 0
    assert read_video(tmp_path / "g" / "video.mp4")[0].shape[0] == 9


def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compose", "-f", "nope.png", "-b", "data/backgrounds/meadow.png", "-o", str(out)]) == 2
    assert "foregrounds[0]: file not found: nope.png" in capsys.readouterr().err
    assert main(["generate", "--model", "tiny-wan2.2-i2v", "-f", "data/references/red_star.png", "-b",
                 "data/backgrounds/meadow.png", "-p", "x", "--frames", "10", "-o", str(out)]) == 2
    assert "num_frames=10" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("command", ["compose", "generate", "demo", "models"])
def test_help_explains_each_command(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0 and "usage: ffstudy" in capsys.readouterr().out


def test_ffstudy_train_and_python_m_ffstudy_train_take_the_same_arguments():
    from ffstudy.cli import build_parser
    from ffstudy.train import build_parser as train_parser

    argv = ["--config", "c.yaml", "--resume", "--max-steps", "3", "--output-dir", "o", "--manifest", "m.json"]
    ours, theirs = vars(build_parser().parse_args(["train", *argv])), vars(train_parser().parse_args(argv))
    assert {k: ours[k] for k in theirs} == theirs and theirs["output_dir"] == "o" and theirs["max_steps"] == 3
