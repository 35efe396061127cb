"""The ``ffstudy`` command line: each sub-command is a thin wrapper over one package function."""
from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

DEMO_PROMPT = "a red star and a blue ring drift over a green meadow under a blue sky"


def data_dir() -> Path:
    """The course assets: ``$FFSTUDY_DATA`` or the ``data/`` folder of the repository checkout."""
    path = Path(os.environ.get("FFSTUDY_DATA", Path(__file__).resolve().parents[1] / "data"))
    if not path.is_dir():
        raise FileNotFoundError(f"data folder {path} not found: run from a clone of the ffstudy repository "
                                f"or set FFSTUDY_DATA to its data/ folder")
    return path


def _integer(low: int, high: int | None = None):
    """An argparse type for integers in [low, high]: a bad value is refused before any work, not after it."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} must be >= {low}" if high is None else
                                             f"{value} must be in [{low}, {high}]")
        return value
    return parse


def _finite(text: str) -> float:
    """An argparse type for finite numbers: NaN guidance samples a NaN video."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number")
    return value


POSITIVE, COUNT, SEED = _integer(1), _integer(0), _integer(0, 2**64 - 1)
LARGE = 4  # memory grows with pixels x frames: 4096x4096 on SpriteWorld (1,100x its clip) reached 12.7 GB


def _refuse_large(args) -> None:
    """Refuse, before loading, a clip far past the backbone's native one unless --allow-large says to try."""
    from .models import get_backbone

    spec = get_backbone(args.model)
    height, width = spec.default_size
    frames = args.frames or spec.default_frames
    ratio = (args.height or height) * (args.width or width) * frames / (height * width * spec.default_frames)
    if ratio > LARGE and not args.allow_large:
        raise ValueError(f"--height/--width/--frames {args.width or width}x{args.height or height}x{frames} is "
                         f"{ratio:.0f}x the pixels x frames of {args.model}'s native {width}x{height}x"
                         f"{spec.default_frames} clip, and memory grows with it: pass --allow-large to try anyway")


def _canvas(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--canvas {text!r}: use WIDTHxHEIGHT, e.g. 1280x720") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"--canvas {text!r}: width and height must be >= 1")
    return width, height


def _add_compose_args(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--foreground", "-f", action="append", required=required, metavar="PNG",
                        help="a reference cut-out (RGBA); repeat for several, listed top to bottom")
    parser.add_argument("--background", "-b", required=required, metavar="IMAGE", help="the clean background plate")
    parser.add_argument("--layout", choices=("ffgo", "grid", "swapped"), default="ffgo",
                        help="ffgo: objects stacked left, plate right (default); grid: objects in a grid; "
                             "swapped: objects right")
    parser.add_argument("--canvas", type=_canvas, default=(1280, 720), help="WIDTHxHEIGHT (default 1280x720)")
    parser.add_argument("--no-crop", action="store_true", help="do not crop cut-outs to their alpha box")
    parser.add_argument("--keep-background-aspect", action="store_true",
                        help="keep the plate's aspect instead of FFGo's forced resize to the canvas aspect")


def _add_first_frame_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--composite", help="a folder written by `ffstudy compose` (keeps the entity geometry), "
                                            "or a composite PNG")
    _add_compose_args(parser, required=False)
    parser.add_argument("--prompt", "-p", required=True, help="the scene caption (the trigger is added if missing)")


def _compose(args):
    from .compose import compose_first_frame

    return compose_first_frame(args.foreground, args.background, canvas=args.canvas, layout=args.layout,
                               crop_to_alpha=not args.no_crop, force_background_aspect=not args.keep_background_aspect)


def _first_frame(args):
    from .compose import Composite

    if args.composite and args.foreground:
        raise SystemExit("give either --composite or --foreground/--background, not both")
    if args.composite:
        path = Path(args.composite)
        return Composite.load(path) if path.is_dir() else path
    if not args.foreground or not args.background:
        raise SystemExit("give --composite, or at least one --foreground and a --background")
    return _compose(args)


