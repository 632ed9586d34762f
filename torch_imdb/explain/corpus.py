"""Explain a whole split with the fast engine, streamed to parquet in resumable chunks.

Each chunk of reviews becomes ``chunk-XXXXX.parquet`` (written atomically);
a restart skips chunks already on disk, so an interrupted run loses at most one
chunk. ``manifest.json`` records the settings (seed, background rows, the
input's content hash, ...), the timing and the weights fingerprint; every chunk
carries the fingerprint and a hash of the settings (the run key) in its parquet
metadata, and neither a restart nor a reader combines chunks of different
weights, settings or input.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from torch_imdb.checkpoint import Checkpoint
from torch_imdb.data import encode_split, sample_indices
from torch_imdb.errors import UsageError
from torch_imdb.explain.engines import make_engine
from torch_imdb.explain.fast import FastDeepShap
from torch_imdb.io import atomic_path, atomic_write_json, read_json
from torch_imdb.progress import Progress
from torch_imdb.sampling import sample_background


FINGERPRINT_KEY = "torch_imdb.weights_fingerprint"
RUN_KEY = "torch_imdb.run_key"


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """How a corpus run explains, built once from the command line and handed to either runner.

    background: training reviews in the reference set, drawn with ``seed``; chunk_reviews: reviews per parquet
    chunk (the local runner) or per batch (Ray); compile: the fast engine compiled; cache_dir: where encoded
    splits are cached. On Ray only: address (None starts a local Ray), workers (0: as many as the CPUs allow),
    threads_per_worker, and the input's encoding.
    """

    background: int = 100
    seed: int = 0
    chunk_reviews: int = 500
    compile: bool = True
    cache_dir: str | Path | None = None
    address: str | None = None
    workers: int = 0
    threads_per_worker: int = 1
    encoding: str = "utf-8"

    def __post_init__(self) -> None:
        if self.chunk_reviews < 1 or self.threads_per_worker < 1 or self.workers < 0:
            raise UsageError("--chunk-reviews and --threads-per-worker must be at least 1, --workers at least 0")

    def manifest(self, ckpt: Checkpoint, background_rows: np.ndarray, source: dict) -> dict:
        """The settings a run's manifest records and a restart must match: ``source`` (what was explained), the
        background, its seed and rows, and what identifies the model (weights, vocabulary, maxlen, epoch)."""
        return {**source, "background": self.background, "seed": self.seed,
                "background_train_rows": [int(r) for r in background_rows], "maxlen": ckpt.maxlen,
                "checkpoint_epoch": ckpt.config.get("epoch"), "vocab_fingerprint": ckpt.vocab.fingerprint(),
                "weights_fingerprint": ckpt.fingerprint}


def run_key(settings: dict) -> str:
    """A hash of a run's settings (weights, input content, background, ...): a chunk carries the key of its run."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def default_out_dir(checkpoint: str | Path) -> Path:
    """Where ``--all-test`` writes, and ``python -m torch_imdb.words`` reads, by default: CHECKPOINT/all_test."""
    return Path(checkpoint) / "all_test"


def explain_split(ckpt: Checkpoint, dataset, out_dir: str | Path, *, settings: RunSettings = RunSettings(),
                  split: str = "test", limit: int = 0, log=print) -> dict:
    """Attribute every review of ``split`` (or a seeded sample of ``limit``) and stream to ``out_dir``.

    See :func:`explain_ids` for the output. ``row`` is the index in the split.
    """
    data = dataset[split]
    rows = (np.arange(len(data)) if not limit
            else np.sort(sample_indices(len(data), limit, settings.seed + 1, what="--limit")))
    tokens, labels = encode_split(data, ckpt.vocab, ckpt.maxlen, settings.cache_dir)
    return explain_ids(ckpt, dataset, tokens=tokens[rows], review_ids=rows, labels=labels[rows], out_dir=out_dir,
                       source={"split": split}, settings=settings, log=log)


