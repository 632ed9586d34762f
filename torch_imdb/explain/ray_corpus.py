"""Explain a corpus on Ray Data: texts read by Ray, encoded and explained by the fast engine in an actor pool.

``python -m torch_imdb.explain --input PATH --engine ray [--ray-address ADDR] [--workers N]``

- Ray Data reads parquet files that carry an ``id`` column. Text files (.txt, CSV,
  JSON lines) and inputs without ids are read by the driver with the local
  runner's reader (:mod:`.texts`: one encoding policy, one numbering, one set of
  row checks) and handed to Ray as Arrow blocks. Ids and labels are checked by
  the same functions in both runners.
- Each actor of the pool loads the model and the background once, from Ray's object
  store, and sets torch's thread count to its CPU share: actors that each use every
  core slow each other down.
- Every batch goes through :func:`~torch_imdb.explain.corpus.explain_batch`, the same
  function as the local runner's, and becomes one parquet part written atomically by
  the actor. The part's name comes from the review ids it holds. A batch that Ray
  retries after its actor died therefore rewrites the same file, and a restarted
  driver can list the ids that are already done. Ray's own ``write_parquet`` gives
  neither guarantee.
- The weights fingerprint is in every part's metadata and in ``manifest.json``. A
  restart keeps the parts of the same weights and settings and computes the rest; a
  folder of other weights is refused.

Without ``--ray-address``, a local Ray is started on this machine and stopped at the
end. On a cluster, every node must be able to read the input and write ``--out-dir``
(a shared filesystem); the driver needs neither the data nor the checkpoint on the nodes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from torch_imdb.checkpoint import Checkpoint
from torch_imdb.errors import UsageError
from torch_imdb.explain.corpus import (RunSettings, explain_batch, fast_engine, finish_run, first_repeat, mark_started,
                                      part_rows, run_key, shared_base_value, start_run, write_part)
from torch_imdb.explain.texts import (columns_of, input_files, input_fingerprint, read_usable_texts, review_id,
                                      review_label)
from torch_imdb.progress import Progress
from torch_imdb.sampling import sample_background

INSTALL_HINT = "pip install 'torch-imdb[ray]' (or pip install 'ray[data]')"
BYTES_PER_ROW_GUESS = 1000  # sizes the blocks of CSV / JSON input, whose row count is unknown before reading


def require_ray(address: str | None = None):
    """Import Ray Data, or say in one line how to install it.

    ``ray start`` turns on token authentication by default, but a driver sends no token
    unless RAY_AUTH_MODE=token is set when Ray is first imported. So to join a cluster,
    with a token at hand and the mode unset, the mode is set before the import.
    """
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if address and "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN") or token_file.exists()):
        os.environ["RAY_AUTH_MODE"] = "token"
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError(f"--engine ray needs Ray Data, which is not installed: {INSTALL_HINT}") from None
    return ray


def part_name(rows: np.ndarray) -> str:
    """A part's file name, a function of the review ids it holds: a retried batch rewrites its own file."""
    return f"part-{hashlib.sha256(np.sort(rows).astype('<i8').tobytes()).hexdigest()[:20]}.parquet"


def already_done(rows: np.ndarray, done: np.ndarray) -> np.ndarray:
    """Which of ``rows`` are in the sorted array ``done`` (a binary search each: ``done`` may hold millions)."""
    if not len(done):
        return np.zeros(len(rows), dtype=bool)
    pos = np.minimum(np.searchsorted(done, rows), len(done) - 1)
    return done[pos] == rows


