"""The README and docs/ as a reader meets them: short enough, every link resolves, every command parses, and
`make train` gives the same weights twice. (The README's Python example runs in test_explain_twin.py.)"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import command_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"^python (?:-m (torch_imdb[\w.]*)|(benchmarks/\w+\.py))(.*)$")
PLACEHOLDERS = {"N": "1", "DIR": "dir", "PATH": "path", "ADDR": "10.0.0.1:6379", "HEAD:6379": "10.0.0.1:6379"}


def test_the_readme_is_a_manual_not_a_notebook():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 250, len(lines)
    text = "\n".join(lines).lower()
    for diary in ("previous session", "previous run", "this session", "goal:", "commit "):
        assert diary not in text, diary


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in path.read_text().splitlines() if line.startswith("#")}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_link_resolves(doc):
    text = doc.read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    assert targets or doc.name == "changelog.md"
    for target in targets:
        if re.match(r"https?://", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (doc.parent / path).resolve() if path else doc
        assert resolved.exists(), f"{doc.name} links to {target}, which does not exist"
        if anchor:
            assert anchor in anchors(resolved), f"{doc.name} links to {target}: no such heading"


def commands(doc: Path) -> list[str]:
    """Every `python -m torch_imdb...` / `python benchmarks/...` command in a code span or a code block line."""
    text = doc.read_text()
    found = re.findall(r"`([^`\n]+)`", text)
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        found += [line.split(" #")[0].strip() for line in block.splitlines()]
    return [c for c in found if COMMAND.match(c)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_command_in_the_docs_parses(doc):
    """Each documented command is accepted by its parser as written: no stale flag, no stale value."""
    cmds = commands(doc)
    if doc.name == "README.md":
        assert len(cmds) >= 8
    for cmd in cmds:
        module, script, rest = COMMAND.match(cmd).groups()
        args = [PLACEHOLDERS.get(a, a) for a in shlex.split(rest)]
        if "..." in rest:
            args = args[: next(k for k, a in enumerate(args) if "..." in a)]
        try:
            command_parser(module or script).parse_args(args)
        except SystemExit as exc:
            pytest.fail(f"{doc.name}: `{cmd}` is refused by its parser (exit {exc.code})")


def test_make_train_twice_gives_the_same_weights(planted_data, tmp_path):
    """`make train`'s own recipe (one torch thread), on a small setting, run twice: the same fingerprint."""
    venv = Path(sys.executable).parent.parent
    prints = []
    for run in ("a", "b"):
        small = (f"--data {planted_data} --epochs 1 --maxlen 16 --embed-dim 8 --hidden 8 --device cpu "
                 f"--out {tmp_path / run} --metrics-out {tmp_path / run}.json")
        res = subprocess.run(["make", "-C", str(ROOT), "-o", f"{venv}/.installed", "train", f"VENV={venv}",
                              f"TRAIN_ARGS={small}"], capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr
        assert "the committed weights f481cd03785a2c28" in res.stdout and "OMP_NUM_THREADS=1" in res.stdout
        prints.append(json.loads((tmp_path / f"{run}.json").read_text())["weights_fingerprint"])
    assert prints[0] == prints[1]
    assert json.loads((tmp_path / "a.json").read_text())["machine"]["torch_threads"] == 1


HELP_COMMANDS = [["-m", f"torch_imdb.{m}"] for m in ("explain", "train", "words", "report", "series")] + [
    [f"benchmarks/{b}.py"] for b in ("explainer_speed", "faithfulness", "scale_out")]


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda c: c[-1])
def test_help_does_not_load_torch(command):
    """`--help` answers at once: the command parses its options before torch (seconds to import) is loaded."""
    res = subprocess.run([sys.executable, "-X", "importtime", *command, "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert res.returncode == 0 and "usage:" in res.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" not in imported, f"{command} --help imported torch"
    for line in res.stdout.split("  -")[1:]:  # one option each: its default named once
        assert line.count("default") <= 1 or "(default:" not in line, line


def test_the_python_example_for_the_trained_model_runs(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """The README's example, as written, on the tests' own checkpoint and data instead of artifacts/ and IMDB."""
    ck, data = tiny_checkpoint
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Explain the trained model from Python"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 'load_checkpoint("artifacts")' in code
    monkeypatch.setenv("TORCH_IMDB_DATA", str(data))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code.replace('"artifacts"', repr(str(ck))), "README.md", "exec"), namespace)
    explanation, model, ids = namespace["explanation"], namespace["ckpt"].model, namespace["ids"]
    p = model.predict_proba(ids).numpy()
    for k in range(2):
        assert abs(explanation[k].base_values + explanation[k].values.sum() - p[k]) < 1e-4
        assert explanation[k].data[0].startswith("<pad> x")
    page = (tmp_path / "reviews.html").read_text()
    assert "wonderful " in page and "np.float64" not in page
    assert "'wonderful '" in capsys.readouterr().out  # printed: review 0's last words (OOV ones as <unk>)


def test_make_results_chain_gives_one_models_files(planted_data, tmp_path):
    """`make results` (train, explain, all test reviews, words, report) on a small setting: the report, which refuses
    files of two models, is built from the one checkpoint the chain trained."""
    venv = Path(sys.executable).parent.parent
    ck, results = tmp_path / "ck", tmp_path / "results"
    small = {"TRAIN_ARGS": f"--data {planted_data} --epochs 2 --lr 5e-3 --maxlen 16 --embed-dim 8 --hidden 8 --device cpu",
             "EXPLAIN_ARGS": f"--data {planted_data} --background 5 --reviews 3",
             "ALL_TEST_ARGS": f"--data {planted_data} --background 5 --no-compile",
             "WORDS_ARGS": f"--data {planted_data} --background 5 --min-count 2"}
    res = subprocess.run(["make", "-C", str(ROOT), "-o", f"{venv}/.installed", "results", f"VENV={venv}",
                          f"CHECKPOINT={ck}", f"RESULTS={results}", *[f"{k}={v}" for k, v in small.items()]],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    fingerprint = json.loads((ck / "config.json").read_text())["weights_fingerprint"]
    for name in ("train_metrics.json", "explain_summary.json", "word_importance.json"):
        assert json.loads((results / name).read_text())["weights_fingerprint"] == fingerprint, name
    assert (ck / "all_test" / "manifest.json").exists()
    page = (results / "report.html").read_text()
    assert fingerprint in page


def test_public_names_are_documented_with_shapes():
    import torch_imdb.explain as explain

    assert {"FastDeepLiftShap", "FastDeepShap", "ShapDeepExplainer", "CaptumDeepLiftShap", "make_explainable"} <= set(
        explain.__all__)
    for name in explain.__all__:
        obj = getattr(explain, name)
        assert (obj.__doc__ or "").strip(), f"{name} has no docstring"
        method = getattr(obj, "attribute", None)
        if method is not None:
            assert "(N, T)" in (method.__doc__ or ""), f"{name}.attribute's docstring gives no shapes"