def fast_engine(model, background: int, compile: bool = True) -> FastDeepShap:
    """The fast engine as both corpus runners use it: chunks of about 2048 (review, background) pairs."""
    return make_engine("fast-compiled" if compile else "fast", model,
                       chunk_pairs=max(background, 2048 // background * background))


def shared_base_value(engine: FastDeepShap, bg: torch.Tensor) -> float | None:
    """E f over the background when it is one value for every review; None when the head reads each review's
    padding mask (the chunks' ``base_value`` column holds it per review)."""
    return None if engine.head.reads_inputs else engine.expected_value(bg)


def explain_batch(engine: FastDeepShap, bg: torch.Tensor, ids: np.ndarray, rows: np.ndarray, labels: np.ndarray,
                  fingerprint: str, key: str = "") -> pa.Table:
    """Attribute one batch of encoded reviews ids (n, T) against the background ids (B, T): one parquet table.

    The one per-batch function behind the local runner and the Ray actors, so both
    write the same columns: ``row`` (the review's id), ``label`` (-1 when unknown),
    ``output`` (P(positive)), ``base_value`` (E f over the background with the review's
    padding mask: one value for all reviews unless the head reads the mask), ``residual``
    (completeness error), ``ids`` (T int32) and ``values`` (T float32), with the weights
    fingerprint in the table's metadata.
    """
    result = engine.attribute(torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)), bg)
    base = np.broadcast_to(np.asarray(result.expected_value, dtype=np.float64), result.outputs.shape)
    return pa.table({
        "row": pa.array(np.asarray(rows, dtype=np.int64)),
        "label": pa.array(np.asarray(labels).astype(np.int8)),
        "output": pa.array(result.outputs.astype(np.float32)),
        "base_value": pa.array(base.astype(np.float32)),
        "residual": pa.array(result.residual.astype(np.float32)),
        "ids": pa.array(list(np.asarray(ids, dtype=np.int32)), type=pa.list_(pa.int32())),
        "values": pa.array(list(result.values.astype(np.float32)), type=pa.list_(pa.float32())),
    }).replace_schema_metadata({FINGERPRINT_KEY: fingerprint, RUN_KEY: key})