def _add_generate_args(parser: argparse.ArgumentParser, default_model: str | None) -> None:
    parser.add_argument("--model", default=default_model, required=default_model is None,
                        help="backbone name (see `ffstudy models`)")
    parser.add_argument("--path", help="local diffusers folder holding the backbone's weights")
    parser.add_argument("--frames", type=POSITIVE, help="number of frames, 4k+1 (default: the backbone's)")
    parser.add_argument("--height", type=POSITIVE)
    parser.add_argument("--width", type=POSITIVE)
    parser.add_argument("--steps", type=POSITIVE, default=50, help="denoising steps (paper: 50)")
    parser.add_argument("--guidance", type=_finite,
                        help="CFG scale for both experts (default: the backbone's: 6.0 for Wan as in the paper, 1.0 "
                             "for SpriteWorld)")
    parser.add_argument("--seed", type=SEED, default=42)
    parser.add_argument("--drop-first-frames", type=COUNT, default=4,
                        help="transition frames to cut (paper: 4 = the VAE's temporal stride)")
    parser.add_argument("--with-transition", action="store_true", help="also save the uncut video")
    parser.add_argument("--offload", choices=("model", "sequential"), help="CPU offload (CUDA only)")
    parser.add_argument("--lora", help="FFGo LoRA for the (high-noise) transformer: a diffusers folder or a "
                                       "diffusers / kohya (official FFGo) / ComfyUI .safetensors file")
    parser.add_argument("--lora-low", help="Wan2.2-A14B only: the LoRA for the low-noise expert (transformer_2)")
    parser.add_argument("--allow-large", action="store_true",
                        help=f"allow a clip of more than {LARGE}x the backbone's native pixels x frames")


def _load_with_lora(args):
    from safetensors import SafetensorError

    from .lora import load_lora
    from .models import load_pipeline

    pipe = load_pipeline(args.model, offload=args.offload, path=args.path)
    two_experts = getattr(pipe, "transformer_2", None) is not None
    for argument, path, expert in (("--lora", args.lora, "high" if two_experts else "main"),
                                   ("--lora-low", args.lora_low, "low")):
        if path:
            try:
                load_lora(pipe, path, expert)
            except (OSError, ValueError, RuntimeError, SafetensorError) as error:
                # diffusers reports a folder without weights as OSError, torch tensors of other shapes as RuntimeError
                raise ValueError(f"{argument} {path}: {_describe(error)}") from error
    return pipe


def _inputs(args) -> list[tuple[str, Path]]:
    """Every file the command reads, with the argument that named it (a folder stands for its files)."""
    named = [(f"--{name.replace('_', '-')}", getattr(args, name, None))
             for name in ("composite", "background", "lora", "lora_low", "path")]
    named += [("--foreground", f) for f in args.foreground or []]
    files = []
    for argument, value in named:
        path = Path(value) if value else None
        if path is not None and path.is_dir():
            files += [(argument, p) for p in path.rglob("*") if p.is_file()]
        elif path is not None:
            files.append((argument, path))
    return files


def _refuse_overwriting_inputs(args, written: list[Path]) -> None:
    """``-o`` must not be where an output would replace an input (``--composite DIR -o DIR`` used to replace the
    composite by a video-sized frame and leave its geometry behind)."""
    targets = {p.resolve() for p in written}
    for argument, path in _inputs(args):
        if path.resolve() in targets:
            raise ValueError(f"--out {args.out}: writing there would overwrite {path}, which {argument} reads; "
                             f"choose another output folder")


def _generate(args, first_frame, prompt: str, out: Path):
    from .generate import OUTPUT_NAMES, generate
    from .io import exclusive_output

    _refuse_large(args)
    with exclusive_output(out, OUTPUT_NAMES):  # checked before loading and sampling; no second run writes there
        pipe = _load_with_lora(args)
        video = generate(pipe, first_frame, prompt, num_frames=args.frames, height=args.height, width=args.width,
                         num_inference_steps=args.steps, guidance_scale=args.guidance, seed=args.seed,
                         drop_first_frames=args.drop_first_frames)
        paths = video.save(out, with_transition=args.with_transition)
        if hasattr(first_frame, "save"):
            first_frame.save(out / "first_frame")
    return video, paths


