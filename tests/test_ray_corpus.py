"""The Ray Data runner: same numbers as the local runner, worker and driver faults, two nodes on loopback.

Every test starts and stops its own Ray (2 CPUs in all) and checks that nothing
of it is left running. The model is random, not trained: these tests are about
the runner, and a 64-unit LSTM over 80 steps makes a run long enough to be
interrupted in the middle.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

# Our `ray start` nodes and this process's driver must agree on token authentication
# (Ray reads the mode when it is first imported): the command itself sets the same.
os.environ.setdefault("RAY_AUTH_MODE", "token")
pytest.importorskip("ray", reason="Ray Data is the optional extra torch-imdb[ray]; install it to run the Ray tests")

from conftest import FILLER, NEGATIVE, POSITIVE, planted_reviews, write_imdb_folder  # noqa: E402
from torch_imdb.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from torch_imdb.data import Vocab, load_imdb  # noqa: E402
from torch_imdb.errors import UsageError  # noqa: E402
from torch_imdb.explain.corpus import RunSettings, explain_ids, part_rows, read_attributions  # noqa: E402
from torch_imdb.explain.ray_corpus import explain_input_ray  # noqa: E402
from torch_imdb.explain.texts import read_texts  # noqa: E402
from torch_imdb.model import ModelConfig, SentimentRNN  # noqa: E402

BIN = Path(sys.executable).parent
WORKER_TITLE = "ray::MapWorker(MapBatches(BatchExplainer))"
N_REVIEWS = 2400
BACKGROUND = 40
LOCAL = RunSettings(background=BACKGROUND, compile=False)  # what every run here shares


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(checkpoint, data, input parquet, ids of the reviews with text): a random 64-unit LSTM and 2,400 reviews."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("ray")
    data = write_imdb_folder(root / "data", {"train": planted_reviews(200, 0, 60), "test": planted_reviews(20, 1)})
    vocab = Vocab(tuple(POSITIVE + NEGATIVE + FILLER))
    torch.manual_seed(0)
    model = SentimentRNN(ModelConfig(vocab_size=vocab.size, embed_dim=32, hidden=64)).eval()
    save_checkpoint(root / "ck", model, vocab, {"maxlen": 80, "epoch": 0, "seed": 0})
    texts, labels = planted_reviews(N_REVIEWS, 2, 60)
    texts[5] = texts[777] = "   "  # rows without text are skipped, with a warning
    ids = 10_000 + 3 * np.random.default_rng(0).permutation(N_REVIEWS)  # ids are not row numbers
    pq.write_table(pa.table({"id": ids, "text": texts, "label": labels}), root / "reviews.parquet", row_group_size=500)
    return root / "ck", data, root / "reviews.parquet", np.sort(np.delete(ids, [5, 777]))


@pytest.fixture(scope="module")
def local_reference(setup, tmp_path_factory):
    """The local runner's attributions of the same input: what every Ray run must reproduce."""
    ck, data, path, _ = setup
    ckpt = load_checkpoint(ck)
    got = read_texts(path)
    rows, texts, labels = got.ids, got.texts, got.labels
    out = tmp_path_factory.mktemp("local") / "out"
    explain_ids(ckpt, load_imdb(str(data)), tokens=ckpt.vocab.encode_many(texts, ckpt.maxlen), review_ids=rows,
                labels=labels, out_dir=out, source={"input": str(path)}, settings=LOCAL, log=lambda *_: None)
    return read_attributions(out)


