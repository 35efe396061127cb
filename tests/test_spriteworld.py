import numpy as np
import pytest
import torch

from ffstudy.compose import compose_first_frame
from ffstudy.probe import ProbeResult
from ffstudy.spriteworld import COLOURS, WorldConfig, generate_clip
from ffstudy.spriteworld.metrics import (blurred, clip_fidelity, colour_mask, find_sprite, first_frame_entities,
                                         masked_psnr, melt_sprites, psnr, retrieval_accuracy, shape_iou,
                                         share_interval, solidity, sprite_motions, sprite_template, sprites_as_discs,
                                         sprites_found, sprites_kept, token_labels)


def test_world_is_deterministic_by_seed():
    a, b, c = generate_clip(7), generate_clip(7), generate_clip(8)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.masks, b.masks) and a.caption == b.caption
    assert not np.array_equal(a.frames, c.frames)
    assert a.frames.shape == (17, 96, 160, 3) and a.masks.shape == (17, 96, 160)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_masks_match_frames(seed):
    clip = generate_clip(seed, cut=False)
    plate = np.asarray(clip.background)
    for k, sprite in enumerate(clip.sprites):
        inside = clip.masks == k + 1
        assert inside[0].any(), "every sprite is visible in the first frame"
        assert colour_mask(clip.frames[inside][None], sprite.colour).mean() > 0.9
    outside = clip.masks == 0
    assert np.mean(np.all(clip.frames[outside] == np.broadcast_to(plate, clip.frames.shape)[outside], -1)) > 0.95


def test_caption_names_every_entity_and_the_scene():
    clip = generate_clip(11, cut=True)
    for sprite in clip.sprites:
        assert sprite.name in clip.caption and sprite.colour in COLOURS
    assert clip.cut_frame is not None and "then the view cuts to" in clip.caption
    before, after = clip.frames[clip.cut_frame - 1], clip.frames[clip.cut_frame]
    assert psnr(before, after) < 20  # a different scene
    after = sprites_found(clip.frames, clip, clip.cut_frame)  # the same sprites reappear, whole
    assert all(found is not None for found in after)
    before = sprites_found(clip.frames, clip, clip.cut_frame - 1)
    assert any(np.hypot(*np.subtract(a["centroid"], b["centroid"])) > 5 for a, b in zip(after, before))


def test_cutouts_and_plate_compose_like_ffgo_materials():
    clip = generate_clip(5)
    assert all(c.mode == "RGBA" and c.getpixel((0, 0))[3] == 0 for c in clip.cutouts)
    comp = compose_first_frame(clip.cutouts, clip.background)
    assert len(comp.objects) == len(clip.sprites)