COMPOSITE_FILES = ("composite.png", "labels.png", "composite.json")
PROBE_FILES = ("retrieval_curves.png", "who_retrieves_what.png", "reverse_maps.png", "who_retrieves_what.mp4",
               "probe/probe.safetensors", "probe/probe.json")


def cmd_compose(args) -> int:
    _refuse_overwriting_inputs(args, [Path(args.out) / name for name in COMPOSITE_FILES])
    composite = _compose(args)
    composite.save(args.out)
    print(f"wrote {Path(args.out) / 'composite.png'} ({composite.size[0]}x{composite.size[1]}, {args.layout})")
    for entity in composite.entities:
        b = entity.box
        print(f"  {entity.name:<12} box x[{b.x0}, {b.x1}) y[{b.y0}, {b.y1})")
    return 0


def cmd_generate(args) -> int:
    from .generate import OUTPUT_NAMES

    out = Path(args.out)
    _refuse_overwriting_inputs(args, [out / name for name in OUTPUT_NAMES]
                               + [out / "first_frame" / name for name in COMPOSITE_FILES])
    video, paths = _generate(args, _first_frame(args), args.prompt, out)
    print(f"prompt: {video.prompt}")
    print(f"{len(video.frames)} frames kept after dropping {len(video.transition)}; wrote:")
    for path in paths.values():
        print(f"  {path}")
    return 0


def cmd_demo(args) -> int:
    data = data_dir()
    args.foreground = [str(data / "references" / "red_star.png"), str(data / "references" / "blue_ring.png")]
    args.background = str(data / "backgrounds" / "meadow.png")
    args.canvas, args.layout, args.no_crop, args.keep_background_aspect = (1280, 720), "ffgo", False, False
    args.composite = None
    if args.model == "spriteworld" and args.lora is None:
        args.lora = str(data / "models" / "spriteworld-ffgo-lora")  # the FFGo LoRA shipped with the model
    out = Path(args.out)
    video, paths = _generate(args, _compose(args), DEMO_PROMPT, out)
    print(f"demo on {args.model}: {video.prompt!r}")
    print(f"{len(video.frames)} frames of {video.frames.shape[2]}x{video.frames.shape[1]} kept, "
          f"{len(video.transition)} transition frames dropped; wrote:")
    for path in paths.values():
        print(f"  {path}")
    return 0


def cmd_probe(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from . import viz
    from .generate import OUTPUT_NAMES, generate
    from .io import atomic_path, exclusive_output, write_video
    from .probe import FirstFrameProbe

    late = [step for step in args.probe_steps or [] if step >= args.steps]
    if late:
        raise ValueError(f"--probe-steps {late}: the run has only --steps {args.steps} (steps 0 to {args.steps - 1})")
    out = Path(args.out)
    _refuse_overwriting_inputs(args, [out / name for name in OUTPUT_NAMES + PROBE_FILES])
    _refuse_large(args)
    first_frame = _first_frame(args)
    with exclusive_output(out, OUTPUT_NAMES + PROBE_FILES[:4]):
        pipe = _load_with_lora(args)
        composite = first_frame if hasattr(first_frame, "masks") else None
        with FirstFrameProbe(pipe, composite, blocks=args.blocks, steps=args.probe_steps, per_head=args.per_head,
                             text_prompt=args.prompt) as probe:
            video = generate(pipe, first_frame, args.prompt, num_frames=args.frames, height=args.height,
                             width=args.width, num_inference_steps=args.steps, guidance_scale=args.guidance,
                             seed=args.seed, drop_first_frames=args.drop_first_frames)
        result = probe.result
        video.save(out, with_transition=True)
        result.save(out / "probe")
        figures = {"retrieval_curves.png": viz.plot_retrieval_overview(result),
                   "who_retrieves_what.png": viz.plot_who_retrieves_what(result, video.full),
                   "reverse_maps.png": viz.plot_reverse_maps(result, video.first_frame)}
        for name, figure in figures.items():
            with atomic_path(out / name) as tmp:
                figure.savefig(tmp, dpi=110)
        write_video(out / "who_retrieves_what.mp4", viz.who_retrieves_what_animation(result, video.full),
                    fps=video.fps)
    frames, curves = result.retrieval_curves("frame")
    print(f"probed {len(result.records)} records (blocks {probe.blocks}) on a {result.grid} token grid")
    print("mean first-frame attention mass per later-frame token:")
    for name, values in curves.items():
        print(f"  {name:<12} " + " ".join(f"{v:.3f}" for v in values))
    print(f"wrote {out}/probe/, {', '.join(figures)}, who_retrieves_what.mp4 and the video")
    return 0


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use comma-separated integers, e.g. 0,4,8") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: use comma-separated integers >= 0, e.g. 0,4,8")
    return values


