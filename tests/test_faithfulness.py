"""Each faithfulness metric on hand-built models whose right answer is known."""

import numpy as np
import pytest

from torch_imdb.faithfulness import (_masked, aopc, bootstrap_ci, comprehensiveness, deletion_curve, insertion_curve,
                                     rank_agreement, ranking, spearman_brown, split_half_reliability, sufficiency)

PLANTED = 7


def planted_model(ids: np.ndarray) -> np.ndarray:
    """P(positive) = 0.9 if the planted token occurs, else 0.2: one token decides."""
    return np.where((ids == PLANTED).any(axis=1), 0.9, 0.2)


def additive_model(ids: np.ndarray) -> np.ndarray:
    """P(positive) = 0.5 + sum of per-token weights (ids 3..9 weigh (id - 6) / 40)."""
    w = np.where(ids >= 3, (ids - 6) / 40.0, 0.0)
    return 0.5 + w.sum(axis=1)


@pytest.fixture
def reviews():
    ids = np.array([[0, 0, 1, 3, PLANTED, 4, 5],  # padding, start, words
                    [0, 1, 5, 4, 3, PLANTED, 8]])
    return ids


def test_deleting_the_planted_token_first_gives_the_largest_drop(reviews):
    right = (reviews == PLANTED).astype(float)  # all attribution on the planted token
    wrong = np.where(reviews >= 3, 1.0, 0.0) - 2 * right  # everything but the planted token
    good, bad = deletion_curve(planted_model, reviews, right, max_k=3), deletion_curve(planted_model, reviews, wrong, max_k=3)
    assert np.allclose(good, 0.7)  # 0.9 -> 0.2 from k = 1 on
    assert np.allclose(bad[:, :2], 0.0) and (aopc(good) > aopc(bad)).all()
    assert np.allclose(insertion_curve(planted_model, reviews, right, max_k=2), 0.7)  # keeping it alone restores 0.9


def test_ranking_puts_padding_last_and_follows_the_predicted_class(reviews):
    values = np.array([[5.0, 5.0, 0.0, 0.1, 0.3, -0.2, 0.0], [9.0, 0.0, -0.5, 0.2, 0.1, 0.4, -0.1]])
    positive = np.array([True, False])
    order = ranking(reviews, values, positive)
    assert list(order[0][:3]) == [4, 3, 2] and set(order[0][-2:]) == {0, 1}  # padding (5.0) never first
    assert order[1][0] == 2  # negative class: the most negative value supports it most


def test_eraser_on_an_additive_model(reviews):
    exact = np.where(reviews >= 3, (reviews - 6) / 40.0, 0.0)  # exact contributions
    comp = comprehensiveness(additive_model, reviews, exact, bins=(0.2,))
    # review 0: P = 0.5 + (-3 + 1 - 2 - 1)/40 = 0.375, predicted negative; 20% of its 5 tokens is 1 token,
    # the one most supporting "negative" is id 3 (-3/40): removing it lowers P(negative) by 3/40
    assert comp[0] == pytest.approx(3 / 40)
    suff = sufficiency(additive_model, reviews, exact, bins=(1.0,))
    assert np.allclose(suff, 0.0)  # keeping every token changes nothing


def test_rank_agreement_and_bootstrap(reviews):
    values = np.array([[0, 0, 0.1, 0.2, 0.3, 0.4, 0.5], [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    same = rank_agreement(values, values, reviews, k=2)
    assert np.allclose(same["spearman"], 1.0) and np.allclose(same["top2_overlap"], 1.0) and np.allclose(same["mae"], 0)
    flipped = rank_agreement(values, -values[:, ::-1], reviews, k=2)
    assert (flipped["mae"] > 0).all()
    ci = bootstrap_ci(np.array([1.0, 2.0, 3.0, np.nan]), seed=0)
    assert ci["mean"] == 2.0 and ci["low"] < 2.0 < ci["high"] and ci["n"] == 3
    assert bootstrap_ci(np.array([1.0, 2.0, 3.0]), seed=0) == bootstrap_ci(np.array([1.0, 2.0, 3.0]), seed=0)


def second_to_last_model(ids: np.ndarray) -> np.ndarray:
    """P(positive) = 0.9 if the token just before the last is the planted one: a model that reads positions."""
    return np.where(ids[:, -2] == PLANTED, 0.9, 0.2)


def test_removal_moves_the_other_tokens_and_padding_in_place_does_not():
    ids = np.array([[0, 1, PLANTED, 3]])
    last = np.array([[0.0, 0.0, 0.0, 1.0]])  # all attribution on the last token (id 3)
    order = ranking(ids, last, np.array([True]))
    assert _masked(ids, order, np.array([1]), keep=False, how="pad").tolist() == [[0, 1, PLANTED, 0]]
    assert _masked(ids, order, np.array([1]), keep=False, how="remove").tolist() == [[0, 0, 1, PLANTED]]
    # padding in place keeps the planted token second to last: no drop; removal shifts it to the end: 0.9 -> 0.2
    assert deletion_curve(second_to_last_model, ids, last, max_k=1, how="pad") == pytest.approx(0.0)
    assert deletion_curve(second_to_last_model, ids, last, max_k=1, how="remove") == pytest.approx(0.7)
    with pytest.raises(ValueError, match="how must be one of pad, remove"):
        deletion_curve(second_to_last_model, ids, last, max_k=1, how="erase")


def test_aopc_is_samek_normalised():
    """1/(K+1) over k = 0..K with a zero k = 0 term: a constant drop of 0.7 over K = 3 gives 0.7 * 3/4."""
    assert aopc(np.full((2, 3), 0.7)) == pytest.approx([0.525, 0.525])


def test_split_half_reliability_of_a_reference_with_known_noise():
    """Halves = truth + independent noise of variance s2: each half correlates 1/(1+s2) with the other (Pearson; for
    ranks of Gaussians, 6/pi asin(rho/2)), the full reference's reliability follows Spearman-Brown, and a noise-free
    method reaches sqrt(reliability) against it."""
    rng = np.random.default_rng(0)
    n, T, s2 = 200, 400, 0.25
    truth = rng.standard_normal((n, T))
    ids = np.full((n, T), 5)
    half_a, half_b = (truth + np.sqrt(s2) * rng.standard_normal((n, T)) for _ in range(2))
    conv = split_half_reliability(half_a, half_b, ids)
    rho_ranks = 6 / np.pi * np.arcsin(1 / (1 + s2) / 2)
    assert conv["split_half"] == pytest.approx(rho_ranks, abs=0.01)
    assert conv["reliability"] == pytest.approx(spearman_brown(rho_ranks), abs=0.01)
    achieved = np.mean(rank_agreement(truth, (half_a + half_b) / 2, ids)["spearman"])
    assert conv["ceiling"] == pytest.approx(achieved, abs=0.01)
    assert spearman_brown(0.5) == pytest.approx(2 / 3) and spearman_brown(0.916) == pytest.approx(0.9562, abs=1e-4)
