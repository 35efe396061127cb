import numpy as np
import pytest

from ffstudy.probe import ProbeResult
from ffstudy.retrieval import entity_retrieval, offset_means, own_entity_retrieval, position_prediction

F, H, W = 3, 4, 6
N0 = H * W


def fake_result(attention: np.ndarray) -> ProbeResult:
    """A probe result holding only ``attention`` ((F-1)·n0 queries × n0 keys, one head, one record)."""
    return ProbeResult((F, H, W), ["a", "b", "background"], [dict(step=0, block=0, expert="main")],
                       np.zeros((1, F - 1, N0, 3)), np.zeros((1, F - 1, N0)),
                       attention=attention.reshape(1, 1, (F - 1) * N0, N0))


def grid_masks(cells_a, cells_b) -> np.ndarray:
    """(n0, 3) key weights: entity a, entity b, the rest."""
    weights = np.zeros((N0, 3))
    weights[cells_a, 0] = 1
    weights[cells_b, 1] = 1
    weights[:, 2] = 1 - weights[:, :2].sum(1)
    return weights


def offsets():
    r, c = np.divmod(np.arange(N0), W)
    return r[None, :] - r[:, None], c[None, :] - c[:, None]


def test_purely_positional_attention_has_no_content_retrieval():
    dr, dc = offsets()
    attention = np.stack([np.exp(-(dr**2 + dc**2) / (2.0 + t)) for t in range(F - 1)])  # depends on offset only
    attention = attention / attention.sum(-1, keepdims=True).mean()
    assert np.allclose(position_prediction(attention, H, W), attention)
    centre = offset_means(attention[0], H, W)
    assert centre.shape == (2 * H - 1, 2 * W - 1) and centre.argmax() == centre.size // 2  # peak at offset (0, 0)
    weights = grid_masks([0, 1, 6, 7], [16, 17, 22, 23])
    labels = np.zeros((F - 1, N0), int)
    labels[:, [14, 15]] = 1  # entity a's tokens have moved: position and content disagree
    labels[:, [2, 3]] = 2
    parts = entity_retrieval(fake_result(attention), weights, record=0)
    assert np.abs(parts["content"]).max() < 1e-12
    own = own_entity_retrieval(fake_result(attention), weights, labels, frames=[1, 2], record=0)
    assert abs(own["content"]) < 1e-12 and own["observed"] > 0 and own["tokens"] == 8


def test_content_only_attention_is_found_and_the_shuffled_control_is_not():
    a_keys, b_keys = [0, 1, 6, 7], [16, 17, 22, 23]  # where a and b are in the first frame
    a_now, b_now = [14, 15, 20, 21], [2, 3, 8, 9]  # where they are in later frames: elsewhere
    attention = np.full((F - 1, N0, N0), 0.01)
    for queries, keys in ((a_now, a_keys), (b_now, b_keys)):
        for q in queries:
            attention[:, q, keys] = 0.2  # a token showing an entity reads that entity, wherever it now is
    labels = np.zeros((F - 1, N0), int)
    labels[:, a_now], labels[:, b_now] = 1, 2
    weights = grid_masks(a_keys, b_keys)
    own = own_entity_retrieval(fake_result(attention), weights, labels, frames=[1, 2], record=0)
    shuffled = own_entity_retrieval(fake_result(attention), weights, labels, frames=[1, 2], record=0,
                                    permutation=np.array([1, 0]))
    assert own["content"] > 0.3 and own["observed"] > 2 * own["position"]
    assert shuffled["content"] < 0.05 < own["content"]


def test_needs_the_raw_attention():
    result = fake_result(np.zeros((F - 1, N0, N0)))
    result.attention = None
    with pytest.raises(ValueError, match="keep_attention=True"):
        entity_retrieval(result, grid_masks([0], [1]), record=0)
