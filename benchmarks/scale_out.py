"""Scale-out: reviews per second on the 25,000 test reviews, for the local engine and for Ray with 1 and 2 workers.

All three runs explain the same input file: the test split written as parquet
(id = row in the split, text, label), with the same 100 seeded background
reviews and the compiled fast engine.

- local: ``python -m torch_imdb.explain --input FILE``, torch's default thread count;
- ray-2 and ray-1: the same with ``--engine ray --workers 2`` and ``--workers 1`` (actors
  of 1 thread each), on a local Ray that the command starts and stops itself.

Each command runs in a fresh process from an empty output folder and is timed end
to end, as a user waits for it: Python's start, reading, encoding, Ray's start,
actor start, torch.compile (from a warm on-disk compile cache, filled by a warm-up
first so that every run finds it warm) and writing the parts.
Also reported: bytes moved per review (text in, parquet out), the largest
difference between Ray's and the local values, and an estimate for 10 million
reviews on 16 machines of 16 cores. Writes results/scale_out.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from torch_imdb.cli import Parser, answer_help, checkpoint_options, count, sampling_options
from torch_imdb.config import MAX_REVIEWS
from torch_imdb.errors import UsageError, run_cli

def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python benchmarks/scale_out.py", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter,
               parents=[checkpoint_options(), sampling_options()])
    p.add_argument("--limit", type=count(0, MAX_REVIEWS), default=0,
                   help="a seeded sample of this many test reviews (0: all 25,000)")
    p.add_argument("--chunk-reviews", type=count(), default=250,
                   help="reviews per local chunk and per Ray batch (smaller batches shorten the tail where one actor idles)")
    p.add_argument("--work-dir", default="artifacts/scale_out", help="where the input file and the runs' outputs go")
    p.add_argument("--out", default="results/scale_out.json")
    return p


if __name__ == "__main__":
    answer_help(build_parser)  # before the heavy imports below

# Everything below loads torch: --help has been answered above.
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from torch_imdb.checkpoint import load_checkpoint  # noqa: E402
from torch_imdb.data import load_imdb, sample_indices  # noqa: E402
from torch_imdb.sampling import sample_background  # noqa: E402
from torch_imdb.explain.corpus import fast_engine, read_attributions  # noqa: E402
from torch_imdb.io import atomic_path, atomic_write_json  # noqa: E402
from torch_imdb.machine import machine_info  # noqa: E402

CORPUS, MACHINES, CORES = 10_000_000, 16, 16


def write_input(dataset, path: Path, limit: int, seed: int) -> int:
    """The test split (or a seeded sample of ``limit``) as parquet: id, text, label. Returns its rows."""
    test = dataset["test"]
    rows = np.arange(len(test)) if not limit else np.sort(sample_indices(len(test), limit, seed + 1, what="--limit"))
    part = test.select(rows)
    table = pa.table({"id": rows.astype(np.int64), "text": part["text"], "label": np.asarray(part["label"], np.int64)})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return len(rows)


def run_explain(args, path: Path, out: Path, *extra: str) -> float:
    """``python -m torch_imdb.explain --input FILE`` in a fresh process, as a user runs it; seconds end to end."""
    cmd = [sys.executable, "-m", "torch_imdb.explain", "--checkpoint", args.checkpoint, "--input", str(path),
           "--out-dir", str(out), "--background", str(args.background), "--seed", str(args.seed),
           "--chunk-reviews", str(args.chunk_reviews), *(["--data", args.data] if args.data else []), *extra]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise UsageError(f"{' '.join(cmd)} failed: {done.stderr.strip().splitlines()[-1:]}")
    return seconds


def folder_bytes(folder: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in folder.glob(pattern))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ckpt = load_checkpoint(args.checkpoint)
    dataset = load_imdb(args.data)
    cache = Path(args.checkpoint) / "cache"
    work = Path(args.work_dir)
    for stale in work.glob("out-*"):
        shutil.rmtree(stale)
    path = work / "test_reviews.parquet"
    n = write_input(dataset, path, args.limit, args.seed)

    # fill torch.compile's on-disk cache, so that no run below pays for a cold compile
    _, bg_ids = sample_background(ckpt, dataset, args.background, args.seed, cache)
    fast_engine(ckpt.model, args.background, compile=True).attribute(torch.from_numpy(bg_ids[:3]), torch.from_numpy(bg_ids))

    runs = {}
    seconds = run_explain(args, path, work / "out-local")
    runs["local"] = {"workers": 1, "torch_threads": torch.get_num_threads(), "seconds": seconds,
                     "reviews_per_second": n / seconds}
    print(f"local ({torch.get_num_threads()} threads): {seconds:.1f} s, {n / seconds:.1f} reviews/s", flush=True)
    for workers in (2, 1):
        out = work / f"out-ray-{workers}"
        seconds = run_explain(args, path, out, "--engine", "ray", "--workers", str(workers))
        m = json.loads((out / "manifest.json").read_text())
        runs[f"ray-{workers}"] = {"workers": workers, "torch_threads": 1, "seconds": seconds,
                                  "seconds_ray_start": m["seconds_ray_start"],
                                  "reviews_per_second": n / seconds}
        print(f"ray with {workers} worker(s): {seconds:.1f} s, {n / seconds:.1f} reviews/s", flush=True)

    local = read_attributions(work / "out-local", fingerprint=ckpt.fingerprint)
    agreement = {}
    for workers in (2, 1):
        got = read_attributions(work / f"out-ray-{workers}", fingerprint=ckpt.fingerprint)
        agreement[f"ray-{workers}"] = {"same_ids_in_order": bool(np.array_equal(got["row"], local["row"])),
                                       "reviews": int(len(got["row"])),
                                       "max_abs_diff_values": float(np.abs(got["values"] - local["values"]).max())}
    overhead = runs["local"]["reviews_per_second"] / runs["ray-2"]["reviews_per_second"] - 1
    per_core = runs["ray-1"]["reviews_per_second"]
    bytes_in = path.stat().st_size / n
    bytes_out = folder_bytes(work / "out-ray-2", "part-*.parquet") / n
    cluster_rate = per_core * MACHINES * CORES
    estimate = {
        "reviews": CORPUS, "machines": MACHINES, "cores_per_machine": CORES,
        "assumes": "one 1-thread actor per core at ray-1's measured per-core rate, on cores like these",
        "reviews_per_second": cluster_rate, "hours": CORPUS / cluster_rate / 3600,
        "input_gb": CORPUS * bytes_in / 1e9, "output_gb": CORPUS * bytes_out / 1e9,
        "input_mb_per_second": cluster_rate * bytes_in / 1e6, "output_mb_per_second": cluster_rate * bytes_out / 1e6,
        "parts": int(np.ceil(CORPUS / args.chunk_reviews)),
    }
    result = {
        "what": "reviews per second explaining the test reviews end to end (compiled fast engine, background "
                f"{args.background}), local engine vs Ray Data; generated by python benchmarks/scale_out.py",
        "weights_fingerprint": ckpt.fingerprint, "seed": args.seed, "background": args.background,
        "reviews": n, "chunk_reviews": args.chunk_reviews, "runs": runs,
        "ray_overhead_at_2_workers": overhead, "goal_overhead_at_most": 0.15,
        "agreement_with_local": agreement,
        "bytes_per_review": {"text_in_parquet": bytes_in, "attributions_out_parquet": bytes_out},
        "estimate": estimate, "machine": machine_info(),
    }
    atomic_write_json(args.out, result)
    print(f"Ray overhead at 2 workers: {100 * overhead:+.1f}% (goal at most +15%); "
          f"10M reviews on {MACHINES}x{CORES} cores: {estimate['hours']:.2f} h; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