class BatchExplainer:
    """The actor: holds the model, vocabulary and background; explains one batch of texts per call.

    ``payload`` is ``[ObjectRef]`` to a dict with checkpoint, bg_ids (B, T), done (sorted
    ids to skip), out, compile, key (the run key each part carries). Returns one summary row per batch: the part written,
    its reviews, the ids skipped for lack of text, the node it ran on.
    """

    def __init__(self, payload: list, threads: int) -> None:
        import ray

        torch.set_num_threads(threads)
        p = ray.get(payload[0])
        self.ckpt: Checkpoint = p["checkpoint"]
        self.bg = torch.from_numpy(p["bg_ids"])
        self.done = p["done"]
        self.out = Path(p["out"])
        self.key = p["key"]
        self.engine = fast_engine(self.ckpt.model, len(self.bg), p["compile"])
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = np.array([review_id(v, "--input") for v in batch["id"]], dtype=np.int64)
        texts = batch["text"]
        labels = batch["label"] if "label" in batch else [None] * len(rows)
        labels = np.array([review_label(v, f"--input id {r}") for v, r in zip(labels, rows)], dtype=np.int64)
        has_text = np.array([isinstance(t, str) and bool(t.strip()) for t in texts], dtype=bool)
        todo = has_text & ~already_done(rows, self.done)
        name = ""
        if todo.any():
            ids = self.ckpt.vocab.encode_many([t for t, k in zip(texts, todo) if k], self.ckpt.maxlen)
            table = explain_batch(self.engine, self.bg, ids, rows[todo], labels[todo], self.ckpt.fingerprint, self.key)
            name = part_name(rows[todo])
            write_part(self.out / name, table)
        return {"part": np.array([name]), "reviews": np.array([int(todo.sum())]),
                "skipped": np.array([json.dumps(rows[~has_text].tolist())]), "node": np.array([self.node])}


def ray_reads(files: list[Path]) -> bool:
    """Whether Ray Data's own reader reads the input: parquet files with ids (else ours does, and warns)."""
    return files[0].suffix.lower() == ".parquet" and all("id" in columns_of(f) for f in files)


def read_dataset(ray, spec: str, files: list[Path], blocks: int, encoding: str, log=print):
    """The input as a Ray Dataset of id, text[, label]: Ray Data's reader for parquet with ids, else ours."""
    if not ray_reads(files):
        got = read_usable_texts(spec, log, encoding)
        table = pa.table({"id": got.ids, "text": got.texts, "label": got.labels})
        step = max(1, math.ceil(len(got.ids) / blocks))
        return ray.data.from_arrow([table.slice(k, step) for k in range(0, len(got.ids), step)])
    # Reading is light, and a full actor pool must not starve it (see explain_input_ray): 0 CPUs.
    wanted = [c for c in ("id", "text", "label") if c in columns_of(files[0])]
    return ray.data.read_parquet([str(f) for f in files], columns=wanted, num_cpus=0, override_num_blocks=blocks)


def estimated_rows(files: list[Path]) -> int:
    """Rows in the input: exact for parquet (from its footer), a guess from the size otherwise."""
    if files[0].suffix.lower() == ".parquet":
        for f in files:
            columns_of(f)  # a damaged file is one line here, not a traceback from inside Ray
        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    return max(1, sum(f.stat().st_size for f in files) // BYTES_PER_ROW_GUESS)


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """A one-line error when nothing listens at ``--ray-address`` (Ray itself would wait for minutes)."""
    if address is None or address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--ray-address {address}: expected HOST:PORT of the head node (e.g. 10.0.0.1:6379) or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UsageError(f"--ray-address {address}: no Ray head answers there ({exc.strerror or exc}); start one with "
                         "`ray start --head` or check the address") from None


def connect(ray, address: str | None) -> None:
    """Join the cluster at ``address``, or start a new local Ray on this machine when it is None; a failure is one line."""
    options = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING, configure_logging=True)
    if address is None:
        ray.init(address="local", **options)  # "local": never join a cluster started earlier on this machine
        return
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError) as exc:
        ray.shutdown()
        raise UsageError(f"could not join the Ray cluster at {address} ({type(exc).__name__}); check the address, "
                         "and for token authentication RAY_AUTH_MODE=token and the token (RAY_AUTH_TOKEN or "
                         "~/.ray/auth_token)") from None


