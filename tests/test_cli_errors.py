"""Issue 42: every bad input the issue lists ends in exit code 2 and one line that names the argument or file,
before any work, with no traceback and nothing written: the inputs are hashed before and after each case.

``CASES`` and :func:`build_workspace` import nothing of ffstudy's beyond the CLI, so ``python -m
tests.test_cli_errors <checkout>`` can run them against another checkout (the counts in the issue's closing note).
"""
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

NAN = float("nan")


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def _lora(path: Path, transformer, value: float | None = None, modules: int | None = None, in_extra: int = 0) -> None:
    """A kohya-layout LoRA on ``transformer``'s first ``modules`` Linear layers (rank 2), filled with ``value``."""
    import torch
    from safetensors.torch import save_file

    from ffstudy.lora import linear_modules

    tensors = {}
    for original, module_path in list(linear_modules(transformer).items())[:modules]:
        layer = transformer.get_submodule(module_path)
        name = "lora_unet__" + original.replace(".", "_")
        tensors[f"{name}.lora_down.weight"] = torch.full((2, layer.in_features + in_extra), value or 0.01)
        tensors[f"{name}.lora_up.weight"] = torch.full((layer.out_features, 2), value or 0.01)
    save_file(tensors, str(path))


def build_workspace(root: Path) -> Path:
    """Every input a case reads, written once into ``root``."""
    from safetensors.torch import save_file

    from ffstudy.models import load_pipeline

    root.mkdir(parents=True, exist_ok=True)
    cut = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(cut).ellipse((8, 8, 56, 56), fill=(220, 30, 40, 255))
    cut.save(root / "cut.png")
    faint = cut.copy()
    faint.putalpha(cut.getchannel("A").point(lambda a: min(a, 100)))
    faint.save(root / "faint.png")
    Image.new("RGB", (160, 90), (40, 160, 60)).save(root / "plate.png")
    (root / "not_an_image.png").write_text("text")
    transformer = load_pipeline("tiny-wan2.2-i2v").transformer
    _lora(root / "nan_lora.safetensors", transformer, value=NAN)
    _lora(root / "wide_lora.safetensors", transformer, in_extra=3)
    _lora(root / "good_lora.safetensors", transformer)
    save_file({}, str(root / "empty_lora.safetensors"))
    (root / "truncated_lora.safetensors").write_bytes((root / "nan_lora.safetensors").read_bytes()[:300])
    (root / "lora_folder").mkdir()
    (root / "file").write_text("in the way")
    (root / "manifest_empty.json").write_text(json.dumps({"version": 1, "examples": []}))
    configs = {"empty": "", "list": "- manifest: m.json\n", "syntax": "manifest: [unclosed\n",
               "checkpoint_every": "checkpoint_every: 0\n", "batch_size": "batch_size: 0\n", "max_steps": "max_steps: 0\n",
               "learning_rate": "learning_rate: fast\n", "targets": "target_modules: [to_q, to_kk]\n",
               "model": "model: wan9\n", "clip_length": "clip_length: 10\n", "seed": "seed: -5\n"}
    for name, text in configs.items():
        body = text if name in ("empty", "list", "syntax") else \
            f"manifest: {root / 'manifest_empty.json'}\noutput_dir: {root / 'train-out'}\n{text}"
        (root / f"train_{name}.yaml").write_text(body)
    return root


