import json

import numpy as np
import pytest
import torch

from ffstudy.data import (FewShotDataset, LatentCache, check_dataset, clip_key, encode_clip, resize_cover,
                          video_frames, video_tensor)
from ffstudy.generate import TRIGGER
from ffstudy.io import read_video

from .fewshot import make_dataset


@pytest.fixture
def dataset(tmp_path):
    return FewShotDataset.load(make_dataset(tmp_path / "ds"))


def test_training_clip_replaces_the_first_four_frames_with_the_composite(dataset):
    example = dataset[0]
    clip = dataset.training_clip(example, 64, 112, clip_length=13)
    video, _ = read_video(dataset.path(example.video))
    assert clip.frames.shape == (13, 64, 112, 3)
    composite = np.asarray(clip.first_frame.image)
    assert all(np.array_equal(clip.frames[i], composite) for i in range(4))
    assert np.array_equal(clip.frames[4:], video[4:13])  # same size: no resampling
    assert clip.prompt == f"{TRIGGER} {example.caption}"
    assert clip.first_frame.box("background").x0 > 0  # geometry travels with the fitted composite


def test_clip_lengths_are_documented_settings(dataset):
    with pytest.raises(ValueError, match="has 17 frames, the clip needs 21"):
        dataset.training_clip(dataset[0], 64, 112, clip_length="official")
    with pytest.raises(ValueError, match="clip_length='long'"):
        dataset.training_clip(dataset[0], 64, 112, clip_length="long")


def test_resize_cover_keeps_aspect_and_crops_the_centre():
    frames = np.zeros((2, 40, 80, 3), np.uint8)
    frames[:, :, 30:50] = 255  # a white band in the middle
    out = resize_cover(frames, 40, 40)
    assert out.shape == (2, 40, 40, 3) and out[0, 20, 20, 0] == 255 and out[0, 20, 2, 0] == 0


def test_manifest_and_official_json_round_trip(dataset, tmp_path):
    again = FewShotDataset.load(dataset.save(tmp_path / "elsewhere" / "copy.json"))
    assert [again.path(e.video).resolve() for e in again] == [dataset.path(e.video).resolve() for e in dataset]
    assert [e.caption for e in again] == [e.caption for e in dataset] and again.clip_geometry == "letterbox"
    official = dataset.export_official(tmp_path / "train.json", tmp_path / "combined")
    rows = json.loads(official.read_text())
    assert rows[0]["type"] == "video" and rows[0]["text"] == f"{TRIGGER} {dataset[0].caption}"
    assert rows[0]["image_path"].endswith("clip_000/combined.png")
    imported = FewShotDataset.import_official(official)
    assert [e.caption for e in imported] == [r["text"] for r in rows] and imported.clip_geometry == "official"
    clip = imported.training_clip(imported[0], 64, 112, clip_length=9)
    assert clip.prompt.count("ad23r2") == 1 and clip.frames.shape == (9, 64, 112, 3)
    kept = FewShotDataset.load(imported.save(tmp_path / "imported.json"))
    assert kept.clip_geometry == "official" and kept[0].caption == rows[0]["text"]
    with pytest.raises(ValueError, match="not an official FFGo JSON"):
        (tmp_path / "bad.json").write_text('{"a": 1}')
        FewShotDataset.import_official(tmp_path / "bad.json")


def test_official_json_import_reads_paths_and_rows_as_videox_fun_does(dataset, tmp_path, monkeypatch):
    workdir = tmp_path / "work"
    (workdir / "frames").mkdir(parents=True)
    (workdir / "frames" / "c0.png").write_bytes(dataset.path(dataset[0].background).read_bytes())
    text = f"{TRIGGER}  A ball, the provided image’s red one,  rolls."  # two spaces after the trigger
    rows = [{"file_path": "clip_000/video.mp4", "text": text, "image_path": "frames/c0.png", "type": "video"}]
    (tmp_path / "train.json").write_text(json.dumps(rows, ensure_ascii=False))
    monkeypatch.chdir(workdir)  # VideoX-Fun opens image_path as given: from the working directory
    imported = FewShotDataset.import_official(tmp_path / "train.json", data_root=dataset.root)
    assert imported[0].composite == str(workdir / "frames" / "c0.png")
    assert imported[0].video == str(dataset.root / "clip_000" / "video.mp4")
    assert imported[0].caption == text
    exported = imported.export_official(tmp_path / "out.json", tmp_path / "combined")
    assert json.loads(exported.read_text())[0]["text"].encode() == text.encode()  # byte for byte
    monkeypatch.chdir(tmp_path)  # without data_root, file_path is relative to the working directory too
    assert FewShotDataset.import_official(tmp_path / "train.json")[0].video == str(tmp_path / "clip_000/video.mp4")
    rows += [{"file_path": "a.png", "text": "x", "image_path": "a.png"},
             {"file_path": "b.png", "text": "y", "image_path": "b.png", "type": "image"}]
    (tmp_path / "mixed.json").write_text(json.dumps(rows))
    with pytest.raises(ValueError) as info:
        FewShotDataset.import_official(tmp_path / "mixed.json")
    message = str(info.value)
    assert 'row 1 (a.png): no "type" (VideoX-Fun reads it as an image)' in message
    assert "row 2 (b.png): type 'image'" in message and "row 0" not in message


