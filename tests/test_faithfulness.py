"""Each faithfulness metric on hand-built models whose right answer is known."""

import numpy as np
import pytest

from torch_imdb.faithfulness import (aopc, bootstrap_ci, comprehensiveness, deletion_curve, insertion_curve,
                                     rank_agreement, ranking, sufficiency)

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
