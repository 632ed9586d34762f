"""The documentation site (mkdocs.yml): the docs pages and the API reference built from the docstrings, with
broken references failing the build (strict mode)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("mkdocstrings", reason="the docs extra (pip install -e '.[docs]') builds the site")


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          cwd=config.parent, capture_output=True, text=True, timeout=300)


def test_the_site_builds_strict_with_every_public_engine_in_the_reference(tmp_path):
    done = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("FastDeepShap", "ShapleySampling", "ShapDeepExplainer", "CaptumDeepLiftShap", "DeepExplainer",
                 "make_explainable", "Attribution", "SentimentRNN", "rank_agreement"):
        assert f"{name}" in api, name
    assert (tmp_path / "site" / "results" / "index.html").exists()


def test_a_broken_reference_fails_the_build(tmp_path):
    """The strictness is real: a reference to an object that does not exist stops the build."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copytree(ROOT / "torch_imdb", copy / "torch_imdb", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    api = copy / "docs" / "api.md"
    api.write_text(api.read_text() + "\nSee [the missing one][torch_imdb.explain.fast.NoSuchEngine].\n")
    done = build(copy / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0 and "NoSuchEngine" in done.stderr, done.stderr[-2000:]