def test_official_geometry_cover_crops_the_whole_clip_at_768x1344(cutout, plate):
    from ffstudy.compose import compose_first_frame
    from ffstudy.data import official_clip, official_resize
    from ffstudy.generate import fit_first_frame

    comp = compose_first_frame([cutout], plate)  # 1280x720
    video = np.random.default_rng(0).integers(0, 256, (5, 720, 1280, 3), dtype=np.uint8)
    frames, first = official_clip(video, comp, 4, 768, 1344)
    assert frames.shape == (5, 768, 1344, 3)
    assert all(np.array_equal(frames[i], np.asarray(first.image)) for i in range(4))
    assert np.array_equal(frames[4:], resize_cover(video[4:], 768, 1344))  # 16:9 video: the same cover crop
    letterboxed = fit_first_frame(comp, 768, 1344)
    assert np.asarray(letterboxed.image)[:6].min() == 255  # ffstudy: white bars (6 px) above and below
    box = first.box("background")  # official: 1280 -> 1365 wide, 10 px cut on the left; 720 -> 768 high
    assert (box.x0, box.y0, box.x1, box.y1) == (682 - 10, 192, 1344, 576)  # 640 x 1365 / 1280 = 682.5
    lb = letterboxed.box("background")  # scale 1.05, 6 px bar on top
    assert (lb.x0, lb.y0, lb.x1, lb.y1) == (672, 195, 1344, 573)
    assert np.array_equal(np.asarray(first.image)[300, 700], plate.getpixel((100, 100)))
    assert first.labels.shape == (768, 1344) and first.labels[300, 700] == first.names.index("background") + 1
    tall = np.zeros((1, 480, 640, 3), np.uint8)  # 4:3: official squashes it to 16:9 first, ffstudy crops it
    tall[:, :40] = 255
    assert official_resize(tall, 768, 1344)[0][0, 0].min() == 255
    assert resize_cover(tall, 768, 1344)[0, 0].max() == 0


def test_training_clips_and_masks_follow_the_datasets_geometry(tmp_path):
    masked = FewShotDataset.load(make_dataset(tmp_path / "masked", masks=True))
    letterbox = masked.training_clip(masked[0], 64, 96, 9)
    masked.clip_geometry = "official"
    official = masked.training_clip(masked[0], 64, 96, 9)
    assert official.frames.shape == letterbox.frames.shape == (9, 64, 96, 3)
    assert np.array_equal(official.frames[0], np.asarray(official.first_frame.image))
    box = official.first_frame.box("background")  # 1280x720 -> 113x64 (cover), 8 px cut on the left
    assert (box.x0, box.y0, box.x1, box.y1) == (48, 16, 96, 48)
    assert letterbox.first_frame.box("background") != box
    masks = masked.entity_masks(masked[0], 64, 96, 9)
    assert masks[8].any() and np.array_equal(masks[8], official_mask(masked, 64, 96))
    keys = {clip_key(masked, masked[0], {"height": 64})}
    masked.clip_geometry = "letterbox"
    assert clip_key(masked, masked[0], {"height": 64}) not in keys
    with pytest.raises(ValueError, match="clip_geometry='crop'"):
        FewShotDataset([], tmp_path, clip_geometry="crop")


def official_mask(dataset, height, width):
    """The ball's mask in frame 8, through the official geometry (nearest neighbour)."""
    from ffstudy.data import official_resize, read_masks

    masks = read_masks(dataset.path(dataset[0].masks), dataset[0].id)[8:9, ..., None]
    return official_resize((masks > 0).astype(np.uint8), height, width, nearest=True)[0][0, ..., 0] > 0


def test_data_check_lists_every_problem(dataset, tmp_path):
    assert check_dataset(dataset, 17, 64, 112) == []
    e = dataset.examples
    e[1].id = e[0].id
    e[1].caption = "  "
    e[2].cutouts = ["clip_002/missing.png"]
    (tmp_path / "ds" / "clip_000" / "video.mp4").write_bytes(b"garbage")
    problems = check_dataset(dataset, 17, 128, 224)
    text = "\n".join(problems)
    assert "duplicate id 'clip_000'" in text
    assert "empty caption" in text
    assert "missing.png" in text
    assert "clip_000/video.mp4 is not a readable video" in text
    assert "smaller than the training size 224x128" in text
    assert any("clip_002" in p and "smaller" in p for p in problems)
    assert len(check_dataset(dataset, 40)) >= 2  # too short: every readable video named


