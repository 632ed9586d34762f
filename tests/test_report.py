import json
import re
import shutil
from pathlib import Path

import pytest

from torch_imdb.errors import UsageError
from torch_imdb.explain.__main__ import main as explain_main
from torch_imdb.report import build_report, reference_kind
from torch_imdb.report_check import check_report, find_chromium, passed, token_problems

needs_chromium = pytest.mark.skipif(
    find_chromium() is None, reason="chromium is not installed (apt-get install chromium): the browser check is skipped")


@pytest.fixture(scope="module")
def report(tiny_checkpoint, tmp_path_factory):
    """A report built from results the test makes itself with the project's commands."""
    ck, data = tiny_checkpoint
    res = tmp_path_factory.mktemp("results")
    shutil.copy(ck / "metrics.json", res / "train_metrics.json")
    assert explain_main(["--checkpoint", str(ck), "--data", str(data), "--out", str(res), "--background", "6",
                         "--reviews", "3"]) == 0
    return build_report(res, res / "report.html"), res


def test_report_is_self_contained_and_shows_the_summary_numbers(report):
    path, res = report
    page = path.read_text()
    summary = json.loads((res / "explain_summary.json").read_text())
    assert page.count('class="force"') == 3  # one force plot per explained review
    assert 'height="80px"' not in page  # and no second, smaller bar from shap's text plot under it
    assert "SHAP" in page and "<script" in page  # shap's JS inlined
    assert not re.search(r"""(src|href)=["']https?://""", page), "nothing is fetched from the network"
    assert "data:image/png;base64," in page
    assert "No benchmark" in page  # a missing input is named, with the command that makes it
    # the numbers on the page are the summary's, to the digits shown
    for name, e in summary["engines"].items():
        assert f"<td class=\"l\">{name}</td><td class=\"\">{e['seconds']:.2f}</td>" \
               f"<td class=\"\">{e['max_abs_completeness_residual']:.2e}</td>" in page
    a = summary["agreement"]["shap_vs_captum"]
    assert f"<td class=\"\">{a['max_abs_diff']:.2e}</td><td class=\"\">{a['mean_abs_diff']:.2e}</td>" in page
    for r in summary["reviews"]:
        assert f"P(positive) = {r['output']:.3f}" in page
    assert summary["weights_fingerprint"] in page
    assert "np.float" not in page, "numpy reprs in shap's colours are not CSS"


def test_report_refuses_outputs_of_two_models(report, tmp_path):
    _, res = report
    mixed = tmp_path / "mixed"
    shutil.copytree(res, mixed)
    summary = json.loads((mixed / "explain_summary.json").read_text())
    summary["weights_fingerprint"] = "0123456789abcdef"
    (mixed / "explain_summary.json").write_text(json.dumps(summary))
    with pytest.raises(UsageError, match="mixes outputs of different weights"):
        build_report(mixed, mixed / "report.html")
    assert not (mixed / "report.html").exists() or (mixed / "report.html").read_text() == (res / "report.html").read_text()
    del summary["weights_fingerprint"]
    (mixed / "explain_summary.json").write_text(json.dumps(summary))
    with pytest.raises(UsageError, match="records no weights fingerprint"):
        build_report(mixed, mixed / "r2.html")


@pytest.mark.parametrize("name", ["explain_summary.json", "train_metrics.json", "explainer_speed.json",
                                  "word_importance.json", "faithfulness.json", "all_test_timing.json"])
