import json
import re
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from check_report import check_report, find_chromium  # noqa: E402

from torch_imdb.errors import UsageError  # noqa: E402
from torch_imdb.explain.__main__ import main as explain_main  # noqa: E402
from torch_imdb.report import build_report  # noqa: E402

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


def test_report_is_self_contained(report):
    path, res = report
    page = path.read_text()
    assert page.count('class="force"') == 3  # one force plot per explained review
    assert "SHAP" in page and "<script" in page  # shap's JS inlined
    assert not re.search(r"""(src|href)=["']https?://""", page), "nothing is fetched from the network"
    assert "data:image/png;base64," in page
    assert "shap_vs_captum" in page
    assert "No benchmark" in page  # a missing input is named, with the command that makes it


def test_missing_results_folder(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        build_report(tmp_path / "none", tmp_path / "r.html")


@needs_chromium
def test_force_plots_render_in_a_real_browser(report, tmp_path):
    path, _ = report
    res = check_report(path, screenshot=tmp_path / "shot.png")
    assert res["force_plots"] == 3 and res["rendered"] == 3, res
    assert res["script_errors"] == []
    assert (tmp_path / "shot.png").read_bytes()[:4] == b"\x89PNG"


@needs_chromium
def test_committed_report_renders():
    committed = Path(__file__).resolve().parents[1] / "results" / "report.html"
    if not committed.exists():
        pytest.skip("results/report.html is not committed yet (python -m torch_imdb.report)")
    summary = json.loads((committed.parent / "explain_summary.json").read_text())
    res = check_report(committed)
    assert res["force_plots"] == len(summary["reviews"]) == res["rendered"]
    assert res["script_errors"] == []
