import numpy as np
import pytest

from ffstudy.spriteworld import memory
from ffstudy.spriteworld.metrics import first_frame_entities
from ffstudy.spriteworld.world import WorldConfig, generate_clip


def test_roc_auc_and_its_bootstrap_interval():
    assert memory.roc_auc([3, 2, 1, 0], [True, True, False, False]) == 1.0
    assert memory.roc_auc([0, 1, 2, 3], [True, True, False, False]) == 0.0
    assert memory.roc_auc([1, 1], [True, False]) == 0.5
    assert memory.roc_auc([1, 2], [False, False]) is None  # no survivor: undefined, not 0.5
    rows = [[(0.9, True), (0.1, False)], [(0.8, True), (0.2, False)], [(0.3, True), (0.7, False)]]
    point, low, high = memory.auc_interval(rows, repeats=500)
    assert point == pytest.approx(8 / 9) and 0 <= low <= point <= high <= 1


def test_interval_is_a_bootstrap_of_the_mean_within_the_data_range():
    mean, low, high = memory.interval([0.0, 0.0, 1.0, 1.0])
    assert mean == 0.5 and 0 <= low < 0.5 < high <= 1


def test_measured_frames_are_those_after_the_cut_or_the_transition():
    clip = generate_clip(1_000_002, WorldConfig(), cut=True)
    frames = memory.later_frames(clip, 5, ffgo=False)
    assert frames and all(4 * t - 3 >= clip.cut_frame for t in frames)
    assert memory.later_frames(clip, 5, ffgo=True) == [2, 3, 4]  # latent frame 1 holds composite frames 1-3


@pytest.fixture(scope="module")
def spriteworld():
    from ffstudy.models import load_pipeline

    return load_pipeline("spriteworld")


def test_the_study_on_one_clip(spriteworld):
    clip = generate_clip(1_000_002, WorldConfig(), cut=True)
    entities = first_frame_entities(clip)
    encoded = memory.encode(spriteworld, clip.frames, clip.caption)
    rows = memory.retrieval_rows(spriteworld, clip, encoded, entities, ffgo=False, sigma=0.6)
    assert sorted(rows) == list(range(len(spriteworld.transformer.blocks)))
    for row in rows.values():
        own = row["own"]
        assert own["content"] == pytest.approx(own["observed"] - own["position"]) and own["tokens"] > 0
    knock = memory.knockout_rows(spriteworld, clip, encoded, entities, ffgo=False, sigma=0.6)
    assert set(knock["alpha"]) == {str(a) for a in memory.ALPHAS} and len(knock["block"]) == len(rows)
    videos = memory.knockout_videos(spriteworld, clip, encoded, entities, sigma=0.6)
    later = [t for t in range(4, 17, 4) if t >= clip.cut_frame]  # knock-outs are scored after the cut only
    assert later and later[0] > 4  # the cut falls in frames 5-11
    unchanged = memory.found_share(videos["model"], clip, 0, later)
    assert unchanged == knock["alpha"]["1.0"]["target"]  # the same prediction, measured the same way
    assert not np.array_equal(videos["model"], videos["sprite 1's keys removed"])