def ray_processes() -> list[int]:
    """PIDs of Ray's processes on this machine (workers, raylets, GCS servers)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and int(proc.name) != os.getpid() and (
                cmd.startswith("ray::") or "gcs_server" in cmd or "/raylet" in cmd):
            pids.append(int(proc.name))
    return pids


def worker_pids() -> list[int]:
    return [pid for pid in ray_processes() if _cmdline(pid).startswith(WORKER_TITLE)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """Ray nodes started with ``ray start`` on loopback: a head and optional extra nodes, ``cpus`` each."""

    def __init__(self, cpus: list[int]) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.ray(["start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(self.port),
                  "--num-cpus", str(cpus[0]), "--include-dashboard", "false", "--disable-usage-stats"])
        for n in cpus[1:]:
            self.ray(["start", "--address", self.address, "--node-ip-address", "127.0.0.1", "--num-cpus", str(n),
                      "--disable-usage-stats"])

    @staticmethod
    def ray(args: list[str]) -> None:
        subprocess.run([str(BIN / "ray"), *args], check=True, capture_output=True, timeout=120)

    def stop(self) -> None:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True, timeout=120)
        deadline = time.time() + 30
        while ray_processes() and time.time() < deadline:
            time.sleep(0.5)
        assert ray_processes() == [], "Ray processes were left running"


@pytest.fixture
def cluster():
    """A one-node Ray with 2 CPUs, started for the test and stopped after it."""
    assert ray_processes() == [], "a Ray from elsewhere is running; stop it (ray stop) before these tests"
    c = Cluster([2])
    yield c
    c.stop()


def run(setup, out, **options) -> dict:
    ck, data, path, _ = setup
    return explain_input_ray(load_checkpoint(ck), load_imdb(str(data)), spec=str(path), out_dir=out,
                             settings=replace(LOCAL, **options), log=lambda *_: None)


def assert_same_as_local(out: Path, local: dict, ids: np.ndarray) -> None:
    """Every review once, the local runner's ids in the same order, values within 1e-6, outputs equal."""
    got = read_attributions(out)
    np.testing.assert_array_equal(got["row"], ids)
    np.testing.assert_array_equal(got["row"], local["row"])
    np.testing.assert_array_equal(got["ids"], local["ids"])
    np.testing.assert_array_equal(got["label"], local["label"])
    assert np.abs(got["values"] - local["values"]).max() < 1e-6
    assert np.abs(got["output"] - local["output"]).max() < 1e-6


def test_local_ray_matches_the_local_runner(setup, local_reference, tmp_path):
    assert ray_processes() == []
    manifest = run(setup, tmp_path / "out", chunk_reviews=300)  # no address: starts and stops its own local Ray
    assert_same_as_local(tmp_path / "out", local_reference, setup[3])
    assert manifest["complete"] and manifest["n_reviews"] == N_REVIEWS - 2 and manifest["skipped_rows"] == 2
    assert manifest["workers"] == os.cpu_count() and manifest["threads_per_worker"] == 1
    assert manifest["weights_fingerprint"] == load_checkpoint(setup[0]).fingerprint
    deadline = time.time() + 30
    while ray_processes() and time.time() < deadline:
        time.sleep(0.5)
    assert ray_processes() == []


def test_a_killed_worker_is_retried(setup, local_reference, cluster, tmp_path):
    out = tmp_path / "out"
    killed = []

    def kill_one_worker_mid_run():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            parts = list(out.glob("part-*.parquet"))
            pids = worker_pids()
            if parts and pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append((pids[0], len(parts)))
            time.sleep(0.02)

    killer = threading.Thread(target=kill_one_worker_mid_run)
    killer.start()
    manifest = run(setup, out, address=cluster.address, workers=2, chunk_reviews=100)
    killer.join()
    assert killed, "no worker was running once the first part was written"
    pid, parts_then = killed[0]
    assert parts_then < manifest["parts"], "the worker was killed after the run had finished"
    assert pid not in worker_pids()
    assert_same_as_local(out, local_reference, setup[3])


def test_a_killed_driver_resumes_where_it_stopped(setup, local_reference, cluster, tmp_path):
    ck, data, path, ids = setup
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch_imdb.explain", "--checkpoint", str(ck), "--data", str(data), "--input",
           str(path), "--engine", "ray", "--ray-address", cluster.address, "--out-dir", str(out), "--background",
           str(BACKGROUND), "--chunk-reviews", "100", "--no-compile"]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while len(list(out.glob("part-*.parquet"))) < 3 and time.time() < deadline and driver.poll() is None:
        time.sleep(0.02)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert 3 <= len(kept) < (N_REVIEWS - 2) / 100, "the driver was not stopped in the middle of the run"
    assert not json.loads((out / "manifest.json").read_text())["complete"]

    manifest = run(setup, out, address=cluster.address, workers=2, chunk_reviews=100)
    assert manifest["reviews_computed_this_run"] == N_REVIEWS - 2 - len(part_rows([out / name for name in kept]))
    assert {p: out.joinpath(p).stat().st_mtime_ns for p in kept} == kept  # finished parts were kept, not redone
    assert_same_as_local(out, local_reference, ids)


