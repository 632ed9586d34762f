"""The benchmark harness in --quick mode: output structure only (no test asserts a speed)."""

import json
import runpy
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "explainer_speed.py"


def run_script(args):
    old = sys.argv
    sys.argv = [str(SCRIPT), *args]
    try:
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(str(SCRIPT), run_name="__main__")
    finally:
        sys.argv = old
    return exit_info.value.code


def test_quick_run_writes_json_and_png(tmp_path):
    assert run_script(["--quick", "--out", str(tmp_path), "--engines", "shap,captum,fast,fused"]) == 0
    res = json.loads((tmp_path / "explainer_speed.json").read_text())
    assert res["what"]["trained"] is False and "random" in res["what"]["model"]
    engines = {p["engine"] for p in res["points"]}
    assert engines == {"shap", "captum", "fast", "fused"}
    for p in res["points"]:
        assert p["median_s"] > 0 and p["min_s"] <= p["median_s"] <= p["max_s"]
        assert p["rows_per_second"] == pytest.approx(2 * p["background"] * p["reviews"] / p["median_s"])
        assert len(p["seconds"]) >= 1 and p["peak_rss_mb"] > 0
    assert {(p["background"], p["reviews"]) for p in res["points"]} == {(4, 2), (8, 2), (8, 1)}
    for fit in res["fits"].values():
        assert {"a_seconds", "b_seconds_per_background_row", "r2", "loglog_slope"} <= set(fit)
    assert res["agreement"]["max_abs_diff_vs_shap"]["fast"] < 1e-5
    assert res["agreement"]["max_abs_diff_vs_shap"]["captum"] < 1e-5
    assert {"torch", "shap", "captum"} <= set(res["versions"]) and res["machine"]["cpu_count"] >= 1
    # the quick model (one LSTM layer, H=16, T=12) at B=8, N=2: one chunk, 11 products (16 pairs, 4H) @ (4H, H)
    floor = res["product_floor"]["fast"]
    assert set(res["product_floor"]) == {"fast", "fused"} and floor["products"] == 11
    # the transform's fused rule runs the same 11, and the embedding's multipliers (32 pair-steps, 4H) @ (4H, E)
    # per window of 8 steps: 2 more, recorded from the run (shap and Captum run none of ours: no floor)
    assert res["product_floor"]["fused"]["products"] == 13
    assert floor["gflop_per_review"] == pytest.approx(11 * 2 * 16 * 64 * 16 / 2 / 1e9)
    assert floor["seconds_per_review"] > 0
    assert floor["ceiling_vs_shap"] == pytest.approx(
        res["at_reference_point"]["seconds_per_review"]["shap"] / floor["seconds_per_review"])
    assert (tmp_path / "explainer_speed.png").read_bytes()[:4] == b"\x89PNG"


def test_fit_line():
    import importlib.util

    spec = importlib.util.spec_from_file_location("explainer_speed", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.fit_line([{"background": 100, "seconds_per_review": 0.1}]) is None
    fit = mod.fit_line([{"background": b, "seconds_per_review": 0.01 + 0.002 * b} for b in (10, 20, 40)])
    assert fit["a_seconds"] == pytest.approx(0.01) and fit["b_seconds_per_background_row"] == pytest.approx(0.002)
    assert fit["r2"] == pytest.approx(1.0) and fit["linear"]


def test_bad_engine_is_a_clear_error(tmp_path, capsys):
    assert run_script(["--quick", "--out", str(tmp_path), "--engines", "lime"]) == 2
    assert "unknown lime" in capsys.readouterr().err


def test_length_sweep_quick_counts_work_by_length(tmp_path):
    """The packed model's work per review grows with the review's own length, not the padded one."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "length_sweep.py"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "length_sweep.json").read_text())
    steps = {p["length"]: p["pair_steps_per_review"] for p in record["points"]}
    assert steps == {L: 8 * L * 2 for L in (5, 10, 20, 40)}  # background x own steps x directions, padded to 40
    assert record["max_abs_diff_vs_shap"] < 1e-5 and (tmp_path / "length_sweep.png").stat().st_size > 0