@pytest.mark.parametrize("content,match", [
    ('{"weights_fingerprint": "ab', "is unreadable \\(not JSON"),  # truncated: a write cut short by hand
    ("[1, 2]", "holds a JSON list, not an object"),
    ("[" * 5000 + "]" * 5000, "nests deeper than 64 levels"),
    (b"\xff\xfe{}", "not UTF-8"),
])
def test_a_damaged_results_file_is_one_line_naming_it(report, tmp_path, run_report, name, content, match):
    """Every JSON file the report reads back: truncated, a list where an object belongs, crafted, not text."""
    damaged = copy_results(report, tmp_path)
    (damaged / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    err = run_report(damaged)
    assert err.startswith(f"error: {damaged / name} ") and re.search(match, err), err
    assert "regenerate it" in err


@pytest.mark.parametrize("name,edit", [
    ("explain_summary.json", lambda d: d.pop("agreement")),
    ("explain_summary.json", lambda d: d.update(expected_value="0.5")),
    ("train_metrics.json", lambda d: d.update(epochs=[])),
])
def test_a_results_file_without_what_the_report_reads_is_one_line(report, tmp_path, run_report, name, edit):
    damaged = copy_results(report, tmp_path)
    data = json.loads((damaged / name).read_text())
    edit(data)
    (damaged / name).write_text(json.dumps(data))
    err = run_report(damaged)
    assert str(damaged / name) in err and "lacks what the report reads" in err, err
    assert "regenerate it with `python -m" in err, err
    assert not (damaged / "report.html").exists() or (damaged / "report.html").read_bytes() == \
        (report[1] / "report.html").read_bytes()


def copy_results(report, tmp_path) -> Path:
    _, res = report
    shutil.copytree(res, tmp_path / "res")
    return tmp_path / "res"


@pytest.fixture
def run_report(capsys):
    """`python -m torch_imdb.report --results FOLDER` as the CLI runs it: exit 2 and one error line; returns it."""
    from torch_imdb.errors import run_cli
    from torch_imdb.report import main

    def run(folder: Path) -> str:
        assert run_cli(main, ["--results", str(folder)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err
    return run


def test_missing_results_folder(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        build_report(tmp_path / "none", tmp_path / "r.html")


def test_token_colour_rules():
    red, blue, clear = {"r": 255, "g": 13, "b": 87, "a": 0.8}, {"r": 30, "g": 136, "b": 229, "a": 0.5}, {"r": 0, "g": 0, "b": 0, "a": 0}
    ok = [{"id": "a", "value": 0.3, "intended_alpha": 0.9, "color": red},
          {"id": "b", "value": -0.2, "intended_alpha": 0.6, "color": blue},
          {"id": "c", "value": 0.0, "intended_alpha": 0.0, "color": clear},
          {"id": "d", "value": 0.001, "intended_alpha": 0.0, "color": clear}]  # transparent by design
    assert token_problems(ok) == []
    bad = [{"id": "a", "value": 0.3, "intended_alpha": 0.9, "color": blue},
           {"id": "b", "value": -0.2, "intended_alpha": 0.6, "color": clear},
           {"id": "c", "value": 0.1, "intended_alpha": 0.3, "color": None},
           {"id": "d", "value": 0.02, "intended_alpha": None, "color": clear}]  # intended colour unreadable
    assert len(token_problems(bad)) == 4


@needs_chromium
def test_report_as_a_person_sees_it(report, tmp_path):
    path, _ = report
    res = check_report(path, screenshot=tmp_path / "shot.png")
    assert res["force_plots"] == 3 and res["rendered"] == 3, res
    assert res["nonzero_tokens"] > 10 and res["token_problems"] == [], res
    assert res["script_errors"] == [] and passed(res)
    assert (tmp_path / "shot.png").read_bytes()[:4] == b"\x89PNG"


@needs_chromium
def test_browser_check_fails_on_uncoloured_text_plots(report, tmp_path):
    """The check must catch the numpy-2 colours this project once shipped."""
    path, _ = report
    page = path.read_text()
    broken = re.sub(r"background: rgba\(([^)]*)\)", lambda m: "background: rgba(" + ", ".join(
        f"np.float64({v.strip()})" for v in m.group(1).split(",")) + ")", page)
    assert broken != page
    (tmp_path / "broken.html").write_text(broken)
    res = check_report(tmp_path / "broken.html")
    assert res["token_problems"] and not passed(res)


@needs_chromium
def test_committed_report_renders():
    committed = Path(__file__).resolve().parents[1] / "results" / "report.html"
    summary = json.loads((committed.parent / "explain_summary.json").read_text())
    res = check_report(committed)
    assert res["force_plots"] == len(summary["reviews"]) == res["rendered"]
    assert passed(res), res


def test_training_runs_are_labelled_from_their_own_config():
    from torch_imdb.report import run_label

    epochs = [{"epoch": k} for k in range(1, 4)]
    assert run_label({"config": {"epochs": 3, "val_fraction": 0.0}, "epochs": epochs}) == "3 of 3 epochs"
    stopped = {"config": {"epochs": 15, "val_fraction": 0.1}, "epochs": epochs, "selected_by": "val_acc"}
    assert run_label(stopped) == "3 of 15 epochs, best val_acc (--val-fraction 0.1)"


def test_the_faithfulness_section_names_how_its_reference_was_made():
    engine = {"kind": "shapley engine", "reliability_target": 0.98, "forward_rows_per_review": 115613.8,
              "convergence": {"reliability": 0.9802}}
    assert reference_kind(engine) == ("the shapley engine, each review sampled to a split-half reliability of 0.98, "
                                      "115,614 forward rows a review; reliability 0.980")
    permutation = {"kind": "shap permutation", "permutations_per_review": 60}
    assert reference_kind(permutation) == "shap.PermutationExplainer, 60 permutations a review"
