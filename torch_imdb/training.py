"""Training loop: Keras defaults (BCE, Adam lr 1e-3, batch 32), test evaluated every epoch.

With ``val_fraction > 0`` a seeded slice of the TRAIN split is held out and the
checkpoint of the best validation epoch is kept; the test split is reported
every epoch (as the original's ``validation_data``) but never used to choose.

After every epoch the whole training state (weights, optimiser moments, the
shuffling generator and torch's RNG, the epoch and the metrics so far) is saved
to ``OUT/train_state.pt``; ``fit(..., resume=True)`` (``--resume``) continues a
killed run from it and ends with the same weights, bit for bit, as a run that was
never interrupted (same seed, device and thread count). The file is removed when
the run finishes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from torch_imdb.architectures import build_model, parameter_count
from torch_imdb.checkpoint import MAX_PARAMETERS, save_checkpoint, saved_fingerprint
from torch_imdb.data import Vocab, encode_split, load_imdb
from torch_imdb.errors import UsageError
from torch_imdb.io import atomic_torch_save, atomic_write_json
from torch_imdb.machine import machine_info
from torch_imdb.config import RENAMED_OPTIONS, TrainConfig
from torch_imdb.model import ReviewClassifier
from torch_imdb.progress import Progress


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device torch knows (try cpu, cuda, cuda:0)") from None


@dataclass
class PreparedData:
    vocab: Vocab
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str = ""


def prepare_data(cfg: TrainConfig, cache_dir: str | Path | None = None) -> PreparedData:
    """Load IMDB, build the vocabulary from the train split only, encode both splits (cached)."""
    ds = load_imdb(cfg.data)
    train, test = ds["train"], ds["test"]
    if cfg.train_limit:
        train = train.select(np.random.default_rng(cfg.seed).permutation(len(train))[: cfg.train_limit])
    if cfg.test_limit:
        test = test.select(np.random.default_rng(cfg.seed + 1).permutation(len(test))[: cfg.test_limit])
    vocab = Vocab.build(train["text"], cfg.model.vocab_size)
    x_train, y_train = encode_split(train, vocab, cfg.maxlen, cache_dir)
    x_test, y_test = encode_split(test, vocab, cfg.maxlen, cache_dir)
    return PreparedData(vocab, x_train, y_train, x_test, y_test, source=str(cfg.data or "stanfordnlp/imdb"))


@torch.no_grad()
def evaluate(model: ReviewClassifier, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> tuple[float, float]:
    """Mean binary cross-entropy and accuracy of ``model`` on ids x (N, T) and labels y (N,)."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for k in range(0, len(x), batch_size):
        logits = model(x[k : k + batch_size])
        yk = y[k : k + batch_size]
        loss_sum += F.binary_cross_entropy_with_logits(logits, yk, reduction="sum").item()
        correct += ((logits > 0).float() == yk).sum().item()
    return loss_sum / len(x), correct / len(x)


PROGRESS_LINES = 10  # lines per epoch when the output is not a terminal (a log file)