def test_a_folder_of_other_weights_is_refused(setup, tmp_path):
    ck, data, path, _ = setup
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"weights_fingerprint": "0123456789abcdef"}))
    with pytest.raises(UsageError, match="other weights"):
        run(setup, out)
    assert ray_processes() == []  # refused before Ray was started


def test_two_nodes_on_loopback(setup, local_reference, tmp_path):
    assert ray_processes() == []
    c = Cluster([1, 1])
    try:
        manifest = run(setup, tmp_path / "out", address=c.address, workers=2, chunk_reviews=200)
        assert manifest["nodes_used"] == 2  # one actor per 1-CPU node
        assert_same_as_local(tmp_path / "out", local_reference, setup[3])
    finally:
        c.stop()


def test_text_csv_and_json_lines_inputs_and_a_pool_that_must_fit(setup, cluster, tmp_path):
    ck, data, _, _ = setup
    texts = ["w1 superb w2", "", "w3 awful w4 boring", "wonderful w5"]
    path = tmp_path / "reviews.txt"
    path.write_text("\n".join(texts) + "\n")
    warnings = []
    ckpt, dataset = load_checkpoint(ck), load_imdb(str(data))
    manifest = explain_input_ray(ckpt, dataset, spec=str(path), out_dir=tmp_path / "ray",
                                 settings=replace(LOCAL, address=cluster.address), log=warnings.append)
    assert warnings == [f"warning: {path}: row 1: no text, skipped"] and manifest["n_reviews"] == 3
    assert manifest["parts"] >= 2  # a small input is split so that both actors get work
    explain_ids(ckpt, dataset, tokens=ckpt.vocab.encode_many([texts[k] for k in (0, 2, 3)], ckpt.maxlen),
                review_ids=np.array([0, 2, 3]), labels=np.full(3, -1), out_dir=tmp_path / "local",
                source={"input": str(path)}, settings=LOCAL, log=lambda *_: None)
    assert_same_as_local(tmp_path / "ray", read_attributions(tmp_path / "local"), np.array([0, 2, 3]))
    for fmt in ("csv", "jsonl"):  # Ray Data's own readers, for files that carry ids
        kept = [0, 2, 3]
        rows = [{"id": 100 + k, "text": texts[k], "label": k % 2} for k in kept]
        src = tmp_path / f"reviews.{fmt}"
        if fmt == "csv":
            src.write_text("id,text,label\n" + "".join(f'{r["id"]},"{r["text"]}",{r["label"]}\n' for r in rows))
        else:
            src.write_text("".join(json.dumps(r) + "\n" for r in rows))
        explain_input_ray(ckpt, dataset, spec=str(src), out_dir=tmp_path / fmt,
                          settings=replace(LOCAL, address=cluster.address), log=warnings.append)
        got = read_attributions(tmp_path / fmt)
        assert got["row"].tolist() == [100, 102, 103] and got["label"].tolist() == [0, 0, 1]
        assert np.abs(got["values"] - read_attributions(tmp_path / "local")["values"]).max() < 1e-6
    with pytest.raises(UsageError, match="needs 6 CPUs but the Ray cluster has 2"):
        run(setup, tmp_path / "out", address=cluster.address, workers=3, threads_per_worker=2)


@pytest.mark.parametrize("address, message", [(None, "no Ray head answers there"), ("nonsense", "expected HOST:PORT")])
def test_an_address_without_a_ray_is_one_line(setup, tmp_path, address, message):
    address = address or f"127.0.0.1:{free_port()}"  # a port where nothing listens
    with pytest.raises(UsageError, match=message):  # Ray itself would keep trying for minutes
        run(setup, tmp_path / "out", address=address)
    assert not (tmp_path / "out").exists()