def test_entity_masks_are_cropped_like_the_clip_and_checked(tmp_path):
    masked = FewShotDataset.load(make_dataset(tmp_path / "masked", masks=True))
    again = FewShotDataset.load(masked.save(tmp_path / "moved" / "copy.json"))
    assert again.path(again[0].masks).resolve() == masked.path(masked[0].masks).resolve()
    masks = masked.entity_masks(masked[0], 64, 112, 13)
    assert masks.shape == (13, 64, 112) and masks.dtype == bool
    assert not masks[:4].any()  # the composite frames: inference drops them
    assert np.array_equal(np.argwhere(masks[8]).min(0), [20, 42]) and np.array_equal(np.argwhere(masks[8]).max(0),
                                                                                      [39, 61])
    half = masked.entity_masks(masked[0], 32, 56, 13)  # half size, nearest neighbour: the ball's box halves
    assert np.array_equal(np.argwhere(half[8]).min(0), [10, 21]) and np.array_equal(np.argwhere(half[8]).max(0),
                                                                                    [19, 30])
    assert check_dataset(masked, 17, 64, 112, need_masks=True) == []
    plain = FewShotDataset.load(make_dataset(tmp_path / "plain"))
    assert all("no entity masks given" in p for p in check_dataset(plain, 17, need_masks=True))
    with pytest.raises(ValueError, match="'clip_000' names no entity masks"):
        plain.entity_masks(plain[0], 64, 112, 13)
    np.savez(tmp_path / "masked" / "clip_001" / "masks.npz", masks=np.zeros((17, 32, 32), np.uint8))
    (tmp_path / "masked" / "clip_002" / "masks.npz").write_bytes(b"garbage")
    problems = check_dataset(masked, 17, need_masks=True)
    assert len(problems) == 2 and "shape (17, 32, 32)" in problems[0] and "clip_002" in problems[1]
    assert "not an .npz with a 'masks' array" in problems[1]


def test_cli_data_check(dataset, tmp_path, capsys):
    from ffstudy.cli import main

    manifest = dataset.save(tmp_path / "m.json")
    assert main(["data", "check", str(manifest), "--frames", "17"]) == 0
    dataset.examples[0].video = "nowhere.mp4"
    bad = dataset.save(tmp_path / "bad.json")
    assert main(["data", "check", str(bad), "--frames", "40"]) == 1
    out = capsys.readouterr().out
    assert "nowhere.mp4" in out and "has 17 frames, training needs 40" in out
    assert main(["data", "check", str(manifest), "--frames", "17", "--masks"]) == 1
    assert "clip_000): no entity masks given" in capsys.readouterr().out


def test_the_encoder_fingerprint_changes_with_any_encoder_weight(tiny_pipe):
    """The latent cache's key carries it: a cache must not outlive new VAE or text-encoder weights under the same
    model name."""
    from ffstudy.data import encoder_fingerprint

    pipe = tiny_pipe()
    first = encoder_fingerprint(pipe)
    assert first == encoder_fingerprint(pipe) and len(first) == 16
    for module in (pipe.vae, pipe.text_encoder):
        weight = next(module.parameters())
        kept = weight.detach().clone()
        with torch.no_grad():
            weight[(0,) * weight.dim()] += 0.5
            changed = encoder_fingerprint(pipe)
            weight.copy_(kept)
        assert changed != first
    assert encoder_fingerprint(pipe) == first


def test_latent_cache_is_keyed_by_content(dataset, tiny_pipe, tmp_path):
    pipe = tiny_pipe()
    settings = {"height": 64, "width": 112, "clip_length": 9}
    key = clip_key(dataset, dataset[0], settings)
    assert key == clip_key(dataset, dataset[0], settings)
    assert key != clip_key(dataset, dataset[1], settings)
    assert key != clip_key(dataset, dataset[0], {**settings, "height": 32})
    calls = []

    def compute():
        calls.append(1)
        return encode_clip(pipe, dataset.training_clip(dataset[0], 64, 112, 9))

    cache = LatentCache(tmp_path / "cache")
    first = cache.get(key, compute)
    second = cache.get(key, compute)
    assert len(calls) == 1 and first.keys() == second.keys()
    assert first["latent_mean"].shape == (1, 16, 3, 8, 14)
    assert first["condition"].shape == (1, 20, 3, 8, 14)  # 4 mask channels + 16 first-frame latents
    assert first["condition"][0, :4, 0].eq(1).all() and first["condition"][0, :4, 1:].eq(0).all()
    assert first["prompt_embeds"].shape[1] == 512


def test_video_tensor_is_the_vae_input_range_and_video_frames_inverts_it():
    frames = np.random.default_rng(0).integers(0, 256, (5, 8, 12, 3), dtype=np.uint8)
    video = video_tensor(frames)
    assert video.shape == (3, 5, 8, 12) and video.min() >= -1 and video.max() <= 1
    assert np.array_equal(video_frames(video), frames)
    assert video_frames(video.clamp(min=0) + 2).min() == 255 and video_frames(video.clamp(max=0) - 2).max() == 0