def cmd_data(args) -> int:
    from .data import CLIP_LENGTHS, FewShotDataset, check_dataset

    if args.data_command == "check":
        dataset = FewShotDataset.load(args.manifest)
        frames = args.frames or CLIP_LENGTHS[args.clip_length]
        problems = check_dataset(dataset, frames, args.height, args.width, need_masks=args.masks)
        for problem in problems:
            print(f"  {problem}")
        print(f"{args.manifest}: {len(dataset)} examples, "
              + (f"{len(problems)} problem(s)" if problems else f"ready for {frames}-frame clips"))
        return 1 if problems else 0
    if args.data_command == "export-official":
        path = FewShotDataset.load(args.manifest).export_official(args.json, args.composites)
        print(f"wrote {path} and composites under {args.composites}")
        return 0
    dataset = FewShotDataset.import_official(args.json, args.data_root)
    print(f"wrote {dataset.save(args.out)} ({len(dataset)} examples)")
    return 0


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of ``ffstudy train`` and ``python -m ffstudy.train`` (one list for both)."""
    parser.add_argument("--config", required=True, help="YAML file of TrainConfig settings (see configs/)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint (refused if another run's settings or data wrote it)")
    parser.add_argument("--force-resume", action="store_true",
                        help="continue from the latest checkpoint even if its settings or data differ")
    parser.add_argument("--max-steps", type=POSITIVE, help="override max_steps")
    parser.add_argument("--output-dir", help="override output_dir")
    parser.add_argument("--manifest", help="override the dataset manifest")
    return parser


def cmd_train(args) -> int:
    from .train import run

    return run(args)


def _check_shapes(state: dict, transformer) -> None:
    """Every diffusers-layout LoRA tensor must name a Linear of ``transformer`` and fit its shape: a LoRA of
    another architecture would otherwise convert, and fail (or do nothing) only when loaded."""
    import re

    problems = []
    for key, tensor in state.items():
        match = re.match(r"^transformer\.(.+)\.lora(?:_([AB])|\.(down|up))\.weight$", key)
        layer = None
        if match:
            try:
                layer = transformer.get_submodule(match.group(1))
            except AttributeError:
                pass
        if not hasattr(layer, "in_features"):
            problems.append(f"{key} names no Linear layer")
            continue
        down = match.group(2) == "A" or match.group(3) == "down"
        wanted = layer.in_features if down else layer.out_features
        if tensor.ndim != 2 or tensor.shape[1 if down else 0] != wanted:
            problems.append(f"{key} has shape {tuple(tensor.shape)}, the layer takes {layer.in_features} -> "
                            f"{layer.out_features}")
    if problems:
        raise ValueError(f"{len(problems)} tensor(s) do not fit this transformer: {problems[:3]}")


def cmd_lora(args) -> int:
    from safetensors.torch import save_file

    from .io import atomic_path
    from .lora import read_lora_file, target_module_count, to_comfyui, to_diffusers, to_official, write_official_lora
    from .models import get_backbone, load_pipeline, skeleton_transformer

    if get_backbone(args.model).transformer_config is not None and args.path is None:
        transformer = skeleton_transformer(args.model)  # module names only: nothing to download
    else:
        pipe = load_pipeline(args.model, path=args.path)
        transformer = pipe.transformer_2 if args.expert == "low" else pipe.transformer
    if Path(args.output).resolve() == Path(args.input).resolve():
        raise ValueError(f"output {args.output} is the input file: write the converted LoRA elsewhere")
    try:
        state = to_diffusers(read_lora_file(args.input), transformer,
                             expected_modules=target_module_count(transformer) if args.check_count else None)
        _check_shapes(state, transformer)
    except ValueError as error:
        raise ValueError(f"input {args.input}: {error} (for --model {args.model})") from error
    if args.to == "official":  # the official FFGo / VideoX-Fun scripts' layout, with their header
        state = to_official(state, transformer)
        write_official_lora(state, args.output)
        print(f"wrote {args.output}: {len(state)} tensors in {args.to} layout")
        return 0
    if args.to == "comfyui":
        state = to_comfyui(state, transformer)
    with atomic_path(args.output) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    print(f"wrote {args.output}: {len(state)} tensors in {args.to} layout")
    return 0


def cmd_spriteworld(args) -> int:
    if args.sw_command == "pretrain":
        from .spriteworld.pretrain import main as pretrain_main

        return pretrain_main(["--config", args.config, "--out", args.out])
    if args.sw_command == "evaluate":
        from .spriteworld.card import main as card_main

        videos = [] if args.videos is None else ["--videos", str(args.videos)]
        return card_main(["--model", args.model_dir, *videos] + (["--reuse"] if args.reuse else []))
    if args.sw_command == "fewshot":
        from .spriteworld.fewshot import write_fewshot_dataset

        manifest = write_fewshot_dataset(args.out, args.examples, args.seed)
        print(f"wrote {args.examples} FFGo examples: {manifest}")
        return 0
    from .spriteworld.fewshot import write_clip
    from .spriteworld.world import generate_clip

    clip = generate_clip(args.seed, cut=args.cut)
    write_clip(clip, args.out)
    print(f"seed {args.seed}: {clip.caption}")
    print(f"wrote {args.out}/video.mp4, cut-outs, background.png, masks.npz and clip.json")
    return 0


def cmd_models(args) -> int:
    from .models import list_backbones

    for spec in list_backbones():
        h, w = spec.default_size
        print(f"{spec.name:<22} {w}x{h} x{spec.default_frames:<3} {spec.description}")
    return 0


def cmd_download(args) -> int:
    from .download import download

    download(args.name, args.to, dry_run=args.dry_run)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ffstudy", description="FFGo: compose a first frame of references, "
                                     "generate a video from it, and look inside the model.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compose", help="compose an FFGo first frame from cut-outs and a background plate",
                       description="Cut-outs go on the left (stacked, first on top), the plate on the right of a "
                                   "white canvas. Writes composite.png, labels.png and composite.json (entity boxes).")
    _add_compose_args(p, required=True)
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.set_defaults(func=cmd_compose)

    p = sub.add_parser("generate", help="generate an FFGo video from a composite first frame",
                       description="Prefixes the trigger phrase, samples with the paper's settings, drops the first "
                                   "4 frames and writes video.mp4 (16 fps), composite.png and generation.json.")
    _add_first_frame_args(p)
    _add_generate_args(p, default_model=None)
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("demo", help="compose the bundled references and generate a video (CPU, seconds)",
                       description="Composes data/references/{red_star,blue_ring}.png over "
                                   "data/backgrounds/meadow.png and generates a video with SpriteWorld and its "
                                   "shipped FFGo LoRA (data/models/spriteworld-ffgo-lora), or --model/--lora.")
    _add_generate_args(p, default_model="spriteworld")
    p.add_argument("--out", "-o", default="outputs/demo", help="output folder (default outputs/demo)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("probe", help="generate with the attention probe installed and plot what it saw",
                       description="Records, for the conditional branch, how much each later-frame token attends "
                                   "to each first-frame entity (exact softmax mass), and how much it attends to "
                                   "the trigger phrase. Writes probe/ (arrays + records), retrieval_curves.png, "
                                   "who_retrieves_what.png/.mp4, reverse_maps.png and the video.")
    _add_first_frame_args(p)
    _add_generate_args(p, default_model="spriteworld")
    p.add_argument("--blocks", type=_ints, help="blocks to probe, e.g. 0,4,8 (default: all up to 8, else every 4th)")
    p.add_argument("--probe-steps", type=_ints, help="denoising steps to record (default: 6 spread over the run)")
    p.add_argument("--per-head", action="store_true", help="also keep per-head masses")
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("data", help="few-shot dataset tools: check, export/import the official FFGo JSON")
    data = p.add_subparsers(dest="data_command", required=True)
    q = data.add_parser("check", help="list every problem of a dataset before training",
                        description="Checks files, readability, clip length, sizes, duplicate ids, captions and "
                                    "entity masks.")
    q.add_argument("manifest")
    q.add_argument("--clip-length", choices=("official", "paper"), default="official")
    q.add_argument("--frames", type=POSITIVE, help="frames each clip needs (overrides --clip-length)")
    q.add_argument("--height", type=POSITIVE)
    q.add_argument("--width", type=POSITIVE)
    q.add_argument("--masks", action="store_true", help="require entity masks (for entity_loss_weight > 0)")
    q = data.add_parser("export-official", help="write the VideoX-Fun JSON and composites")
    q.add_argument("manifest")
    q.add_argument("--json", required=True)
    q.add_argument("--composites", required=True, help="folder for the composite PNGs")
    q = data.add_parser("import-official", help="read a VideoX-Fun JSON into an ffstudy manifest")
    q.add_argument("json")
    q.add_argument("--data-root", help="folder that relative file_path entries start from")
    q.add_argument("--out", required=True, help="manifest to write")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="train an FFGo LoRA from a YAML config (see configs/)",
                       description="Same as python -m ffstudy.train; for several processes use "
                                   "accelerate launch --multi_gpu --num_processes N -m ffstudy.train.")
    add_train_arguments(p).set_defaults(func=cmd_train)

    p = sub.add_parser("lora", help="convert a LoRA between kohya/VideoX-Fun, ComfyUI and diffusers layouts")
    p.add_argument("input", help="a .safetensors LoRA in any supported layout")
    p.add_argument("output", help="the .safetensors file to write")
    p.add_argument("--to", choices=("diffusers", "comfyui", "official"), default="diffusers",
                   help="official: the kohya layout the official FFGo / VideoX-Fun scripts merge (bf16)")
    p.add_argument("--model", default="wan2.2-i2v-a14b", help="backbone whose module names the LoRA uses")
    p.add_argument("--path", help="local folder of that backbone")
    p.add_argument("--expert", choices=("high", "low"), default="high")
    p.add_argument("--check-count", action="store_true",
                   help="require one LoRA module per FFGo target (401 per Wan 14B expert)")
    p.set_defaults(func=cmd_lora)

    p = sub.add_parser("spriteworld", help="the procedural video world and its pretrained model")
    sw = p.add_subparsers(dest="sw_command", required=True)
    q = sw.add_parser("generate", help="render one clip with its ground truth and FFGo materials")
    q.add_argument("--seed", type=SEED, default=0)
    q.add_argument("--cut", action="store_true", default=None, help="force a hard scene cut")
    q.add_argument("--out", "-o", required=True)
    q = sw.add_parser("fewshot", help="write a few-shot FFGo dataset of SpriteWorld clips")
    q.add_argument("--examples", type=POSITIVE, default=20)
    q.add_argument("--seed", type=SEED, default=2_000_000, help="first seed (default: the few-shot range)")
    q.add_argument("--out", "-o", required=True)
    q = sw.add_parser("pretrain", help="pretrain the SpriteWorld I2V model (VAE, then transformer)")
    q.add_argument("--config", default="configs/spriteworld-pretrain.yaml")
    q.add_argument("--out", default="data/models/spriteworld-i2v")
    q = sw.add_parser("evaluate", help="measure the model on held-out seeds and write its model card")
    q.add_argument("--model-dir", default="data/models/spriteworld-i2v")
    q.add_argument("--videos", type=POSITIVE, help="held-out clips to generate from (default: the card's number)")
    q.add_argument("--reuse", action="store_true", help="re-render the card from the saved evaluation.json")
    p.set_defaults(func=cmd_spriteworld)

    p = sub.add_parser("models", help="list the registered backbones")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("download", help="download real weights (Wan models, the official FFGo LoRAs): sizes first",
                       description="Lists the files and their sizes, refuses when the disk cannot hold them, then "
                                   "downloads. Names: wan2.2-i2v-a14b, wan2.2-ti2v-5b, wan2.1-i2v-14b-480p, "
                                   "ffgo-lora (the official LoRAs for Wan2.2-I2V-A14B).")
    p.add_argument("name", help="what to download: a backbone name or ffgo-lora")
    p.add_argument("--to", required=True, help="the folder to download into (load it with path=...)")
    p.add_argument("--dry-run", action="store_true", help="print the files, sizes and free space; fetch nothing")
    p.set_defaults(func=cmd_download)
    return parser


_OS_ADVICE = {errno.EACCES: "check its permissions or choose another path",
              errno.EPERM: "check its permissions or choose another path",
              errno.EROFS: "the file system is read-only: choose another path",
              errno.ENOSPC: "free some disk space or write elsewhere",
              errno.EDQUOT: "free some of your disk quota or write elsewhere",
              errno.EFBIG: "the file exceeds this system's file size limit (ulimit -f): raise it or write elsewhere",
              errno.EEXIST: "remove it or choose another path",
              errno.ENOTDIR: "a part of this path is a file, not a folder",
              errno.EISDIR: "this is a folder: give a file",
              errno.ENOENT: "check the path"}


def _describe(error: BaseException) -> str:
    """An error in a few lines at most, naming the file and, for OS errors, saying what to do."""
    if isinstance(error, OSError) and error.errno is not None and error.strerror:
        where = " -> ".join(str(f) for f in (error.filename, error.filename2) if f is not None)
        advice = _OS_ADVICE.get(error.errno)
        return f"{where + ': ' if where else ''}{error.strerror}" + (f"; {advice}" if advice else "")
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)  # KeyError quotes
    lines = [line.strip() for line in text.splitlines() if line.strip()] or [type(error).__name__]
    # one line: torch lists every mismatched tensor, YAML draws the line it failed on
    return " ".join(lines[:2]) + (f" (and {len(lines) - 2} more lines)" if len(lines) > 2 else "")


def _expected_errors() -> tuple[type[BaseException], ...]:
    """What bad input or a bad environment raises: reported in a line and exit code 2, never a traceback."""
    import yaml
    from PIL import Image
    from safetensors import SafetensorError

    return (OSError, ValueError, KeyError, RuntimeError, SafetensorError, yaml.YAMLError,
            Image.DecompressionBombError)


def _exit_on_sigterm(signum, frame) -> None:
    """SIGTERM (kill, a scheduler's time limit) unwinds like Ctrl-C, so temporary files and the output folder's
    lock are removed on the way out instead of left for the next run."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return args.func(args)
    except _expected_errors() as error:
        print(f"ffstudy {args.command}: error: {_describe(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