G = ["generate", "--model", "tiny-wan2.2-i2v", "-f", "{w}/cut.png", "-b", "{w}/plate.png", "-p", "x", "--steps", "1"]
P = ["probe", "--model", "tiny-wan2.2-i2v", "-f", "{w}/cut.png", "-b", "{w}/plate.png", "-p", "x"]
CASES = [  # (case, argv, what the message must name)
    ("compose -o where a folder blocks composite.png",
     ["compose", "-f", "{w}/cut.png", "-b", "{w}/plate.png", "-o", "{w}/blocked"], "{w}/blocked/composite.png"),
    ("generate --composite DIR -o DIR", ["generate", "--model", "tiny-wan2.2-i2v", "--composite", "{w}/comp", "-p",
                                         "x", "-o", "{w}/comp"], "which --composite reads"),
    ("generate -o a file", G + ["-o", "{w}/file"], "--out {w}/file is a file"),
    ("generate -o under a file", G + ["-o", "{w}/file/out"], "--out {w}/file/out: cannot write there"),
    ("generate into a folder another run writes", G + ["-o", "{w}/busy"], "being written by another ffstudy run"),
    ("generate --guidance nan", G + ["--guidance", "nan", "-o", "{w}/out"], "argument --guidance"),
    ("generate --guidance inf", G + ["--guidance", "inf", "-o", "{w}/out"], "argument --guidance"),
    ("generate --frames 0", G + ["--frames", "0", "-o", "{w}/out"], "argument --frames"),
    ("generate --steps 0", G[:-1] + ["0", "-o", "{w}/out"], "argument --steps"),
    ("generate --steps -3", G[:-1] + ["-3", "-o", "{w}/out"], "argument --steps"),
    ("generate --seed -1", G + ["--seed", "-1", "-o", "{w}/out"], "argument --seed"),
    ("generate --seed 2**64", G + ["--seed", str(2**64), "-o", "{w}/out"], "argument --seed"),
    ("generate --height 0", G + ["--height", "0", "-o", "{w}/out"], "argument --height"),
    ("generate 4096x4096", G + ["--height", "4096", "--width", "4096", "-o", "{w}/out"], "pass --allow-large"),
    ("probe 4096x4096", P + ["--height", "4096", "--width", "4096", "-o", "{w}/out"], "pass --allow-large"),
    ("generate --drop-first-frames -1", G + ["--drop-first-frames", "-1", "-o", "{w}/out"],
     "argument --drop-first-frames"),
    ("generate --lora NaN weights", G + ["--lora", "{w}/nan_lora.safetensors", "-o", "{w}/out"],
     "--lora {w}/nan_lora.safetensors: {w}/nan_lora.safetensors: "),
    ("generate --lora 0 tensors", G + ["--lora", "{w}/empty_lora.safetensors", "-o", "{w}/out"],
     "--lora {w}/empty_lora.safetensors: the LoRA holds no tensors"),
    ("generate --lora truncated", G + ["--lora", "{w}/truncated_lora.safetensors", "-o", "{w}/out"],
     "--lora {w}/truncated_lora.safetensors"),
    ("generate --lora folder without weights", G + ["--lora", "{w}/lora_folder", "-o", "{w}/out"],
     "--lora {w}/lora_folder"),
    ("generate --lora missing file", G + ["--lora", "{w}/nope.safetensors", "-o", "{w}/out"],
     "--lora {w}/nope.safetensors"),
    ("generate --lora of another shape", G + ["--lora", "{w}/wide_lora.safetensors", "-o", "{w}/out"],
     "--lora {w}/wide_lora.safetensors"),
    ("generate unreadable background", G[:6] + ["{w}/not_an_image.png"] + G[7:] + ["-o", "{w}/out"],
     "not_an_image.png is not a readable image"),
    ("generate faint cut-out", G[:4] + ["{w}/faint.png"] + G[5:] + ["-o", "{w}/out"], "no pixel with alpha >= 128"),
    ("probe --probe-steps beyond --steps", P + ["--steps", "2", "--probe-steps", "0,5", "-o", "{w}/out"],
     "--probe-steps [5]"),
    ("probe --blocks -1", P + ["--blocks", "-1", "-o", "{w}/out"], "argument --blocks"),
    ("fewshot --examples -3", ["spriteworld", "fewshot", "--examples", "-3", "-o", "{w}/out"], "argument --examples"),
    ("fewshot --examples 0", ["spriteworld", "fewshot", "--examples", "0", "-o", "{w}/out"], "argument --examples"),
    ("spriteworld generate --seed -1", ["spriteworld", "generate", "--seed", "-1", "-o", "{w}/out"], "argument --seed"),
    ("data check --frames 0", ["data", "check", "{w}/manifest_empty.json", "--frames", "0"], "argument --frames"),
    ("data check --frames -4", ["data", "check", "{w}/manifest_empty.json", "--frames", "-4"], "argument --frames"),
    ("lora 0 tensors", ["lora", "{w}/empty_lora.safetensors", "{w}/out.safetensors", "--model", "tiny-wan2.2-i2v"],
     "input {w}/empty_lora.safetensors: the LoRA holds no tensors"),
    ("lora of another shape", ["lora", "{w}/wide_lora.safetensors", "{w}/out.safetensors", "--model",
                               "tiny-wan2.2-i2v"], "input {w}/wide_lora.safetensors"),
    ("lora for another model", ["lora", "{w}/nan_lora.safetensors", "{w}/out.safetensors"],
     "input {w}/nan_lora.safetensors"),
    ("lora output = input", ["lora", "{w}/nan_lora.safetensors", "{w}/nan_lora.safetensors", "--model",
                             "tiny-wan2.2-i2v"], "is the input file"),
    ("lora output is a folder", ["lora", "{w}/good_lora.safetensors", "{w}/lora_folder", "--model",
                                 "tiny-wan2.2-i2v", "--to", "comfyui"], "{w}/lora_folder"),
    ("train --max-steps 0", ["train", "--config", "{w}/train_max_steps.yaml", "--max-steps", "0"],
     "argument --max-steps"),
    ("train missing config", ["train", "--config", "{w}/nope.yaml"], "{w}/nope.yaml"),
    ("train config is a folder", ["train", "--config", "{w}/lora_folder"], "{w}/lora_folder"),
] + [(f"train config: {name}", ["train", "--config", f"{{w}}/train_{name}.yaml"], f"{{w}}/train_{name}.yaml")
     for name in ("empty", "list", "syntax", "checkpoint_every", "batch_size", "max_steps", "learning_rate", "targets",
                  "model", "clip_length", "seed")]