def test_a_sprite_is_found_only_as_an_object_of_its_shape_and_size():
    clip = generate_clip(3, cut=False, num_sprites=2)
    assert sprites_kept(clip.frames, clip)
    erased = clip.frames.copy()
    erased[-1][clip.masks[-1] == 1] = np.asarray(clip.background)[clip.masks[-1] == 1]
    assert sprites_found(erased, clip)[0] is None and not sprites_kept(erased, clip)
    sprite = clip.sprites[0]
    scattered = np.array(np.asarray(clip.background)[None].repeat(1, 0))  # its colour pixels, scattered
    spots = np.random.default_rng(0).random(scattered.shape[1:3]) < 0.15
    scattered[0][spots] = COLOURS[sprite.colour]
    assert colour_mask(scattered[0], sprite.colour).sum() > sprite_template(sprite, sprite.size).sum()
    assert find_sprite(scattered[0], sprite) is None
    blob = np.array(np.asarray(clip.background))  # a blob of its colour with its area but not its shape
    side = int(np.sqrt(sprite_template(sprite, sprite.size).sum()))
    blob[10:10 + side // 3, 10:10 + 3 * side] = COLOURS[sprite.colour]
    assert find_sprite(blob, sprite) is None


def test_shape_iou_aligns_centroids():
    square = np.zeros((30, 30), bool)
    square[5:15, 5:15] = True
    assert shape_iou(square, np.roll(square, (9, 7), (0, 1))) == 1.0
    bar = np.zeros((30, 30), bool)
    bar[5:7, 0:30] = True
    assert shape_iou(square, bar) < 0.2


def test_an_occluded_shrinking_sprite_is_found_at_its_size_in_each_frame():
    """Held-out seed 1,000,000: the dotted orange diamond shrinks from 1.3 to 0.7 of its size and starts half
    hidden behind the triangle in front of it, cut in two: found in the first and the last frame all the same."""
    clip = generate_clip(1_000_000, cut=False)
    k = next(i for i, s in enumerate(clip.sprites) if s.motion == "shrink")
    assert sprites_found(clip.frames, clip, 0)[k] is not None and sprites_found(clip.frames, clip)[k] is not None
    assert find_sprite(clip.frames[-1], clip.sprites[k]) is None  # at its nominal size it is too small
    assert sprite_motions(clip.frames, clip)[k]["moved"]  # it shrank


def test_motion_reads_the_caption_direction():
    clip = generate_clip(1_000_002, cut=False)
    drifting = [m["direction_ok"] for m in sprite_motions(clip.frames, clip) if m["direction_ok"] is not None]
    assert drifting and all(drifting)
    backwards = [m["direction_ok"] for m in sprite_motions(clip.frames[::-1], clip) if m["direction_ok"] is not None]
    assert not any(backwards)


def test_clip_fidelity_of_the_real_clip_and_a_frozen_one():
    clip = generate_clip(1_000_001, cut=False)
    real = clip_fidelity(clip.frames, clip)
    assert real["frame0_psnr"] == real["scene_psnr"] == 99.0 and real["sharpness_ratio"] == 1.0
    assert real["kept"] and real["animated"]
    frozen = clip_fidelity(np.repeat(clip.frames[:1], len(clip.frames), 0), clip)
    assert frozen["frame0_psnr"] == 99.0 and not frozen["animated"]


def test_psnr_known_values():
    a = np.zeros((4, 4, 3), np.uint8)
    assert psnr(a, a) == float("inf")
    assert psnr(a, a + 1) == pytest.approx(48.13, abs=0.01)


def test_share_interval_known_values():
    """Wilson's interval in closed form at the ends (0 of n: [0, z²/(n + z²)]) and a worked value (35 of 40)."""
    assert share_interval(0.0, 10) == pytest.approx((0.0, 1.96 ** 2 / (10 + 1.96 ** 2)))
    assert share_interval(1.0, 10) == pytest.approx((10 / (10 + 1.96 ** 2), 1.0))
    assert share_interval(0.875, 40) == pytest.approx((0.739, 0.945), abs=5e-4)
    low, high = share_interval(0.9, 40)
    assert low < 0.875 < high  # one video either way is inside the interval
    with pytest.raises(ValueError, match="trials=0"):
        share_interval(0.5, 0)
    with pytest.raises(ValueError, match="share=1.5"):
        share_interval(1.5, 40)


def test_masked_psnr_separates_sprite_and_scene_errors():
    clip = generate_clip(2, cut=False)
    damaged = clip.frames.copy()
    damaged[clip.masks > 0] = 128  # sprites greyed out, scene untouched
    assert masked_psnr(clip.frames, damaged, clip.masks == 0) == float("inf")
    assert masked_psnr(clip.frames, damaged, clip.masks > 0) < 15
    with pytest.raises(ValueError, match="no pixels"):
        masked_psnr(clip.frames, damaged, np.zeros(clip.masks.shape, bool))


def test_token_labels_and_retrieval_accuracy_on_a_hand_made_result():
    clip = generate_clip(4, cut=False, num_sprites=2)
    comp = first_frame_entities(clip)
    assert comp.names == [s.name for s in clip.sprites] + ["background", "white"]
    labels = token_labels(clip.masks[4], 6, 10)
    assert set(np.unique(labels)) <= {0, 1, 2}
    f, h, w = 5, 6, 10
    truth = np.stack([token_labels(clip.masks[4 * t], h, w) for t in range(1, f)]).reshape(f - 1, h * w)
    right = np.zeros((1, f - 1, h * w, 4), np.float32)
    right[0, np.arange(f - 1)[:, None], np.arange(h * w)[None], np.clip(truth - 1, 0, None)] = 1.0
    result = ProbeResult((f, h, w), comp.names, [{"block": 0, "step": 0, "expert": "main", "timestep": 1.0}], right,
                         np.zeros((1, f - 1, h * w), np.float32))
    assert retrieval_accuracy(result, clip) == {0: 1.0}
    result.entity_mass = right[..., [1, 0, 2, 3]]  # swap the two sprites: every covered token is wrong
    assert retrieval_accuracy(result, clip) == {0: 0.0}
    # attention spread over the whole first frame, twice as dense on the token's own sprite: the background still
    # gets the most total mass (it is most of the frame), but per token of area the right sprite wins
    area = np.array([comp.masks(h, w)[name].sum() for name in comp.names])
    assert area[2] > 2 * area[:2].max()
    dense = np.broadcast_to(area, right.shape) * (1 + right)
    result.entity_mass = (dense / dense.sum(-1, keepdims=True)).astype(np.float32)
    assert retrieval_accuracy(result, clip) == {0: 0.0}
    assert retrieval_accuracy(result, clip, per="token") == {0: 1.0}
    with pytest.raises(ValueError, match="per="):
        retrieval_accuracy(result, clip, per="pixel")
    # per head: head 0 retrieves right, head 1 has the sprites swapped; the mean over heads is what entity_mass holds
    with pytest.raises(ValueError, match="per_head=True"):
        retrieval_accuracy(result, clip, head=0)
    result.head_entity_mass = np.stack([right, right[..., [1, 0, 2, 3]]], axis=1)
    result.entity_mass = result.head_entity_mass.mean(1)
    assert retrieval_accuracy(result, clip, head=0) == {0: 1.0}
    assert retrieval_accuracy(result, clip, head=1) == {0: 0.0}
    with pytest.raises(ValueError, match="heads 0–1"):
        retrieval_accuracy(result, clip, head=2)


def test_cli_writes_a_clip_and_a_fewshot_dataset(tmp_path, capsys):
    from ffstudy.cli import main
    from ffstudy.data import FewShotDataset, check_dataset

    assert main(["spriteworld", "generate", "--seed", "3", "--cut", "-o", str(tmp_path / "clip")]) == 0
    assert "then the view cuts to" in capsys.readouterr().out
    assert np.load(tmp_path / "clip" / "masks.npz")["masks"].shape == (17, 96, 160)
    assert main(["spriteworld", "fewshot", "--examples", "3", "-o", str(tmp_path / "fs")]) == 0
    dataset = FewShotDataset.load(tmp_path / "fs" / "manifest.json")
    assert len(dataset) == 3 and check_dataset(dataset, 17, 96, 160, need_masks=True) == []
    masks = dataset.entity_masks(dataset[0], 96, 160, 17)  # the masks of the few-shot clips, for the weighted loss
    assert not masks[:4].any() and masks[4:].any(axis=(1, 2)).all()
    clip = dataset.training_clip(dataset[0], 96, 160, 17)
    assert clip.prompt.startswith("ad23r2 the camera view suddenly changes. a")


def test_experiment_measure_separates_the_scene_from_an_animated_collage():
    from ffstudy.generate import fit_first_frame
    from ffstudy.spriteworld.experiment import measure

    clip = generate_clip(21, cut=False, num_sprites=2)
    collage = np.asarray(fit_first_frame(compose_first_frame(clip.cutouts, clip.background), 96, 160).image)
    good = measure(clip.frames[4:], clip)
    assert good["retention"] and good["clean"] and good["final_in_scene"] and good["background_psnr"] > 25
    stuck = measure(np.repeat(collage[None], 13, 0), clip)
    assert not stuck["retention"] and not stuck["clean"] and not stuck["final_in_scene"]


@pytest.fixture(scope="module")
def shipped_vae():
    from ffstudy.models import load_pipeline

    return load_pipeline("spriteworld").vae


def test_controls_pass_and_fail_every_plain_image_to_video_measure(shipped_vae):
    """The controls the card prints, on 6 held-out clips: real clips pass every measure; decoded N(0, 1) latents
    fail every one (frame 0, scene, sharpness, sprites); the first frame held still fails the animation; sprites
    melted or painted as discs are no objects. The VAE round trip keeps frame 0 and the scene (how many sprites it
    keeps whole is the VAE's quality, which the card reports, not the metric's)."""
    from ffstudy.spriteworld.evaluate import FRAME0_GOAL_DB, control_metrics

    class Pipe:
        vae = shipped_vae

    rows = control_metrics(Pipe, range(1_000_000, 1_000_006))
    real, trip = rows["real clip"], rows["VAE round trip"]
    noise, frozen = rows["decoded N(0,1) latents"], rows["first frame held still"]
    assert real["kept"] == real["animated"] == real["frame0_reproduced"] == 1.0 and real["scene_psnr"] > 90
    assert trip["frame0_psnr"] > FRAME0_GOAL_DB and trip["scene_psnr"] > 30
    assert noise["kept"] == noise["animated"] == noise["frame0_reproduced"] == 0.0
    assert noise["scene_psnr"] < 20 and noise["sharpness_ratio"] > 1.5
    assert frozen["animated"] == 0.0
    assert rows["sprites melted"]["kept"] == rows["sprites as discs"]["kept"] == 0.0


def test_a_disc_is_not_a_star():
    """A disc of a sprite's colour, area and motion overlaps a star, triangle, square, diamond or ring with IoU
    0.66-0.78, above the shape threshold: the detector must still reject it, in every clip with such a sprite, and
    find the real sprites of those clips."""
    clips = [clip for clip in (generate_clip(1_000_000 + i, cut=False) for i in range(16))
             if any(s.shape != "circle" for s in clip.sprites)]
    assert len(clips) >= 12
    for clip in clips:
        assert sprites_kept(clip.frames, clip), clip.seed
        discs = sprites_as_discs(clip)
        for sprite, found in zip(clip.sprites, sprites_found(discs, clip)):
            assert found is None or sprite.shape == "circle", (clip.seed, sprite.name)
        assert not sprites_kept(discs, clip), clip.seed
    with pytest.raises(ValueError, match="cut=False"):
        sprites_as_discs(generate_clip(11, cut=True))


def test_a_slightly_blurred_sprite_is_still_its_shape():
    """The other side of the shape test: a detector that only pixel-exact renders pass would read any lossy
    decoder as losing shapes. A Gaussian blur of 0.75 px (37 dB) keeps every sprite of 20 held-out clips; 2 px
    (30 dB, rounded points) loses some."""
    clips = [generate_clip(1_000_000 + i, cut=False) for i in range(20)]
    assert all(sprites_kept(blurred(clip.frames, 0.75), clip) for clip in clips)
    assert not all(sprites_kept(blurred(clip.frames, 2.0), clip) for clip in clips)


def test_melted_sprites_are_not_objects():
    """Sprites melted into lumpy blobs of their colour and area (fragments included) — what the model drew before
    the detector checked strays and outlines — are rejected; a round blob of a plain disc's colour would pass, so
    the control is measured over clips: at most 1 in 10 of 20 held-out clips keeps every sprite."""
    clips = [generate_clip(1_000_000 + i, cut=False) for i in range(20)]
    assert all(sprites_kept(clip.frames, clip) for clip in clips[:10])
    melted = [sprites_kept(melt_sprites(clip, clip.seed), clip) for clip in clips]
    assert np.mean(melted) <= 0.1
    with pytest.raises(ValueError, match="cut=False"):
        melt_sprites(generate_clip(11, cut=True))


def test_solidity_of_solid_and_hollow_shapes():
    square, ring = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    square[5:15, 5:15] = True
    ring[5:15, 5:15] = True
    ring[7:13, 7:13] = False
    assert solidity(square) == 1.0 and solidity(ring) == pytest.approx(64 / 100)


def test_controls_pass_and_fail_the_ffgo_measures(shipped_vae):
    from ffstudy.spriteworld.experiment import control_scores
    from ffstudy.spriteworld.fewshot import HELDOUT_SEED0

    clips = [generate_clip(HELDOUT_SEED0 + i, WorldConfig(), cut=False) for i in range(4)]
    rows = control_scores(shipped_vae, clips, WorldConfig())
    assert rows["real clip"]["retention"] == rows["real clip"]["clean"] == 1.0
    for control in ("decoded N(0,1) latents", "composite held still"):
        assert rows[control]["retention"] == rows[control]["final_in_scene"] == rows[control]["clean"] == 0.0


@pytest.mark.parametrize("residual,patch", [(False, None), (True, None), (True, 2)])
def test_every_vae_layout_compresses_4x8x8_and_trains_on_what_diffusers_decodes(residual, patch, tmp_path):
    """The pretraining stages decode without diffusers' final clamp; for Wan 2.2's residual layout, with or without
    its 2x2 pixel patches, that must be exactly ``vae.decode`` before the clamp, and the VAE must save and load as a
    diffusers model."""
    from diffusers import AutoencoderKLWan

    from ffstudy.data import video_tensor
    from ffstudy.spriteworld.pretrain import PretrainConfig, build_vae, decode_unclamped

    torch.manual_seed(0)
    levels = (1, 2, 4, 4) if patch is None else (1, 2, 2)
    vae = build_vae(PretrainConfig(vae_is_residual=residual, vae_patch_size=patch, vae_dim_mult=levels)).eval()
    x = video_tensor(generate_clip(5).frames[:9, :32, :48])[None]
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mode()
        ours, theirs = decode_unclamped(vae, z), vae.decode(z).sample
    assert z.shape == (1, 16, 3, 4, 6) and ours.shape == x.shape
    assert torch.allclose(ours.clamp(-1, 1), theirs, atol=1e-6)
    vae.save_pretrained(tmp_path)
    loaded = AutoencoderKLWan.from_pretrained(tmp_path).eval()
    assert loaded.config.is_residual is residual and loaded.config.patch_size == patch
    with torch.no_grad():
        assert torch.equal(loaded.decode(z).sample, theirs)


def test_a_vae_layout_that_does_not_compress_8x_is_refused_by_name():
    from ffstudy.spriteworld.pretrain import PretrainConfig, build_vae

    with pytest.raises(ValueError, match=r"vae_dim_mult \[1, 2, 4, 4\] with vae_patch_size 2 compresses 16x"):
        build_vae(PretrainConfig(vae_patch_size=2))


def test_vae_windows_come_with_the_sprite_mask_of_the_same_pixels():
    """The VAE stage's sprite weight is only right if each window's mask is cut from the same frames and pixels."""
    from ffstudy.data import video_tensor
    from ffstudy.spriteworld.pretrain import random_windows

    clip = generate_clip(10_003)
    x, sprites = random_windows([clip], np.random.default_rng(7), 4, 9, 64)
    assert x.shape == (4, 3, 9, 64, 64) and sprites.shape == (4, 1, 9, 64, 64) and sprites.dtype == torch.bool
    draws = np.random.default_rng(7)
    for window, mask in zip(x, sprites):
        _, t0, y0, x0 = (int(draws.integers(0, n)) for n in (1, 17 - 9 + 1, 96 - 64 + 1, 160 - 64 + 1))
        crop = np.s_[t0:t0 + 9, y0:y0 + 64, x0:x0 + 64]
        assert torch.equal(window, video_tensor(clip.frames[crop]))
        assert torch.equal(mask[0], torch.from_numpy(clip.masks[crop] > 0))
    assert sprites.any()  # the clip's sprites are in view: the check above compared real masks


def test_the_vae_stage_leaves_a_point_posterior_so_sampling_it_gives_the_trained_latents():
    """The VAE trains on its posterior's mode, so its log-variance is untrained; FFGo's trainer samples the posterior,
    which must then return the mode itself (the mode is unchanged by pinning the log-variance)."""
    from ffstudy.data import video_tensor
    from ffstudy.spriteworld.pretrain import PretrainConfig, build_vae, collapse_posterior

    assert not PretrainConfig().vae_point_posterior  # the recipe before it: a model's settings default to it
    torch.manual_seed(0)
    vae = build_vae(PretrainConfig()).eval()
    x = video_tensor(generate_clip(5).frames[:5, :32, :32])[None]
    with torch.no_grad():
        before = vae.encode(x).latent_dist
        collapse_posterior(vae)
        after = vae.encode(x).latent_dist
    assert before.std.min() > 0.5  # untrained: about 1, as large as the latents
    assert torch.equal(after.mean, before.mean)
    assert torch.allclose(after.sample(torch.Generator().manual_seed(0)), after.mean, atol=1e-5)


def test_caption_dropout_swaps_whole_captions_for_the_unconditional_prompt():
    from ffstudy.spriteworld.pretrain import drop_captions

    captions, empty = torch.randn(64, 5, 3), torch.zeros(1, 5, 3)
    dropped = drop_captions(captions, empty, 0.25, torch.Generator().manual_seed(0))
    kept = (dropped == captions).flatten(1).all(1)
    assert torch.equal(dropped[~kept], torch.zeros(int((~kept).sum()), 5, 3))  # whole captions, nothing mixed
    assert 5 <= int((~kept).sum()) <= 30
    assert torch.equal(drop_captions(captions, empty, 0.0, torch.Generator()), captions)


def test_latent_entity_mask_follows_the_causal_vae_grid():
    """Latent frame 0 is pixel frame 0; latent frame i covers pixel frames 4i-3..4i; a cell is 8x8 pixels."""
    from ffstudy.data import latent_entity_mask

    masks = np.zeros((17, 32, 48), np.uint8)
    masks[0, 0, 0] = 1          # latent (0, 0, 0)
    masks[5, 9, 17] = 2         # pixel frame 5 → latent frame 2, cell (1, 2)
    masks[16, 31, 47] = 1       # last pixel frame → latent frame 4, cell (3, 5)
    mask = latent_entity_mask(masks)
    assert mask.shape == (1, 1, 5, 4, 6)
    assert {tuple(i) for i in mask[0, 0].nonzero().tolist()} == {(0, 0, 0), (2, 1, 2), (4, 3, 5)}
    clip = generate_clip(3, cut=False)  # and a real clip: the mask covers exactly the cells its sprites touch
    mask = latent_entity_mask(clip.masks)[0, 0]
    assert mask.shape == (5, 12, 20) and bool(mask[0].any()) and not bool(mask.all())
    coarse = latent_entity_mask(masks, spatial=16)  # Wan2.2-TI2V's VAE: 16x16-pixel cells
    assert {tuple(i) for i in coarse[0, 0].nonzero().tolist()} == {(0, 0, 0), (2, 0, 1), (4, 1, 2)}


def test_weighted_flow_loss():
    """Weight 1 everywhere is the unweighted ``masked_velocity_loss``; weighting the one cell with an error scales
    the loss by that cell's weight over the mean weight; errors beyond the threshold still count nothing."""
    from ffstudy.train import masked_velocity_loss

    target = torch.zeros(1, 2, 1, 2, 2)
    prediction = target.clone()
    prediction[:, :, 0, 0, 0] = 0.5
    prediction[:, 0, 0, 1, 1] = 80.0  # an outlier beyond the threshold
    ones = torch.ones(1, 1, 1, 2, 2)
    plain = masked_velocity_loss(prediction, target, 50.0)
    assert torch.isclose(masked_velocity_loss(prediction, target, 50.0, weight=ones), plain)
    weight = ones.clone()
    weight[..., 0, 0] = 5.0
    assert torch.isclose(masked_velocity_loss(prediction, target, 50.0, weight=weight), plain * 5 / (8 / 4))


def test_reconstruction_loss_weights_sprite_pixels():
    from ffstudy.spriteworld.pretrain import reconstruction_loss

    target = torch.zeros(1, 3, 1, 2, 2)
    recon = target.clone()
    recon[..., 0, 0] = 0.5  # one wrong pixel: |e| + e² = 0.75 in each of 3 channels, over 12 values
    assert torch.isclose(reconstruction_loss(recon, target), torch.tensor(0.75 / 4))
    sprite = torch.ones(1, 1, 1, 2, 2)
    assert torch.isclose(reconstruction_loss(recon, target, sprite), reconstruction_loss(recon, target))
    sprite[..., 0, 0] = 5.0  # the wrong pixel is a sprite's: its error counts 5 times
    assert torch.isclose(reconstruction_loss(recon, target, sprite), torch.tensor(5 * 0.75 / 4))
    sprite[..., 0, 0], sprite[..., 1, 1] = 1.0, 5.0  # a sprite elsewhere leaves this error as it was
    assert torch.isclose(reconstruction_loss(recon, target, sprite), reconstruction_loss(recon, target))


def test_the_transformer_can_see_its_own_share_of_scene_cuts():
    """``transformer_cut_probability`` re-renders the same seeds with another share of cuts: a clip whose cut draw
    agrees with the world's renders identically, so only cut clips change, and the VAE stages keep the world's."""
    from ffstudy.spriteworld.pretrain import PretrainConfig, transformer_world

    world = WorldConfig()
    assert transformer_world(PretrainConfig(), world) is world
    own = transformer_world(PretrainConfig(transformer_cut_probability=0.0), world)
    assert own.cut_probability == 0.0 and own.height == world.height and world.cut_probability == 0.10
    for seed in (10_000, 10_001):  # training seeds: the first does not cut in the world, the second does
        in_world, for_transformer = generate_clip(seed, world), generate_clip(seed, own)
        assert for_transformer.cut_frame is None and (in_world.cut_frame is None) == (seed == 10_000)
        assert np.array_equal(in_world.frames, for_transformer.frames) == (seed == 10_000)


def test_the_pretraining_recipe_end_to_end_in_miniature(tmp_path):
    """Pretrain → save → load offline by name → evaluate → model card that quotes the measurements."""
    import json

    from ffstudy.models import load_pipeline
    from ffstudy.spriteworld import card
    from ffstudy.spriteworld.pretrain import PretrainConfig, pretrain

    config = PretrainConfig(threads=1, vae_base_dim=8, vae_steps=2, vae_batch=1, layers=1, heads=2, head_dim=8,
                            ffn_dim=16, train_clips=3, transformer_steps=2, transformer_batch=2, decoder_steps=2,
                            decoder_batch=1, decoder_clips=2, transformer_sprite_weight=3.0,
                            decoder_sprite_weight=2.0, vae_sprite_weight=1.0, transformer_cut_probability=0.0)
    (tmp_path / "sw").mkdir()
    (tmp_path / "sw" / "README.md").write_text("the card of earlier weights")
    folder = pretrain(config, tmp_path / "sw")
    assert not (folder / "README.md").exists()  # the folder is replaced whole: no stale card beside new weights
    training = json.loads((folder / "training.json").read_text())
    assert training["config"]["train_clips"] == 3 and len((folder / "training_log.jsonl").read_text().splitlines()) == 6
    pipe = load_pipeline("spriteworld", path=folder, device="cpu")
    assert pipe.transformer.config.in_channels == 36 and len(pipe.transformer.blocks) == 1
    std = pipe.vae.config.latents_std
    assert len(std) == 16 and all(s > 0 for s in std)  # latent statistics were measured, not Wan's defaults
    assert card.main(["--model", str(folder), "--videos", "2"]) == 0
    evaluation = json.loads((folder / "evaluation.json").read_text())
    text = (folder / "README.md").read_text()
    assert f"{evaluation['vae_psnr_db']:.2f} dB" in text and "most mass per token" in text
    assert "a sprite touches weighted 4×" in text  # the card names the recipe's losses
    assert "sprite pixels weighted 3× in its L1 + L2 loss" in text
    assert "posterior mode, L1 + L2, sprite pixels weighted 2× + 1e-06·KL" in text
    assert "with probability 10% for the VAE stages and 0% for the transformer" in text
    assert f"{evaluation['vae_psnr_sprites_db']:.2f} dB / {evaluation['vae_psnr_scene_db']:.2f} dB" in text
    assert set(evaluation["vae_palette"]) == set(COLOURS) and "| red | (225, 35, 35) |" in text
    gen, controls = evaluation["generation"], evaluation["controls"]
    assert gen["guidance_scale"] == 1.0 and gen["videos"] == 2
    assert set(controls) == {"real clip", "VAE round trip", "decoded N(0,1) latents", "first frame held still",
                             "sprites melted", "sprites as discs"}
    assert controls["real clip"]["kept"] == 1.0 and controls["decoded N(0,1) latents"]["kept"] == 0.0
    low, high = share_interval(gen["kept"], gen["videos"])
    kept_row = next(line for line in text.splitlines() if line.startswith("| every first-frame sprite found"))
    assert f"| {gen['kept']:.1%} ({low:.0%}–{high:.0%}) | 100.0% (" in kept_row  # the model, then the real clips
    assert kept_row.endswith(f"| ≥ 80%: {'met' if gen['kept'] >= 0.8 else '**missed**'} |")
    assert f"| {gen['frame0_psnr']:.1f} dB |" in text and "(generated-sheet.png)" in text
    from PIL import Image
    sheet = Image.open(folder / "generated-sheet.png")
    assert sheet.size[1] == 2 * 2 * (96 + 4)  # two held-out clips, real above generated
    assert set(evaluation["probe"]["per_block"]) == set(evaluation["probe"]["per_block_per_token"]) == {"0"}


def test_a_patched_vae_recipe_without_a_decoder_stage_pretrains_and_says_so(tmp_path):
    """``decoder_steps: 0`` skips the decoder stage (a VAE stage on whole clips needs none): no decoder steps in the
    log or loss in training.json, and the card names the patched layout and says there was no decoder stage."""
    import json

    from ffstudy.models import load_pipeline
    from ffstudy.spriteworld import card
    from ffstudy.spriteworld.pretrain import PretrainConfig, pretrain

    config = PretrainConfig(threads=1, vae_base_dim=8, vae_dim_mult=(1, 2, 2), vae_patch_size=2, vae_steps=2,
                            vae_batch=1, vae_frames=17, vae_crop=64, layers=1, heads=2, head_dim=8, ffn_dim=16,
                            train_clips=3, transformer_steps=2, transformer_batch=2, decoder_steps=0)
    folder = pretrain(config, tmp_path / "sw")
    training = json.loads((folder / "training.json").read_text())
    stages = [json.loads(line)["stage"] for line in (folder / "training_log.jsonl").read_text().splitlines()]
    assert stages == ["vae"] * 2 + ["transformer"] * 2
    assert set(training["final_losses"]) == {"vae", "transformer"} and "decoder_seconds" not in training["timings"]
    assert load_pipeline("spriteworld", path=folder, device="cpu").vae.config.patch_size == 2
    assert card.main(["--model", str(folder), "--videos", "2"]) == 0
    text = (folder / "README.md").read_text()
    assert "base_dim 8, dim_mult [1,2,2] on 2×2 pixel patches, z 16" in text
    assert "; no decoder stage (`decoder_steps: 0`)." in text and "decoder 0." not in text


def test_the_plain_group_autoencoder_has_the_wan_vaes_latent_budget():
    """recipes/spriteworld/vae_budget.py compares the VAE with plain autoencoders of the same budget: 17 frames must become
    5 latent frames of 16 channels at 1/8 size (frame 0 alone, then groups of 4), decoded back to 17 frames, and a
    group must be decoded from its own latent frame and the one before, never a later one."""
    from recipes.spriteworld.vae_budget import GroupAutoencoder

    torch.manual_seed(0)
    model = GroupAutoencoder(8)
    video = torch.rand(1, 3, 17, 16, 24) * 2 - 1
    latent = model.encode_first(video[:, :, 0])
    assert latent.shape == (1, 16, 2, 3)
    out = model(video)
    assert out.shape == video.shape
    later = video.clone()
    later[:, :, 13:] = 0  # only the last group changes: everything before it must decode the same
    assert torch.equal(model(later)[:, :, :13], out[:, :, :13])
    with pytest.raises(ValueError, match="16 frames; it takes 1 \\+ 4k"):
        model(video[:, :, :16])
    wider = GroupAutoencoder(8, latent=32)  # --latents: more channels at the same 4x8x8 compression
    assert wider.encode_group(torch.rand(1, 15, 16, 24)).shape == (1, 32, 2, 3) and wider(video).shape == video.shape


def test_a_recipe_on_4x4_pixel_blocks_encodes_and_generates_on_its_own_grid():
    """8x8-pixel latents round stars into discs, 4x4 keep them; with 4x4 token patches the transformer keeps the
    shipped number of tokens. Every stage must read the grid from the pipeline, not assume Wan's 8."""
    from ffstudy.generate import generate
    from ffstudy.spriteworld.pretrain import PretrainConfig, build_untrained, build_vae, encode_training_set

    config = PretrainConfig(vae_base_dim=8, vae_dim_mult=(1, 2, 2), vae_spatial_compression=4, transformer_patch=4,
                            layers=1, heads=2, head_dim=8, ffn_dim=16)
    pipe = build_untrained(config)
    assert pipe.vae_scale_factor_spatial == 4 and pipe.transformer.config.patch_size == (1, 4, 4)
    clip = generate_clip(5)
    item = encode_training_set(pipe, [clip], config)[0]
    assert item["latent_mean"].shape == (1, 16, 5, 24, 40) and item["entity_mask"].shape == (1, 1, 5, 24, 40)
    video = generate(pipe, clip.frames[0], clip.caption, trigger=None, num_inference_steps=2, drop_first_frames=0,
                     seed=0, progress=False, num_frames=17, height=96, width=160)
    assert video.frames.shape == (17, 96, 160, 3)
    with pytest.raises(ValueError, match=r"compresses 8x, not vae_spatial_compression 4x"):
        build_vae(PretrainConfig(vae_spatial_compression=4))