def write_part(path: Path, table: pa.Table) -> None:
    """Write one table of attributions atomically (temporary file, fsync, rename)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def part_files(out: Path) -> list[Path]:
    """The finished attribution files in ``out``: the local runner's chunks and the Ray runner's parts."""
    return sorted([*out.glob("chunk-*.parquet"), *out.glob("part-*.parquet")])


def read_part(path: Path, columns: list[str] | None = None) -> pa.Table:
    """One finished part; a one-line error when it is damaged (a chunk can only be damaged from outside the run)."""
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise UsageError(f"{path} is damaged ({str(exc).strip()[:120] or type(exc).__name__}); delete it and run the "
                         "same command again to recompute it") from None


def part_rows(parts: list[Path]) -> np.ndarray:
    """The review ids (``row``) held by these parts, sorted."""
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate([read_part(p, columns=["row"])["row"].to_numpy() for p in parts]))


def first_repeat(sorted_rows: np.ndarray) -> int | None:
    """The first review id that appears more than once in sorted ids, or None."""
    repeated = sorted_rows[1:][sorted_rows[1:] == sorted_rows[:-1]]
    return int(repeated[0]) if len(repeated) else None


def read_manifest(out: Path) -> dict | None:
    """``out/manifest.json`` (None when there is none); a one-line error when it is damaged."""
    path = out / "manifest.json"
    if not path.exists():
        return None
    return read_json(path, f"delete {out} to start over", what="a run's manifest")


def start_run(out: Path, settings: dict) -> list[Path]:
    """Check that ``out`` can take a run with ``settings``; returns the parts a previous run finished there.

    An empty folder starts a run; a folder of the same weights, settings and input
    resumes it (every finished part's fingerprint and run key is checked); anything
    else is refused in one line. Nothing is written here: a refused folder is left as
    it was, and :func:`mark_started` writes the manifest once there is work to do.
    Leftover temporary files of an interrupted run are removed.
    """
    out.mkdir(parents=True, exist_ok=True)
    fingerprint, key = settings["weights_fingerprint"], run_key(settings)
    old, finished = read_manifest(out), part_files(out)
    if old is None and finished:
        raise UsageError(f"{out} holds attribution chunks but no manifest; use another --out-dir or delete it to start over")
    if old is not None:
        if old.get("weights_fingerprint") != fingerprint:
            raise UsageError(f"{out} holds attributions of other weights (fingerprint {old.get('weights_fingerprint')}, "
                             f"the checkpoint's is {fingerprint}); use another --out-dir or delete it to start over")
        if "input_sha256" in settings and old.get("input_sha256") != settings["input_sha256"]:
            raise UsageError(f"the input changed since the run in {out} began (its content hash differs); its finished "
                             "chunks hold the old texts' values: delete the folder or use another --out-dir")
        diff = sorted(k for k in settings if old.get(k) != settings[k])
        if diff:
            raise UsageError(f"{out} holds a run with other settings ({', '.join(diff)} differ); use another --out-dir "
                             "or delete it to start over")
    for path in finished:
        check_part(path, fingerprint, key)
    for stale in [*out.glob(".chunk-*.tmp"), *out.glob(".part-*.tmp")]:
        stale.unlink(missing_ok=True)
    return finished


def mark_started(out: Path, settings: dict) -> None:
    """Write the manifest of a run about to compute parts: its settings and run key, marked incomplete until the end."""
    atomic_write_json(out / "manifest.json", {**settings, "run_key": run_key(settings), "complete": False})


def finish_run(out: Path, settings: dict, **outcome) -> dict:
    """Write and return the manifest of a finished run: its settings, run key and ``outcome`` (timings, counts)."""
    manifest = {**settings, "run_key": run_key(settings), "complete": True, **outcome}
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def explain_ids(ckpt: Checkpoint, dataset, *, tokens: np.ndarray, review_ids: np.ndarray, labels: np.ndarray,
                out_dir: str | Path, source: dict, settings: RunSettings = RunSettings(), log=print) -> dict:
    """Attribute encoded reviews, token ids ``tokens`` (N, T), against ``settings.background`` train reviews drawn
    with ``settings.seed``, in chunks.

    Each chunk of ``settings.chunk_reviews`` reviews is one parquet file of :func:`explain_batch`'s
    columns, ``row`` holding each review's id from ``review_ids`` (N,) and ``label`` from ``labels`` (N,),
    -1 where unknown. ``source`` describes the input and joins the settings a restart must match. Returns
    the manifest dict (also written to ``out_dir/manifest.json``).
    """
    out, per = Path(out_dir), settings.chunk_reviews
    bg_rows, bg_ids = sample_background(ckpt, dataset, settings.background, settings.seed, settings.cache_dir)
    recorded = {**settings.manifest(ckpt, bg_rows, source), "n_reviews": int(len(review_ids)), "chunk_reviews": per}
    done = start_run(out, recorded)
    key = run_key(recorded)
    engine = fast_engine(ckpt.model, settings.background, settings.compile)
    bg = torch.from_numpy(bg_ids)
    chunks = list(range(0, len(review_ids), per))
    if done:
        log(f"resuming: {len(done)} of {len(chunks)} chunks already in {out}")
    if len(done) < len(chunks):
        mark_started(out, recorded)
    t0 = time.perf_counter()
    computed = 0
    with Progress(len(review_ids), "explaining", "reviews", log) as progress:
        for start in chunks:
            path = out / f"chunk-{start // per:05d}.parquet"
            sl = slice(start, start + per)
            if not path.exists():
                write_part(path, explain_batch(engine, bg, tokens[sl], review_ids[sl], labels[sl], ckpt.fingerprint,
                                               key))
                computed += len(review_ids[sl])
            progress.update(len(review_ids[sl]))
    seconds = time.perf_counter() - t0
    return finish_run(out, recorded, expected_value=shared_base_value(engine, bg), reviews_computed_this_run=computed,
                      seconds_this_run=seconds, seconds_per_review_this_run=seconds / computed if computed else None,
                      compiled=settings.compile, chunks=len(chunks), torch_threads=torch.get_num_threads())


def check_part(path: Path, fingerprint: str | None, key: str | None) -> None:
    """A one-line error unless the part carries this weights ``fingerprint`` and run ``key`` (None: not checked)."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (pa.ArrowException, OSError):
        read_part(path)  # raises the damaged-file line
        raise
    found = meta.get(FINGERPRINT_KEY.encode(), b"").decode() or None
    if fingerprint is not None and found != fingerprint:
        raise UsageError(f"{path} was computed from other weights (fingerprint {found}, expected {fingerprint}); "
                         f"delete {path.parent} or use another --out-dir to start over")
    found_key = meta.get(RUN_KEY.encode(), b"").decode() or None
    if key is not None and found_key != key:
        raise UsageError(f"{path} belongs to another run (other input or settings) than {path.parent}/manifest.json; "
                         f"delete {path.parent} or use another --out-dir to start over")


def read_attributions(out_dir: str | Path, fingerprint: str | None = None) -> dict[str, np.ndarray]:
    """Load every part of a run (either runner) into arrays sorted by ``row``: row, label, output, base_value,
    residual, ids (N, T), values (N, T).

    Every part must carry the manifest's weights fingerprint (and ``fingerprint``,
    when given), and no review may appear twice.
    """
    out = Path(out_dir)
    manifest = read_manifest(out) or {}
    expected = manifest.get("weights_fingerprint")
    if fingerprint is not None and expected != fingerprint:
        raise UsageError(f"attributions in {out_dir} come from other weights (fingerprint {expected}, the checkpoint's "
                         f"is {fingerprint}); re-run `python -m torch_imdb.explain --all-test` for this checkpoint")
    files = part_files(out)
    if not files:
        raise UsageError(f"no attribution chunks in {out_dir}; run `python -m torch_imdb.explain --all-test` first")
    for f in files:
        check_part(f, expected, manifest.get("run_key"))
    # parts written before the base_value column existed read it as missing (NaN)
    table = pa.concat_tables((read_part(f) for f in files), promote_options="default")
    order = np.argsort(table["row"].to_numpy(), kind="stable")
    cols = {k: table[k].to_numpy()[order] for k in ("row", "label", "output", "residual")}
    if "base_value" in table.column_names:
        cols["base_value"] = table["base_value"].to_numpy(zero_copy_only=False).astype(np.float64)[order]
    repeated = first_repeat(cols["row"])
    if repeated is not None:
        raise UsageError(f"review {repeated} appears more than once in {out_dir}; delete it and run again")
    cols["ids"] = np.stack(table["ids"].to_numpy(zero_copy_only=False))[order]
    cols["values"] = np.stack(table["values"].to_numpy(zero_copy_only=False))[order]
    return cols
