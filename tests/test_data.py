import numpy as np
import pytest

from conftest import write_imdb_folder
from torch_imdb.data import (OOV_ID, OOV_WORD, PAD_ID, START_ID, Vocab, encode_split, load_imdb, pad_pre,
                             sample_indices, tokenize)
from torch_imdb.errors import UsageError


def test_tokenize_matches_keras_cleaning():
    assert tokenize("Great<br />movie!! It's GOOD, really...") == ["great", "movie", "it's", "good", "really"]
    assert tokenize("") == []
    assert tokenize("   \t\n ") == []


def test_tokenize_keeps_unicode_and_emoji():
    assert tokenize("Amélie était 😍 génial") == ["amélie", "était", "😍", "génial"]


def test_vocab_reserved_ids_and_frequency_order():
    vocab = Vocab.build(["b a a c", "a b d"], max_features=100)
    assert vocab.words[:2] == ("a", "b")  # a: 3, b: 2
    assert vocab.words[2:] == ("c", "d")  # ties keep first-seen order
    ids = vocab.encode("a b zzz", maxlen=5)
    assert list(ids) == [PAD_ID, START_ID, 3, 4, OOV_ID]


def test_vocab_keeps_only_ids_below_max_features():
    vocab = Vocab.build(["a a a b b c"], max_features=5)  # ids 3, 4 only
    assert vocab.size == 5
    assert list(vocab.encode("a b c", maxlen=4)) == [START_ID, 3, 4, OOV_ID]


def test_vocab_built_from_train_only(planted_data):
    ds = load_imdb(str(planted_data))
    vocab = Vocab.build(ds["train"]["text"])
    train_words = {w for t in ds["train"]["text"] for w in tokenize(t)}
    assert set(vocab.words) == train_words


def test_a_path_object_loads_like_its_string(planted_data):
    ds = load_imdb(planted_data)  # a pathlib.Path, as notebooks and scripts pass it
    assert ds["train"]["text"] == load_imdb(str(planted_data))["train"]["text"]


def test_pre_padding_and_pre_truncation():
    assert list(pad_pre([1, 5, 6], 5)) == [0, 0, 1, 5, 6]
    assert list(pad_pre(list(range(1, 11)), 4)) == [7, 8, 9, 10]  # the LAST tokens are kept


def test_empty_text_is_start_marker_only():
    vocab = Vocab.build(["a b"])
    assert list(vocab.encode("", 4)) == [0, 0, 0, START_ID]


def test_very_long_review_keeps_its_last_words():
    vocab = Vocab.build(["alpha beta gamma"])
    text = "alpha " * 20000 + "beta gamma"  # > 100,000 characters
    assert len(text) > 100_000
    ids = vocab.encode(text, 80)
    assert ids.shape == (80,)
    assert vocab.decode(ids[-2:]) == ["beta", "gamma"]
    assert START_ID not in ids


def test_round_trip_words_are_the_reviews_last_words():
    vocab = Vocab.build(["the film was good", "the film was bad"])
    review = "I thought the film was good, but the ending was bad and strange."
    ids = vocab.encode(review, maxlen=6)
    expected = [w if w in vocab.index() else OOV_WORD for w in tokenize(review)][-6:]
    assert vocab.decode(ids) == expected


def test_encode_split_caches(tmp_path, planted_data):
    ds = load_imdb(str(planted_data))
    vocab = Vocab.build(ds["train"]["text"])
    ids, labels = encode_split(ds["test"], vocab, 10, cache_dir=tmp_path / "cache")
    files = list((tmp_path / "cache").glob("encoded-*.npy"))
    assert len(files) == 1
    ids2, labels2 = encode_split(ds["test"], vocab, 10, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(ids, ids2)
    np.testing.assert_array_equal(labels, labels2)
    assert ids.dtype == np.int64 and labels.dtype == np.float32


def test_sample_indices_is_seeded_and_mixes_ordered_rows():
    a, b = sample_indices(1000, 100, seed=3), sample_indices(1000, 100, seed=3)
    np.testing.assert_array_equal(a, b)
    assert len(set(a)) == 100
    assert (a < 500).any() and (a >= 500).any()  # both halves of a negatives-first split
    with pytest.raises(UsageError, match="at least 1"):
        sample_indices(10, 0, 0)
    with pytest.raises(UsageError, match="only 10"):
        sample_indices(10, 11, 0)


def test_load_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCH_IMDB_DATA", raising=False)
    with pytest.raises(UsageError, match="does not exist"):
        load_imdb(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no data files"):
        load_imdb(str(tmp_path / "empty"))
    bad = write_imdb_folder(tmp_path / "bad", {"train": (["a"], [1]), "test": (["b"], [0])}, columns=("review", "label"))
    with pytest.raises(UsageError, match="lacks column.*text"):
        load_imdb(str(bad))
    only_train = write_imdb_folder(tmp_path / "only", {"train": (["a"], [1])})
    with pytest.raises(UsageError, match="no 'test' split"):
        load_imdb(str(only_train))
