"""What a long review costs: the fast engine on a packed model, seconds per review against the review's length.

The checkpoint's model (by default the attention BiLSTM) is run *packed*: the same
embedding, recurrent layer and head, but reading reviews of up to --maxlen words,
padded at the end and packed by their lengths, as a user with variable-length
batches writes it (:class:`PackedModel`). For each length L of --lengths,
--reviews test reviews of at least L words, cut to their first L words and padded
to --maxlen, are explained against --background training reviews (their first
--maxlen words) by the fast engine: seconds per review and the (pair, layer,
direction, step) cells its multiplier backward ran. The engine runs with
``trim_padding`` (the packed model masks everything past a review's end, and the
engine checks each output against the model's), so its head, too, reads only the
review's words. Then one batch of --reviews
reviews at their own lengths (up to --maxlen) in one call. Each review runs over
its own steps only, so the time grows with L, not with --maxlen; the values are
checked against shap on a few reviews of the shortest length.

Writes results/length_sweep.json and results/length_sweep.png. ``--quick`` runs a
small random model on planted lengths in seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from torch_imdb.cli import Parser, answer_help, checkpoint_options, count, int_list, seed_value
from torch_imdb.config import MAX_LEN, MAX_REVIEWS
from torch_imdb.errors import UsageError, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python benchmarks/length_sweep.py", description=__doc__,
               parents=[checkpoint_options()], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(checkpoint="artifacts/attention")
    p.add_argument("--lengths", type=int_list, default=[25, 50, 100, 200, 400],
                   help="review lengths of the sweep (words; comma-separated)")
    p.add_argument("--maxlen", type=count(1, MAX_LEN), default=400, help="the padded length every batch has")
    p.add_argument("--reviews", type=count(1, MAX_REVIEWS), default=10, help="reviews per length")
    p.add_argument("--background", type=count(1, MAX_REVIEWS), default=100, help="training reviews in the background")
    p.add_argument("--seed", type=seed_value, default=0, help="sampling seed")
    p.add_argument("--threads", type=count(1, 1024), default=1, help="torch threads")
    p.add_argument("--out", default="results", help="folder for length_sweep.json/.png")
    p.add_argument("--quick", action="store_true", help="a small random model on planted lengths, in seconds "
                   "(sets --lengths 5,10,20,40 --maxlen 40 --background 8 --reviews 3)")
    return p


if __name__ == "__main__":
    answer_help(build_parser)  # before the heavy imports below

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

from torch_imdb.explain.engines import make_engine  # noqa: E402
from torch_imdb.io import atomic_savefig, atomic_write_json  # noqa: E402
from torch_imdb.model import ModelConfig, SentimentRNN  # noqa: E402


class PackedModel(nn.Module):
    """A :class:`SentimentRNN`'s weights read packed: ids (batch, T) padded at the end with 0 -> P(positive) (batch, 1).

    The recurrent layer runs over each review's own words; the head (final state, mean, max or
    attention over the words) is the model's.
    """

    def __init__(self, model: SentimentRNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        m = self.model
        mask = ids != 0
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(m.embedding(ids), lengths, batch_first=True, enforce_sorted=False)
        out, h = m.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        pool, keep = m.config.pool, mask.unsqueeze(-1)
        if pool == "last":
            h = h[0] if isinstance(h, tuple) else h
            pooled = h[-m.config.directions :].transpose(0, 1).reshape(len(ids), -1)
        elif pool == "mean":
            pooled = (out * keep).sum(1) / keep.sum(1)
        elif pool == "max":
            pooled = out.masked_fill(~keep, float("-inf")).amax(dim=1)
        else:
            pooled = (m.attention(out, mask).unsqueeze(-1) * out).sum(dim=1)
        return torch.sigmoid(m.fc(pooled))


def post_padded(ids: np.ndarray, length: int, maxlen: int) -> np.ndarray:
    """The first ``length`` tokens of pre-padded rows ids (n, T) (their padding dropped), padded at the end to maxlen."""
    out = np.zeros((len(ids), maxlen), dtype=np.int64)
    for k, row in enumerate(ids):
        words = row[row != 0][:length]
        out[k, : len(words)] = words
    return out


def load(args):
    """(model, test ids (n, maxlen) pre-padded, background ids, what)."""
    g = np.random.default_rng(args.seed)
    if args.quick:
        torch.manual_seed(args.seed)
        model = SentimentRNN(ModelConfig(vocab_size=50, embed_dim=8, hidden=8, bidirectional=True, pool="attention",
                                         attention_dim=4)).eval()
        ids = g.integers(3, 50, (args.reviews * 4, args.maxlen))
        return model, ids, g.integers(3, 50, (args.background, args.maxlen)), {"model": "random-init small model (quick)"}
    from torch_imdb.checkpoint import load_checkpoint
    from torch_imdb.data import encode_split, load_imdb, sample_indices

    ckpt = load_checkpoint(args.checkpoint)
    ds = load_imdb(args.data)
    rows = sample_indices(len(ds["test"]), 2000, args.seed + 1, what="test reviews")
    ids, _ = encode_split(ds["test"].select(rows), ckpt.vocab, args.maxlen)
    bg_rows = sample_indices(len(ds["train"]), args.background, args.seed, what="--background")
    bg, _ = encode_split(ds["train"].select(bg_rows), ckpt.vocab, args.maxlen)
    return ckpt.model.eval(), ids, bg, {"model": f"trained {ckpt.model.config.describe()} {args.checkpoint}, run packed",
                                        "weights_fingerprint": ckpt.fingerprint}


def run(args) -> dict:
    from torch_imdb.machine import machine_info

    if args.quick:
        args.lengths, args.maxlen, args.background, args.reviews = [5, 10, 20, 40], 40, 8, 3
    lengths = sorted(set(args.lengths))
    if max(lengths) > args.maxlen:
        raise UsageError(f"--lengths must not exceed --maxlen={args.maxlen}, got {max(lengths)}")
    torch.set_num_threads(args.threads)
    model, ids, bg_ids, what = load(args)
    packed = PackedModel(model).eval()
    n_words = (ids != 0).sum(1)
    bg = torch.from_numpy(post_padded(bg_ids, args.maxlen, args.maxlen))
    engine = make_engine("fast", packed, trim_padding=True)  # the head, too, runs over each review's own words
    engine.attribute(torch.from_numpy(post_padded(ids[:1], lengths[0], args.maxlen)), bg)  # warm-up
    points = []
    for L in lengths:
        pool = ids[n_words >= L][: args.reviews]
        if len(pool) < args.reviews:
            raise UsageError(f"only {len(pool)} of the sampled reviews have {L} words; lower --lengths or --reviews")
        x = torch.from_numpy(post_padded(pool, L, args.maxlen))
        steps0 = engine.pair_steps
        t0 = time.perf_counter()
        res = engine.attribute(x, bg)
        seconds = time.perf_counter() - t0
        points.append({"length": L, "reviews": len(x), "seconds": seconds, "seconds_per_review": seconds / len(x),
                       "pair_steps_per_review": (engine.pair_steps - steps0) / len(x),
                       "max_abs_residual": float(np.abs(res.residual).max())})
        print(f"L={L:4d}: {seconds / len(x):.3f} s per review ({points[-1]['pair_steps_per_review']:.0f} pair steps)")
    mixed_rows = np.random.default_rng(args.seed).choice(len(ids), args.reviews, replace=False)
    x = torch.from_numpy(post_padded(ids[mixed_rows], args.maxlen, args.maxlen))
    t0 = time.perf_counter()
    engine.attribute(x, bg)
    mixed = {"reviews": len(x), "seconds_per_review": (time.perf_counter() - t0) / len(x),
             "mean_length": float((x != 0).sum(1).double().mean()), "lengths": (x != 0).sum(1).tolist()}
    check_x = torch.from_numpy(post_padded(ids[n_words >= lengths[0]][:2], lengths[0], args.maxlen))
    check = float(np.abs(engine.attribute(check_x, bg[:10]).values
                         - make_engine("shap", packed).attribute(check_x, bg[:10]).values).max())
    slope = np.polyfit([p["length"] for p in points], [p["seconds_per_review"] for p in points], 1)
    record = {**what, "maxlen": args.maxlen, "trim_padding": True, "background": len(bg), "seed": args.seed, "threads": args.threads,
              "points": points, "mixed_batch": mixed,
              "seconds_per_review_fit": {"per_word": float(slope[0]), "intercept": float(slope[1])},
              "max_abs_diff_vs_shap": check, "machine": machine_info(),
              "command": "python benchmarks/length_sweep.py " + " ".join(sys.argv[1:])}
    out = Path(args.out)
    atomic_write_json(out / "length_sweep.json", record)
    plot(record, out / "length_sweep.png")
    print(f"mixed batch, mean length {mixed['mean_length']:.0f}: {mixed['seconds_per_review']:.3f} s per review; "
          f"fast vs shap {check:.1e}; wrote {out / 'length_sweep.json'} and .png")
    return record


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = record["points"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p["length"] for p in pts], [p["seconds_per_review"] for p in pts], "o-", label="reviews cut to L words")
    m = record["mixed_batch"]
    ax.plot([m["mean_length"]], [m["seconds_per_review"]], "s", label="one batch at their own lengths (mean)")
    ax.set_xlabel(f"review length L (words; every batch padded to {record['maxlen']})")
    ax.set_ylabel("seconds per review")
    ax.set_xlim(0, record["maxlen"] * 1.05)
    ax.set_ylim(0, None)
    ax.set_title(f"Fast engine, packed: B={record['background']}, {record['threads']} thread(s)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(path, fig)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
