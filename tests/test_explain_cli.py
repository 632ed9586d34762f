import csv
import json
import sys

import numpy as np
import pytest
import torch

from torch_imdb.errors import UsageError
from torch_imdb.explain.__main__ import main as explain_main


def run(ck, data, out, *extra):
    return explain_main(["--checkpoint", str(ck), "--data", str(data), "--out", str(out), *extra])


def test_text_end_to_end(tiny_checkpoint, tmp_path, capsys):
    ck, data = tiny_checkpoint
    assert run(ck, data, tmp_path, "--background", "8", "--text", "w1 w2 superb w3 wonderful",
               "--text", "w4 awful w5 boring", "--engines", "shap,captum") == 0
    summary = json.loads((tmp_path / "explain_summary.json").read_text())
    assert summary["config"]["reviews"] == 2
    assert summary["engines"]["shap"]["max_abs_completeness_residual"] < 1e-5
    assert summary["engines"]["captum"]["captum_max_abs_convergence_delta"] < 1e-5
    assert summary["agreement"]["shap_vs_captum"]["max_abs_diff"] < 1e-5
    # the planted words carry the sentiment, and the attributions say so
    top_pos = summary["reviews"][0]["top5_shap"][0]
    top_neg = summary["reviews"][1]["top5_shap"][0]
    assert top_pos["word"] in {"superb", "wonderful"} and top_pos["value"] > 0
    assert top_neg["word"] in {"awful", "boring"} and top_neg["value"] < 0
    with open(tmp_path / "explain_attributions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 16
    assert [r["word"] for r in rows[11:16]] == ["w1", "w2", "superb", "w3", "wonderful"]
    assert rows[10]["word"] == "<start>" and rows[0]["word"] == "<pad>"
    html = (tmp_path / "force_plot.html").read_text()
    assert "<html>" in html and "superb" in html
    for png in ("force_plot.png", "token_attributions.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    assert "shap_vs_captum" in capsys.readouterr().out


def test_typed_reviews_default_to_the_fast_engine_beside_the_checkpoint(tiny_checkpoint, capsys):
    """--text alone: every review printed, the fast engine, no negative control, output in CHECKPOINT/explain_text,
    and a warning for a review cut to its last words and for one the vocabulary does not know."""
    ck, data = tiny_checkpoint
    long_review = " ".join(["w1"] * 30 + ["superb"])
    texts = ["w1 superb w2", "w4 awful", "w5 boring w6", long_review, "qqq zzz"]
    assert explain_main(["--checkpoint", str(ck), "--data", str(data), "--background", "4",
                         *[a for t in texts for a in ("--text", t)]]) == 0
    captured = capsys.readouterr()
    summary = json.loads((ck / "explain_text" / "explain_summary.json").read_text())
    assert summary["config"]["engines"] == ["fast"] and summary["plain_nn_rnn"] is None
    assert sum(line.startswith("review ") for line in captured.out.splitlines()) == 5
    warnings = captured.err.strip().splitlines()
    assert warnings == ["warning: --text 4: 31 words, the model reads the last 15 (maxlen 16, as in training)",
                        "warning: --text 5: 2 of 2 words are not in the model's vocabulary; its prediction rests on "
                        "the start token and padding, not on this review"]


@pytest.mark.parametrize("extra,message", [
    (["--text", "superb", "--input", "x.txt"], "--text and --input are two modes"),
    (["--all-test", "--input", "x.txt"], "--input and --all-test are two modes"),
    (["--limit", "5"], "--limit is an option of --all-test; it does nothing with sampled reviews"),
    (["--text", "superb", "--reviews", "3"], "--reviews is an option of sampled reviews; it does nothing with --text"),
    (["--input", "x.txt", "--workers", "2"], "--workers is an option of --engine ray; it does nothing with --input"),
    (["--all-test", "--engines", "shap"], "--engines is an option of sampled reviews or --text"),
    (["--out-dir", "o"], "--out-dir is an option of --input or --all-test"),
])
def test_options_of_another_mode_are_refused(tiny_checkpoint, tmp_path, extra, message):
    ck, data = tiny_checkpoint
    with pytest.raises(UsageError, match=message.replace("(", "\\(")):
        explain_main(["--checkpoint", str(ck), "--data", str(data), *extra])


def test_sampled_reviews_with_all_engines(tiny_checkpoint, tmp_path):
    ck, data = tiny_checkpoint
    assert run(ck, data, tmp_path, "--background", "6", "--reviews", "3", "--engines", "shap,captum,fast") == 0
    summary = json.loads((tmp_path / "explain_summary.json").read_text())
    assert summary["agreement"]["shap_vs_fast"]["max_abs_diff"] < 1e-5
    # the plain nn.LSTM breaks both libraries by far more than float noise, and shap's own check says so
    plain = summary["plain_nn_rnn"]
    assert plain["captum_max_abs_delta"] > 1e-3 and plain["shap_max_abs_residual"] > 1e-3, plain
    assert plain["shap_additivity_check"].startswith("raised") and plain["module"] == "LSTM"
    sources = [r["source"] for r in summary["reviews"]]
    assert len(set(sources)) == 3 and all(s.startswith("test[") for s in sources)


def test_the_shapley_engine_through_the_command(tiny_checkpoint, tmp_path):
    """--engines fast,shapley: the sampled Shapley values of the game DeepSHAP approximates, beside DeepSHAP's, each
    adding up to the model's f(x) - E f; close to DeepSHAP on the tiny model, not equal."""
    ck, data = tiny_checkpoint
    assert run(ck, data, tmp_path, "--background", "6", "--reviews", "3", "--engines", "fast,shapley") == 0
    summary = json.loads((tmp_path / "explain_summary.json").read_text())
    assert summary["engines"]["shapley"]["max_abs_completeness_residual"] < 1e-5
    agreement = summary["agreement"]["fast_vs_shapley"]
    assert agreement["correlation"] > 0.5 and agreement["max_abs_diff"] > 1e-6, agreement


@pytest.mark.parametrize("arch", [dict(cell="gru"), dict(layers=2, bidirectional=True)], ids=["gru", "bilstm2"])
def test_recurrent_variants_explained_by_shap_and_captum(planted_data, tmp_path, arch):
    from torch_imdb.training import TrainConfig, fit

    ck = tmp_path / "ck"
    fit(TrainConfig.of(epochs=2, lr=5e-3, maxlen=16, embed_dim=8, hidden=6, data=str(planted_data), device="cpu",
                       **arch), ck, log=lambda *_: None)
    assert run(ck, planted_data, tmp_path / "out", "--background", "6", "--reviews", "3",
               "--engines", "shap,captum,fast") == 0
    summary = json.loads((tmp_path / "out" / "explain_summary.json").read_text())
    expected = "GRU(6)" if arch.get("cell") == "gru" else "2-layer bidirectional LSTM(6)"
    assert summary["config"]["architecture"] == expected
    for name in ("shap", "captum", "fast"):
        assert summary["engines"][name]["max_abs_completeness_residual"] < 1e-5
    assert summary["agreement"]["shap_vs_captum"]["max_abs_diff"] < 1e-5
    assert summary["agreement"]["shap_vs_fast"]["max_abs_diff"] < 1e-5
    assert summary["plain_nn_rnn"]["module"] == ("GRU" if arch.get("cell") == "gru" else "LSTM")


def test_only_unknown_words_is_finite(tiny_checkpoint, tmp_path):
    ck, data = tiny_checkpoint
    assert run(ck, data, tmp_path, "--background", "4", "--engines", "shap", "--text", "qqq zzz xxx",
               "--no-plain-rnn") == 0
    summary = json.loads((tmp_path / "explain_summary.json").read_text())
    assert np.isfinite(summary["reviews"][0]["output"])
    assert {t["word"] for t in summary["reviews"][0]["top5_shap"]} <= {"<unk>", "<start>"}


@pytest.mark.parametrize("extra,message", [
    (["--text", "  "], "empty"),
    (["--background", "20000"], "only 400"),  # within IMDB's 25,000 (the parser's bound), above this split's 400
    (["--engines", "lime"], "unknown lime"),
])
def test_bad_input(tiny_checkpoint, tmp_path, extra, message):
    ck, data = tiny_checkpoint
    with pytest.raises(UsageError, match=message):
        run(ck, data, tmp_path, *extra)
    assert not list(tmp_path.iterdir()), "nothing is written when the input is bad"


def test_missing_checkpoint(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        explain_main(["--checkpoint", str(tmp_path / "none")])


def test_all_test_streams_and_resumes(tiny_checkpoint, tmp_path):
    from torch_imdb.checkpoint import load_checkpoint
    from torch_imdb.data import load_imdb
    from torch_imdb.explain.corpus import RunSettings, explain_split, read_attributions
    from torch_imdb.explain.fast import FastDeepShap

    ck, data = tiny_checkpoint
    ckpt, ds = load_checkpoint(ck), load_imdb(str(data))
    out = tmp_path / "all"
    m = explain_split(ckpt, ds, out, settings=RunSettings(background=5, chunk_reviews=25, compile=False),
                      log=lambda *_: None)
    assert m["complete"] and m["chunks"] == 3 and m["reviews_computed_this_run"] == 60
    got = read_attributions(out)
    assert got["values"].shape == (60, 16) and list(got["row"]) == list(range(60))
    # same values as the engine called directly with the same background
    from torch_imdb.sampling import sample_background

    _, bg_ids = sample_background(ckpt, ds, 5, seed=0)
    direct = FastDeepShap(ckpt.model).attribute(torch.from_numpy(got["ids"].astype(np.int64)), torch.from_numpy(bg_ids))
    assert np.abs(direct.values - got["values"]).max() < 1e-6
    # interrupted run: one chunk lost, the restart recomputes only that chunk
    (out / "chunk-00001.parquet").unlink()
    m2 = explain_split(ckpt, ds, out, settings=RunSettings(background=5, chunk_reviews=25, compile=False),
                       log=lambda *_: None)
    assert m2["reviews_computed_this_run"] == 25
    np.testing.assert_array_equal(read_attributions(out)["values"], got["values"])
    with pytest.raises(UsageError, match="other settings"):
        explain_split(ckpt, ds, out, settings=RunSettings(background=6, chunk_reviews=25, compile=False),
                      log=lambda *_: None)


def test_real_data_explain(real_checkpoint, tmp_path):
    """Integration: sampled real reviews, all three engines, words matching each review's last 80 words."""
    from torch_imdb.checkpoint import load_checkpoint
    from torch_imdb.data import OOV_WORD, load_imdb, tokenize

    ck, data = real_checkpoint
    assert explain_main(["--checkpoint", str(ck), "--data", data, "--out", str(tmp_path), "--background", "5",
                         "--reviews", "2", "--engines", "shap,captum,fast", "--no-plain-rnn"]) == 0
    summary = json.loads((tmp_path / "explain_summary.json").read_text())
    for name in ("shap", "captum", "fast"):
        assert summary["engines"][name]["max_abs_completeness_residual"] < 1e-5
    assert summary["agreement"]["shap_vs_fast"]["max_abs_diff"] < 1e-5
    test = load_imdb(data)["test"]
    vocab = load_checkpoint(ck).vocab
    index = vocab.index()
    with open(tmp_path / "explain_attributions.csv") as fh:
        rows = list(csv.DictReader(fh))
    for n, review in enumerate(summary["reviews"]):
        row = int(review["source"][len("test[") : -1])
        words = [w if w in index else OOV_WORD for w in tokenize(test[row]["text"])][-80:]
        shown = [r["word"] for r in rows if int(r["review"]) == n and r["word"] not in ("<pad>", "<start>")]
        assert shown == words[-len(shown):] and len(shown) == min(80, len(words))


def test_retrained_checkpoint_never_mixes_attributions(planted_data, tmp_path, capsys):
    """The trust issue's scenario: resume after retraining into the same folder must not mix two models."""
    from torch_imdb.checkpoint import load_checkpoint
    from torch_imdb.explain.corpus import read_attributions
    from torch_imdb.train import main as train_main
    from torch_imdb.words import main as words_main

    ck = tmp_path / "ck"
    train = ["--epochs", "1", "--maxlen", "16", "--embed-dim", "8", "--hidden", "6", "--data", str(planted_data),
             "--out", str(ck)]
    explain = ["--checkpoint", str(ck), "--data", str(planted_data), "--all-test", "--limit", "150", "--no-compile",
               "--background", "5", "--chunk-reviews", "50"]
    outside = tmp_path / "elsewhere"
    assert train_main(train) == 0
    first = load_checkpoint(ck).fingerprint
    assert explain_main(explain) == 0
    assert explain_main(explain + ["--out-dir", str(outside)]) == 0
    (ck / "all_test" / "chunk-00001.parquet").unlink()  # as an interrupted run leaves it
    (outside / "chunk-00001.parquet").unlink()
    assert train_main(train + ["--lr", "0.01"]) == 0
    second = load_checkpoint(ck).fingerprint
    assert second != first
    # training moved the old model's attributions aside, named by their fingerprint
    assert (ck / f"all_test.weights-{first}" / "manifest.json").exists() and not (ck / "all_test").exists()
    assert f"moved to {ck / f'all_test.weights-{first}'}" in capsys.readouterr().out
    # the same command recomputes cleanly: every chunk of the new weights
    assert explain_main(explain) == 0
    got = read_attributions(ck / "all_test", fingerprint=second)
    assert len(got["row"]) == 150
    # a folder outside the checkpoint is refused in one line, not resumed
    with pytest.raises(UsageError, match="other weights"):
        explain_main(explain + ["--out-dir", str(outside)])
    # readers refuse attributions of other weights, and chunks of two models in one folder
    with pytest.raises(UsageError, match="other weights"):
        words_main(["--checkpoint", str(ck), "--data", str(planted_data), "--attributions",
                    str(ck / f"all_test.weights-{first}"), "--min-count", "1", "--out", str(tmp_path / "w")])
    import shutil

    shutil.copy(outside / "chunk-00002.parquet", ck / "all_test" / "chunk-00002.parquet")
    with pytest.raises(UsageError, match="computed from other weights"):
        read_attributions(ck / "all_test")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("fmt", ["txt", "csv", "parquet", "jsonl"])
def test_input_file_explains_every_usable_row(tiny_checkpoint, tmp_path, capsys, fmt):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ck, data = tiny_checkpoint
    texts = ["w1 superb w2", "", "w3 awful w4 boring", "   ", "wonderful"]
    path = tmp_path / f"reviews.{fmt}"
    if fmt == "txt":
        path.write_text("\n".join(texts) + "\n")
    elif fmt == "csv":
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "text"])
            w.writerows(enumerate(texts))
    elif fmt == "parquet":
        pq.write_table(pa.table({"text": texts}), path)
    else:
        path.write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n")
    out = tmp_path / "out"
    assert explain_main(["--checkpoint", str(ck), "--data", str(data), "--input", str(path), "--out-dir", str(out),
                         "--background", "5", "--no-compile"]) == 0
    err = capsys.readouterr().err
    assert "row 1: no text" in err and "row 3: no text" in err and len(err.strip().splitlines()) == 2
    with open(out / "tokens.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted({int(r["row"]) for r in rows}) == [0, 2, 4]
    by_row = {k: [r for r in rows if int(r["row"]) == k] for k in (0, 2, 4)}
    assert [r["word"] for r in by_row[2] if r["word"] not in ("<start>", "<pad>")] == ["w3", "awful", "w4", "boring"]
    assert all(len(toks) == 16 for toks in by_row.values())  # every position, padding included
    # each review's values add up to its output minus the expected value (completeness, per the manifest)
    manifest = json.loads((out / "manifest.json").read_text())
    for k, toks in by_row.items():
        total = sum(float(r["value"]) for r in toks)
        assert abs(total - (float(toks[0]["output"]) - manifest["expected_value"])) < 1e-4
    with open(out / "word_summary.csv") as fh:
        words = {r["word"]: r for r in csv.DictReader(fh)}
    assert float(words["superb"]["mean"]) > 0 > float(words["awful"]["mean"])
    assert manifest["skipped_rows"] == 2 and manifest["weights_fingerprint"]


def test_input_file_errors(tiny_checkpoint, tmp_path):
    ck, data = tiny_checkpoint
    base = ["--checkpoint", str(ck), "--data", str(data), "--out-dir", str(tmp_path / "o"), "--no-compile"]
    with pytest.raises(UsageError, match="not a file"):
        explain_main(base + ["--input", str(tmp_path / "missing.txt")])
    (tmp_path / "a.csv").write_text("review\nfoo\n")
    with pytest.raises(UsageError, match="no `text` column"):
        explain_main(base + ["--input", str(tmp_path / "a.csv")])
    (tmp_path / "b.txt").write_text("\n  \n")
    with pytest.raises(UsageError, match="no row with text"):
        explain_main(base + ["--input", str(tmp_path / "b.txt")])
    (tmp_path / "c.xlsx").write_text("x")
    with pytest.raises(UsageError, match="unknown format"):
        explain_main(base + ["--input", str(tmp_path / "c.xlsx")])


def test_ray_engine_without_ray_says_how_to_install(tiny_checkpoint, tmp_path, monkeypatch):
    ck, data = tiny_checkpoint
    (tmp_path / "r.txt").write_text("superb\n")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed: `import ray` raises ImportError
    with pytest.raises(UsageError, match=r"pip install 'torch-imdb\[ray\]'"):
        explain_main(["--checkpoint", str(ck), "--data", str(data), "--input", str(tmp_path / "r.txt"),
                      "--engine", "ray", "--out-dir", str(tmp_path / "o")])


def test_all_test_of_an_attention_model_takes_the_fast_engine_with_base_values_per_review(planted_data, tmp_path):
    """A pooled model reads each review's padding mask: the chunks hold its base value per review, equal to shap's."""
    from torch_imdb.checkpoint import load_checkpoint
    from torch_imdb.data import load_imdb
    from torch_imdb.explain.backends import ShapDeepExplainer
    from torch_imdb.sampling import sample_background
    from torch_imdb.explain.corpus import RunSettings, explain_split, read_attributions
    from torch_imdb.training import TrainConfig, fit

    cfg = TrainConfig.of(epochs=1, maxlen=16, embed_dim=8, hidden=6, bidirectional=True, pool="attention",
                      attention_dim=4, data=str(planted_data), device="cpu")
    fit(cfg, tmp_path / "ck", log=lambda *_: None)
    ckpt, ds = load_checkpoint(tmp_path / "ck"), load_imdb(str(planted_data))
    m = explain_split(ckpt, ds, tmp_path / "all", settings=RunSettings(background=5, chunk_reviews=25, compile=False),
                      limit=30, log=lambda *_: None)
    assert m["complete"] and m["expected_value"] is None  # no one base value: it is per review
    got = read_attributions(tmp_path / "all")
    _, bg_ids = sample_background(ckpt, ds, 5, seed=0)
    ids = torch.from_numpy(got["ids"][:4].astype(np.int64))
    ref = ShapDeepExplainer(ckpt.model).attribute(ids, torch.from_numpy(bg_ids))
    assert np.abs(got["values"][:4] - ref.values).max() < 1e-5
    np.testing.assert_allclose(got["base_value"][:4], ref.expected_value, atol=1e-6)
    assert np.abs(got["residual"]).max() < 1e-5