def train_epoch(model: ReviewClassifier, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                batch_size: int, generator: torch.Generator, desc: str = "", log=None) -> tuple[float, float]:
    """One pass over (x, y) in a seeded random order; returns mean loss and accuracy.

    Progress: a bar on a terminal; otherwise ``PROGRESS_LINES`` lines per epoch through ``log`` (default stderr).
    """
    model.train()
    order = torch.randperm(len(x), generator=generator).to(x.device)
    loss_sum, correct, seen = 0.0, 0, 0
    starts = range(0, len(x), batch_size)
    with Progress(len(starts), desc, "batches", log, lines=PROGRESS_LINES, leave=False) as progress:
        for k in starts:
            idx = order[k : k + batch_size]
            logits = model(x[idx])
            loss = F.binary_cross_entropy_with_logits(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += ((logits.detach() > 0).float() == y[idx]).sum().item()
            seen += len(idx)
            progress.update(1, f"loss {loss_sum / seen:.4f} acc {correct / seen:.4f}")
    return loss_sum / seen, correct / seen


# Outputs that commands derive from a checkpoint and keep inside its folder by default.
DERIVED_OUTPUTS = ("all_test", "explain_text", "explain_input")


def move_aside_derived(out_dir: Path, log=print) -> list[Path]:
    """Rename derived outputs in ``out_dir`` to ``NAME.weights-<old fingerprint>`` before new weights are trained there.

    They were computed from the weights about to be replaced; kept under their
    fingerprint they can never be resumed or read as the new model's.
    """
    old = saved_fingerprint(out_dir) or "unknown"
    moved = []
    for name in DERIVED_OUTPUTS:
        path = out_dir / name
        if not path.exists():
            continue
        dest, k = out_dir / f"{name}.weights-{old}", 1
        while dest.exists():
            k += 1
            dest = out_dir / f"{name}.weights-{old}.{k}"
        path.rename(dest)
        log(f"{path} holds outputs of the previous weights ({old}): moved to {dest}")
        moved.append(dest)
    return moved


STATE = "train_state.pt"


def save_state(path: Path, **state) -> None:
    """Everything a killed run needs to go on exactly where it stopped (see :func:`fit`)."""
    atomic_torch_save(path, {**state, "torch_rng": torch.get_rng_state(),
                             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []})


def load_state(path: Path, saved_config: dict, vocab: Vocab) -> dict:
    """The state :func:`save_state` wrote, checked to belong to this run's settings and data; one-line errors."""
    if not path.is_file():
        raise UsageError(f"--resume: {path} does not exist, so there is no killed run to continue in {path.parent} "
                         "(a finished run removes it); run without --resume to train from the start")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file: pickle, zip and torch errors alike
        raise UsageError(f"--resume: {path} is unreadable ({type(exc).__name__}); delete it and run without --resume") from None
    if isinstance(state, dict) and isinstance(state.get("config"), dict):  # settings saved under older names
        state["config"] = {RENAMED_OPTIONS.get(k, k): v for k, v in state["config"].items()}
    if not isinstance(state, dict) or state.get("config") != saved_config:
        old = state.get("config") if isinstance(state, dict) else None
        diff = sorted(k for k in saved_config if not isinstance(old, dict) or old.get(k) != saved_config[k])
        raise UsageError(f"--resume: {path} is a run with other settings ({', '.join(diff) or 'format'} differ); "
                         "give the killed run's options, or run without --resume to start over")
    if state.get("vocab_fingerprint") != vocab.fingerprint():
        raise UsageError(f"--resume: {path} was trained on other data (vocabulary differs); run without --resume")
    return state


def fit(cfg: TrainConfig, out_dir: str | Path, data: PreparedData | None = None, log=print,
        resume: bool = False, command: str | None = None, metrics_out: str | Path | None = None) -> dict:
    """Train a model per ``cfg``, save its checkpoint and ``out_dir/metrics.json`` (and ``metrics_out``), return the
    metrics dict (with ``command``, the command line that ran it, when given).

    The checkpoint saved is the last epoch's, or with ``val_fraction > 0`` the
    best validation epoch's (by ``cfg.monitor``). ``resume`` continues the run
    whose state ``out_dir/train_state.pt`` holds (same settings required). The
    state is removed last, once the checkpoint and the metrics are on disk: a
    run killed at any moment before that resumes.
    """
    cfg.validate()
    largest = parameter_count(cfg.model)  # the vocabulary has at most model.vocab_size ids
    if largest > MAX_PARAMETERS:
        raise UsageError(f"these settings describe a model of up to {largest:,} parameters, more than the "
                         f"{MAX_PARAMETERS:,} this project builds; lower --max-features, --embed-dim, --hidden or "
                         "--layers")
    device = resolve_device(cfg.device)
    out_dir = Path(out_dir)
    if data is None:
        data = prepare_data(cfg, cache_dir=out_dir / "cache")
    saved_config = {**cfg.options(), "data": data.source, "device": str(device)}
    state_path = out_dir / STATE
    state = load_state(state_path, saved_config, data.vocab) if resume else None
    if state is None and state_path.exists():
        log(f"starting over: the state of an unfinished run in {state_path} will be replaced (--resume continues it)")
    move_aside_derived(out_dir, log)
    torch.manual_seed(cfg.seed)
    x_all = torch.from_numpy(data.x_train)
    y_all = torch.from_numpy(data.y_train)
    x_val = y_val = None
    if cfg.val_fraction > 0:
        perm = torch.from_numpy(np.random.default_rng(cfg.seed).permutation(len(x_all)))
        n_val = max(1, int(round(cfg.val_fraction * len(x_all))))
        x_val, y_val = x_all[perm[:n_val]].to(device), y_all[perm[:n_val]].to(device)
        x_tr, y_tr = x_all[perm[n_val:]].to(device), y_all[perm[n_val:]].to(device)
    else:
        x_tr, y_tr = x_all.to(device), y_all.to(device)
    x_te, y_te = torch.from_numpy(data.x_test).to(device), torch.from_numpy(data.y_test).to(device)

    model = build_model(cfg.model_config(data.vocab.size)).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    # Keras' Adam defaults (epsilon 1e-7); the fused kernel is ~6x faster than the loop on CPU.
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-7, fused=True)
    gen = torch.Generator().manual_seed(cfg.seed)

    m = cfg.model
    dropout = (f"Keras dropout {m.dropout}/{m.recurrent_dropout} ({m.dropout_masks} masks)"
               if m.architecture == "rnn" else f"embedding dropout {m.dropout}")
    log(f"model: {model.config.describe()}, {dropout}")
    history, best, best_epoch, since_best, stopped, fingerprint = [], None, None, 0, False, None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["shuffle_rng"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        history, best, best_epoch = state["history"], state["best"], state["best_epoch"]
        since_best, stopped, fingerprint = state["since_best"], state["stopped"], state["fingerprint"]
        log(f"resuming after epoch {state['epoch']} of {cfg.epochs} from {state_path}")
    for epoch in range(len(history) + 1, cfg.epochs + 1):
        if stopped:
            break
        t0 = time.perf_counter()
        tr_loss, tr_acc = train_epoch(model, opt, x_tr, y_tr, cfg.batch_size, gen,
                                      desc=f"epoch {epoch}/{cfg.epochs}", log=log)
        train_s = time.perf_counter() - t0
        te_loss, te_acc = evaluate(model, x_te, y_te)
        row = {"epoch": epoch, "train_loss": tr_loss, "train_acc": tr_acc, "test_loss": te_loss, "test_acc": te_acc}
        if x_val is not None:
            row["val_loss"], row["val_acc"] = evaluate(model, x_val, y_val)
        row["train_seconds"] = train_s
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        val_txt = f" val_loss {row['val_loss']:.4f} val_acc {row['val_acc']:.4f}" if x_val is not None else ""
        log(f"epoch {epoch:2d}/{cfg.epochs}: loss {tr_loss:.4f} acc {tr_acc:.4f}{val_txt} "
            f"test_loss {te_loss:.4f} test_acc {te_acc:.4f} ({row['seconds']:.1f} s)")
        if x_val is not None:
            score = row["val_loss"] if cfg.monitor == "val_loss" else -row["val_acc"]
            if best is None or score < best:
                best, best_epoch, since_best = score, epoch, 0
                fingerprint = save_checkpoint(out_dir, model, data.vocab, {**saved_config, "epoch": epoch})
            else:
                since_best += 1
                if cfg.patience and since_best >= cfg.patience:
                    log(f"no {cfg.monitor} improvement for {cfg.patience} epochs: stopping")
                    stopped = True
        # The state is saved after the checkpoint: a kill between the two repeats this epoch, bit for bit.
        save_state(state_path, config=saved_config, vocab_fingerprint=data.vocab.fingerprint(), epoch=epoch,
                   model=model.state_dict(), optimizer=opt.state_dict(), shuffle_rng=gen.get_state(),
                   history=history, best=best, best_epoch=best_epoch, since_best=since_best, stopped=stopped,
                   fingerprint=fingerprint)
    if x_val is None:
        best_epoch = history[-1]["epoch"]
        fingerprint = save_checkpoint(out_dir, model, data.vocab, {**saved_config, "epoch": best_epoch})
    final = next(r for r in history if r["epoch"] == best_epoch)
    log(f"Test score: {final['test_loss']:.4f}")
    log(f"Test accuracy: {final['test_acc']:.4f}" + (f" (checkpoint of epoch {best_epoch}, best {cfg.monitor})"
                                                    if x_val is not None else ""))
    metrics = {
        "config": saved_config,
        "n_train": int(len(x_tr)), "n_val": int(0 if x_val is None else len(x_val)), "n_test": int(len(x_te)),
        "epochs": history,
        "resumed_after_epoch": state["epoch"] if state is not None else None,
        "architecture": model.config.describe(),
        "checkpoint_epoch": best_epoch,
        "selected_by": cfg.monitor if x_val is not None else "last epoch",
        "final_test_loss": final["test_loss"],
        "final_test_accuracy": final["test_acc"],
        "mean_train_seconds_per_epoch": float(np.mean([r["train_seconds"] for r in history])),
        "machine": machine_info(device),
        "checkpoint": str(out_dir),
        "weights_fingerprint": fingerprint,
        **({"command": command} if command else {}),
    }
    for path in (out_dir / "metrics.json", *([metrics_out] if metrics_out else [])):
        write_metrics(path, metrics)
    state_path.unlink(missing_ok=True)  # last: everything it could rebuild is durable now
    return metrics


def write_metrics(path: str | Path, metrics: dict) -> None:
    atomic_write_json(path, metrics)