def run_case(argv: list[str], workspace: Path) -> tuple[int, str]:
    """(exit code, stderr) of the CLI in this process; an exception escaping ``main`` is a traceback."""
    import contextlib
    import io

    from ffstudy.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main([a.replace("{w}", str(workspace)) for a in argv])
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code
    return code, err.getvalue()


def prepare(root: Path) -> Path:
    """:func:`build_workspace` plus a composite folder, a folder in the way of composite.png and an output folder
    that a live run (this process) holds."""
    from ffstudy.compose import compose_first_frame

    try:
        from ffstudy.io import _owner_tag
    except ImportError:  # a checkout from before output folders were locked
        def _owner_tag():
            return "0_000000"

    build_workspace(root)
    compose_first_frame([root / "cut.png"], root / "plate.png").save(root / "comp")
    (root / "blocked" / "composite.png").mkdir(parents=True)
    (root / "busy").mkdir()
    (root / "busy" / ".ffstudy.lock").write_text(_owner_tag())
    return root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return prepare(tmp_path_factory.mktemp("cli-errors"))


@pytest.mark.parametrize("argv, expected", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_exits_2_naming_it_and_changes_nothing(workspace, argv, expected):
    before = tree_digest(workspace)
    code, err = run_case(argv, workspace)
    assert code == 2, err
    last = err.strip().splitlines()[-1]  # argparse prints its usage above
    assert "Traceback" not in err and last.startswith("ffstudy ") and err.count("error:") == 1, err
    assert expected.replace("{w}", str(workspace)) in last, err
    assert tree_digest(workspace) == before


def test_an_image_past_pillows_pixel_limit_is_named(workspace, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    code, err = run_case(["compose", "-f", "{w}/cut.png", "-b", "{w}/plate.png", "-o", "{w}/out"], workspace)
    assert code == 2 and "more pixels than Pillow reads safely" in err and "cut.png" in err


def test_allow_large_overrides_the_size_guard(workspace, tmp_path):
    argv = G + ["--height", "144", "--width", "240", "-o", str(tmp_path / "out")]  # 4.8x tiny's 64x112 clip
    assert run_case(argv, workspace)[0] == 2 and not (tmp_path / "out").exists()
    assert run_case(argv + ["--allow-large"], workspace)[0] == 0 and (tmp_path / "out" / "video.mp4").is_file()


def test_a_yaml_1_1_exponent_is_read_as_a_number(tmp_path):
    from ffstudy.train import TrainConfig

    path = tmp_path / "c.yaml"
    path.write_text("manifest: m.json\nlearning_rate: 1e-4\nadam_epsilon: 1e-10\n")  # strings in YAML 1.1
    config = TrainConfig.from_file(path)
    assert (config.learning_rate, config.adam_epsilon) == (1e-4, 1e-10)


def test_16_bit_grey_images_keep_their_greys(tmp_path):
    from ffstudy.io import load_image

    ramp = np.linspace(0, 65535, 256).astype(np.uint16)[None].repeat(4, 0)
    Image.fromarray(ramp).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    grey = np.asarray(load_image(tmp_path / "grey16.png").convert("RGB"))[0, :, 0]
    assert np.array_equal(grey, np.arange(256))  # Pillow's own conversion keeps 9 levels


def test_data_check_reports_what_used_to_pass_or_crash(tmp_path, capsys):
    from ffstudy.cli import main

    from .fewshot import make_dataset

    manifest = make_dataset(tmp_path / "ds", n=2)
    data = json.loads(manifest.read_text())
    data["examples"][0].update(caption=5, cutouts="clip_000/cutout.png")
    data["examples"][1]["video"] = None
    faint = Image.open(tmp_path / "ds" / "clip_001" / "cutout.png")
    faint.putalpha(faint.getchannel("A").point(lambda a: min(a, 100)))
    faint.save(tmp_path / "ds" / "clip_001" / "cutout.png")
    manifest.write_text(json.dumps(data))
    assert main(["data", "check", str(manifest), "--frames", "13"]) == 1
    out = capsys.readouterr().out
    assert "caption must be a non-empty string, got 5" in out
    assert "cutouts must be a list of paths, got 'clip_000/cutout.png'" in out and out.count("clip_000") < 6
    assert "video must be a path, got None" in out and "cutouts[0] clip_001/cutout.png has no pixel with alpha" in out
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"version": 1, "examples": []}))
    assert main(["data", "check", str(empty)]) == 1
    assert "lists no examples" in capsys.readouterr().out


if __name__ == "__main__":  # python -m tests.test_cli_errors [SKIP ...]: count outcomes with the ffstudy on the path
    import tempfile
    import traceback

    folder = prepare(Path(tempfile.mkdtemp()))
    skip = sys.argv[1:]  # parts of case names not to run (an old checkout samples 4096x4096 for minutes)
    counts = {"clear error": 0, "traceback": 0, "exit 0 (silent)": 0, "other": 0}
    for name, argv, _ in CASES:
        if any(part in name for part in skip):
            print(f"{'skipped':<16} {name}")
            continue
        before = tree_digest(folder)
        try:
            code, err = run_case(argv, folder)
            outcome = "exit 0 (silent)" if code == 0 else "clear error" if code == 2 else "other"
        except Exception:  # noqa: BLE001 - an escaping exception is what this counts
            outcome, err = "traceback", traceback.format_exc(limit=1)
        changed = tree_digest(folder) != before
        counts[outcome] += 1
        print(f"{outcome:<16} {'inputs changed ' if changed else ''}{name}: {err.strip().splitlines()[-1:] or ''}")
    print(counts, file=sys.stderr)