def cause(exc: BaseException) -> UsageError | None:
    """The UsageError raised inside a Ray task, when that is what failed a run."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, UsageError):
            return UsageError(str(exc).splitlines()[-1].split("UsageError: ")[-1])
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def explain_input_ray(ckpt: Checkpoint, dataset, *, spec: str, out_dir: str | Path,
                      settings: RunSettings = RunSettings(), log=print) -> dict:
    """Attribute every review of ``spec`` on Ray into parquet parts under ``out_dir``; returns the manifest.

    ``settings.workers`` actors (0: as many as the cluster's CPUs allow) of ``settings.threads_per_worker``
    torch threads each explain batches of ``settings.chunk_reviews``, on the cluster at ``settings.address``
    (None: a local Ray, started and stopped here). The parts hold the local runner's columns (see
    :func:`~torch_imdb.explain.corpus.explain_batch`).
    """
    ray = require_ray(settings.address)
    check_address(settings.address)
    notes: list[str] = []
    files = input_files(spec, notes)
    if ray_reads(files):  # (our reader, used otherwise, gives these warnings itself)
        for note in notes:
            log(f"warning: {spec}: {note}")
    out, encoding, threads_per_worker = Path(out_dir), settings.encoding, settings.threads_per_worker
    bg_rows, bg_ids = sample_background(ckpt, dataset, settings.background, settings.seed, settings.cache_dir)
    source = {"runner": "ray", "input": [str(f.resolve()) for f in files], "encoding": encoding,
              "input_sha256": input_fingerprint(files, encoding)}
    recorded = settings.manifest(ckpt, bg_rows, source)
    finished = start_run(out, recorded)
    done = part_rows(finished)
    if len(done):
        log(f"resuming: {len(done)} reviews in {len(finished)} parts already in {out}")

    t0 = time.perf_counter()
    started_here = not ray.is_initialized()
    if started_here:
        connect(ray, settings.address)
    try:
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        # Ray Data's newer file reader lists files in a task that always takes a whole CPU; with
        # every CPU held by the actor pool that task never runs and the job hangs. The classic
        # reader's tasks take the num_cpus we give them (0).
        ctx.use_datasource_v2 = False
        cpus = int(ray.cluster_resources().get("CPU", 0))
        workers = settings.workers or max(1, cpus // threads_per_worker)
        if workers * threads_per_worker > cpus:
            raise UsageError(f"--workers {workers} x --threads-per-worker {threads_per_worker} needs "
                             f"{workers * threads_per_worker} CPUs but the Ray cluster has {cpus}")
        ray_started = time.perf_counter() - t0
        rows_guess = estimated_rows(files)
        batch_reviews = max(1, min(settings.chunk_reviews, math.ceil(rows_guess / workers)))  # a small input still feeds every actor
        blocks = max(2 * workers, math.ceil(rows_guess / batch_reviews))
        ds = read_dataset(ray, spec, files, blocks, encoding, log)
        mark_started(out, recorded)
        payload = ray.put({"checkpoint": ckpt, "bg_ids": bg_ids, "done": done, "out": str(out.resolve()),
                           "compile": settings.compile, "key": run_key(recorded)})
        results = ds.map_batches(BatchExplainer, fn_constructor_kwargs={"payload": [payload],
                                                                        "threads": threads_per_worker},
                                 batch_size=batch_reviews, compute=ray.data.ActorPoolStrategy(
                                     size=workers, max_tasks_in_flight_per_actor=2),  # one batch waits at each actor: no idle gap
                                 num_cpus=threads_per_worker,
                                 batch_format="numpy")
        computed, skipped, nodes = 0, [], set()
        bar = Progress(rows_guess if files[0].suffix.lower() == ".parquet" else None, "explaining on Ray", "reviews",
                       log)
        try:
            for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
                for n, skip, node in zip(batch["reviews"], batch["skipped"], batch["node"]):
                    skip = json.loads(skip)
                    computed += int(n)
                    skipped += skip
                    nodes.add(str(node))
                    bar.update(int(n) + len(skip))
        except Exception as exc:  # a UsageError inside an actor reaches us wrapped by Ray
            usage = cause(exc)
            if usage is None:
                raise
            raise usage from None
        finally:
            bar.close()
    finally:
        if started_here:
            ray.shutdown()
    seconds = time.perf_counter() - t0
    for row in skipped:
        log(f"warning: {spec}: id {row}: no text, skipped")
    all_parts = sorted(out.glob("part-*.parquet"))
    total = part_rows(all_parts)
    repeated = first_repeat(total)
    if repeated is not None:
        raise UsageError(f"review id {repeated} was explained twice: the input repeats it; ids must be unique")
    expected = shared_base_value(fast_engine(ckpt.model, settings.background, compile=False), torch.from_numpy(bg_ids))
    return finish_run(out, recorded, expected_value=expected, n_reviews=int(len(total)), skipped_rows=len(skipped),
                      reviews_computed_this_run=computed, seconds_this_run=seconds, seconds_ray_start=ray_started,
                      reviews_per_second_this_run=computed / seconds if computed else None, workers=workers,
                      threads_per_worker=threads_per_worker, nodes_used=len(nodes), batch_reviews=batch_reviews,
                      compiled=settings.compile, parts=len(all_parts))
