"""The fast engine's heads: the multipliers of the model's output with respect to its recurrent layer's results.

The fast engine runs the recurrence's multiplier backward pass itself (:mod:`.fast`).
Whatever the model does with the recurrent layer's results, the output sequence and
the final states, is its *head*: a Linear on the final state, pooling, attention, an
MLP, LayerNorm, a tuple or dict output. A head gives, for every (input, reference)
pair, the multipliers of the explained output with respect to those results, and the
outputs themselves. Two kinds:

- :class:`LinearHead`: ``Linear(final hidden state) -> sigmoid | logits | identity``,
  in closed form (the Keras example's head; no autograd, the fastest path);
- :class:`PooledHead`: a :class:`~torch_imdb.model.SentimentRNN`'s mean or attention
  pooling, in closed form from the same rules (the attention's linear maps run once per
  row, not once per pair);
- :class:`RuledHead`: any head the transform has rules for. The model's own forward
  pass runs on a batch of [inputs; references] pairs with its recurrent layer replaced
  by a *feed* of the traced results, under the transform's rule mode, and is
  differentiated: the same rules shap and Captum apply on the transformed model, so the
  values are theirs. The pairs' head costs O(T·H) per pair against the recurrence's
  O(T·H²).

Pairs are laid out backgrounds first: pair p = b * n + i holds input i and reference b.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from torch_imdb.errors import ShapeRefusal, UsageError
from torch_imdb.explain.onednn import product
from torch_imdb.explain.rules import pair_rescale, rescale
from torch_imdb.explain.stack import HeadMultipliers, RNNResults
from torch_imdb.explain.marks import mark_batch, user_location

OUTPUTS = ("sigmoid", "logits", "identity")

# MKL rounds the rows of a small product differently when it has fewer than 12 rows (with 2
# threads; fewer than 4 with 1), so a review's values depended on how many reviews shared its
# forward pass (by up to 2.5e-6 on the seed model), and runners that batch differently
# (local, Ray) disagreed. From 12 rows on, each row's result is the same whatever the count:
# the fast engine's forward products run on at least this many rows.
TRACE_ROWS = 16


class LinearHead:
    """``Linear(final hidden state of the last layer, both directions) -> output``, in closed form.

    output: "sigmoid" (one output, explained as a probability, rescale on the logit), "logits"
    or "identity" (the linear output itself). Reads no constants of the inputs: one base value.
    """

    reads_inputs = False
    ids_read = False

    def __init__(self, linear: nn.Linear, output: str, directions: int, dtype: torch.dtype) -> None:
        if output not in OUTPUTS or (output == "sigmoid" and linear.out_features != 1):
            raise UsageError(f"output must be one of {', '.join(OUTPUTS)} (sigmoid with one output), got {output!r}")
        self.w, self.b = linear.weight.detach().to(dtype), None if linear.bias is None else linear.bias.detach().to(dtype)
        self.output, self.directions = output, directions
        self.n_outputs = linear.out_features

    def logits(self, res: RNNResults) -> torch.Tensor:
        """The linear outputs (n, K) from the last layer's final states, each row's the same whatever n
        (run on at least TRACE_ROWS rows: see there)."""
        n = res.h_n.shape[1]
        final = res.h_n[-self.directions :].transpose(0, 1).reshape(n, -1)
        if n < TRACE_ROWS:
            final = torch.cat([final, final.new_zeros(TRACE_ROWS - n, final.shape[1])])
        return F.linear(final, self.w, self.b)[:n]

    def explained(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.output == "sigmoid" else logits

    def multipliers(self, rx: RNNResults, rr: RNNResults, target: int, constants: tuple = ()) -> HeadMultipliers:
        """Closed form: m_out (B, n) by the rescale rule for a sigmoid (1 otherwise) times the head's row."""
        lx, lr = self.logits(rx)[:, target], self.logits(rr)[:, target]
        n, B, D = len(lx), len(lr), self.directions
        if self.output == "sigmoid":
            s_r = torch.sigmoid(lr)
            m_out = rescale(lx[None] - lr[:, None], torch.sigmoid(lx)[None] - s_r[:, None], (s_r * (1 - s_r))[:, None])
        else:
            m_out = torch.ones(B, n, dtype=lx.dtype, device=lx.device)
        H = rx.h_n.shape[-1]
        g_final = m_out[..., None] * self.w[target]  # (B, n, D*H)
        h_n = lx.new_zeros(rx.h_n.shape[0], B, n, H)
        h_n[-D:] = g_final.view(B, n, D, H).permute(2, 0, 1, 3)
        return HeadMultipliers(None, h_n, None, self.explained(lx), self.explained(lr)[:, None].expand(B, n))


def _attention_rules(zx, zr, tx, tr, m_s, v, c):
    """The attention's part of the outputs' multipliers, ready for one matrix product:
    [m_s * v * (tanh rescale), c] (t, B, n, A+1), with zx, tx (t, 1, n, A) the inputs' scoring layer
    before and after its tanh, zr, tr (t, B, 1, A) the references', m_s (t, B, n) the scores'
    multipliers and c (t, B, n) the outputs' own coefficient (times the head's row, the last row of
    the product's matrix)."""
    m_z = m_s[..., None] * v * pair_rescale(zx, zr, tx, tr, 1 - tr * tr)
    return torch.cat([m_z, c[..., None]], dim=-1)


class PooledHead:
    """A :class:`~torch_imdb.model.SentimentRNN`'s mean or attention pooling -> Linear -> sigmoid, in closed form.

    The same rules as the transform's (one rescale implementation, the Shapley rule for products,
    softmax as exp / sum with the pair's shared shift), written out for this head so that the
    per-row quantities (the attention's scoring layer, each output's logit share) are computed once
    per input and once per reference, and only the rules run per pair. Masks come from each input's
    ids and reach its references, as in the libraries (one base value per input). Per pair the cost
    is one product (t, A+1) x (A+1, D*H) per step for attention, nothing but a scaled row for the mean.
    ``compile`` turns the attention's elementwise rules into one fused kernel.
    """

    reads_inputs = True
    ids_read = True  # its mask of the padding: each input's base value is its own
    n_outputs = 1
    POOLS = ("mean", "attention")

    def __init__(self, model, dtype: torch.dtype, compile: bool = False) -> None:
        cast = lambda t: t.detach().to(dtype)  # noqa: E731
        self.pool = model.config.pool
        self.w, self.b = cast(model.fc.weight[0]), cast(model.fc.bias[0])  # (D*H,), ()
        if self.pool == "attention":
            self.A, self.a, self.v = cast(model.attn.weight), cast(model.attn.bias), cast(model.attn_v.weight[0])
            # the product's matrix, transposed for onednn.product: [A; w].T (D*H, A+1)
            self.Aw_t = torch.cat([self.A, self.w[None]]).t().contiguous()
        self._rules = torch.compile(_attention_rules, dynamic=False) if compile else _attention_rules

    def lengths(self, constants: tuple, n: int, T: int) -> None:
        return None  # a SentimentRNN reads every step

    @staticmethod
    def _mask(constants: tuple) -> torch.Tensor:
        """The review's tokens (T, n) bool, from the ids (n, T) that constants start with."""
        from torch_imdb.model import token_mask

        ids, *extra = constants
        if extra:
            raise UsageError("a SentimentRNN's forward pass takes the token ids alone, not additional_forward_args")
        return token_mask(ids).t()

    def multipliers(self, rx: RNNResults, rr: RNNResults, target: int, constants: tuple = ()) -> HeadMultipliers:
        """The head's multipliers for n inputs' results rx against B references' rr; constants: (ids (n, T),)."""
        if target != 0:
            raise UsageError(f"target {target} is not an output of this model (it has 1)")
        keep = self._mask(constants)[:, None]  # (T, 1, n): input i's mask, for its references too
        Ox, Or = rx.outputs.transpose(0, 1), rr.outputs.transpose(0, 1)  # (T, n, W), (T, B, W)
        ux, ur = (Ox @ self.w)[:, None], (Or @ self.w)[:, :, None]  # each output's logit share (T, 1, n), (T, B, 1)
        if self.pool == "mean":
            share = keep.to(ux.dtype) / keep.sum(dim=0)  # (T, 1, n)
            lx, lr = (share * ux).sum(dim=0) + self.b, (share * ur).sum(dim=0) + self.b  # (1, n), (B, n)
            m_out = self._m_logit(lx, lr)
            coef = m_out * share  # (T, B, n): the outputs' multipliers are coef * w
            return HeadMultipliers(lambda steps, features: coef[steps, ..., None] * self.w[features], None, None,
                                   torch.sigmoid(lx[0]), torch.sigmoid(lr))
        zx, zr = Ox @ self.A.t() + self.a, Or @ self.A.t() + self.a  # the scoring layer, per row (T, ., A)
        tx, tr = torch.tanh(zx), torch.tanh(zr)
        ninf = torch.tensor(float("-inf"), dtype=zx.dtype, device=zx.device)
        sx, sr = torch.where(keep, (tx @ self.v)[:, None], ninf), torch.where(keep, (tr @ self.v)[:, :, None], ninf)
        # softmax = exp(s - c) / sum: c, the pair's larger maximum, as the transform's shared shift
        c = torch.maximum(sx.amax(dim=0), sr.amax(dim=0))  # (B, n)
        qx, qr = sx - c, sr - c  # (T, B, n)
        ex, er = torch.exp(qx), torch.exp(qr)
        m_exp = pair_rescale(qx, qr, ex, er, er)
        Sx, Sr = ex.sum(dim=0), er.sum(dim=0)
        ix, ir = 1 / Sx, 1 / Sr
        m_inv = pair_rescale(Sx, Sr, ix, ir, -ir * ir)
        ax, ar = ex * ix, er * ir  # the attention weights (T, B, n)
        lx, lr = (ax * ux).sum(dim=0) + self.b, (ar * ur).sum(dim=0) + self.b  # (B, n)
        m_out = self._m_logit(lx, lr)
        m_a = m_out * (ux + ur) / 2  # Shapley rule on alpha * h, then on e * (1/S)
        m_s = (m_a * (ix + ir) / 2 + m_inv * (m_a * (ex + er) / 2).sum(dim=0)) * m_exp
        coef = m_out * (ax + ar) / 2  # the outputs' own multiplier, times w
        zx, zr, tx, tr = zx[:, None], zr[:, :, None], tx[:, None], tr[:, :, None]

        def outputs(steps: slice, features: slice) -> torch.Tensor:
            # made as the recurrence reaches each window: no (T, B, n, D*H) tensor to write and read back
            ext = self._rules(zx[steps], zr[steps], tx[steps], tr[steps], m_s[steps], self.v, coef[steps])
            return product(ext, self.Aw_t[features])

        f_x = torch.sigmoid((torch.softmax(sx[:, 0], dim=0) * ux[:, 0]).sum(dim=0) + self.b)
        return HeadMultipliers(outputs, None, None, f_x, torch.sigmoid(lr))

    @staticmethod
    def _m_logit(lx: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        """The sigmoid's rescale multiplier (B, n) from the logits of the inputs (., n) and references (B, n)."""
        yx, yr = torch.sigmoid(lx), torch.sigmoid(lr)
        return pair_rescale(lx.expand_as(lr), lr, yx.expand_as(yr), yr, yr * (1 - yr))


# Where the feed's refusals send the user: the engines that explain any model the transform rules.
LIBRARIES_HINT = ("explain it with shap or Captum through the transform (--engines shap,captum; ShapDeepExplainer / "
                  "CaptumDeepLiftShap), which covers any model built around nn.LSTM / nn.GRU / nn.RNN")


class _Probe(Exception):
    """Raised by the feed when only the lengths were asked for: the rest of the forward pass is not needed."""

    def __init__(self, lengths: torch.Tensor | None) -> None:
        super().__init__()
        self.lengths = lengths


def _marker(rows: int, T: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """What the feed expects the model to hand its recurrent layer: (rows, T, width) whose entries at (row, t)
    all equal row * T + t + 1 (one value per position, so a reordering or a packing shows), without memory
    per feature."""
    codes = torch.arange(1, rows * T + 1, dtype=like.dtype, device=like.device).view(rows, T, 1)
    return codes.expand(rows, T, width)


def refusal(why: str) -> UsageError:
    """The fast engine's one-line refusal of a model: why, where in the user's code (the recurrent layer's call),
    and the engines that explain it."""
    return ShapeRefusal(f"{why}, at {user_location()}; {LIBRARIES_HINT}")


class _Feed(nn.Module):
    """Stands in for the recurrent layer in the ruled head's copy: returns the traced results it is fed.

    It checks that the layer is called once, from zero state, on the model's input (or its
    embedding) unchanged, packed or not: what the fast engine's own recurrence computes.
    Anything else is refused in one line naming the engines that explain it. With ``probe``
    set it only reports the packed lengths (None: not packed) by raising :class:`_Probe`.
    """

    def __init__(self, twin: nn.Module) -> None:
        super().__init__()
        self.twin = [twin]  # a plain list: the model may read the layer's attributes (hidden_size, ...), not run it
        self.batch_first = twin.batch_first
        self.marker: torch.Tensor | None = None
        self.results: RNNResults | None = None
        self.calls = 0
        self.probe = False

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["twin"][0], name)

    def _read(self, input) -> torch.Tensor | None:
        """The lengths of a packed input (None for a padded one), after checking it is the marker."""
        m = self.marker
        if isinstance(input, PackedSequence):
            padded, lengths = pad_packed_sequence(input, batch_first=True)
            seen, L = padded[..., :1], int(lengths.max())
            valid = (torch.arange(L)[None, :] < lengths[:, None]).to(seen.device)[..., None]
            if padded.shape[0] != m.shape[0] or padded.shape[2] != m.shape[2] or L > m.shape[1] or \
                    not torch.equal(torch.where(valid, seen, 0), torch.where(valid, m[:, :L, :1], 0)):
                raise refusal("the fast engine needs the recurrent layer to read the model's input (or its embedding) "
                              "unchanged, packed in its own order; this model changes it first")
            return lengths
        seen = input if self.batch_first else input.transpose(0, 1)
        if seen.shape != m.shape or seen.data_ptr() != m.data_ptr() or seen.stride() != m.stride():
            raise refusal("the fast engine needs the recurrent layer to read the model's input (or its embedding) "
                          "unchanged; this model transforms it first")
        return None

    def forward(self, input, hx=None):
        self.calls += 1
        if self.calls > 1:
            raise refusal("the model calls its recurrent layer more than once; the fast engine explains one pass")
        if hx is not None:
            raise refusal("the model gives its recurrent layer an initial state; the fast engine starts from zero")
        lengths = self._read(input)
        if self.probe:
            raise _Probe(lengths)
        res = self.results
        if lengths is not None:
            out = pack_padded_sequence(res.outputs[:, : int(lengths.max())], lengths, batch_first=True,
                                       enforce_sorted=input.sorted_indices is None)
            if input.sorted_indices is not None and not torch.equal(out.sorted_indices, input.sorted_indices):
                raise refusal("the model packs its sequences in an order the fast engine does not follow")
        else:  # where the batch is, told to the rule mode: time-major, the batch is dim 1 (contiguous, as nn.LSTM's)
            out = mark_batch(res.outputs, 0) if self.batch_first else \
                mark_batch(res.outputs.transpose(0, 1).contiguous(), 1)
        state = (mark_batch(res.h_n, 1), mark_batch(res.c_n, 1)) if res.c_n is not None else mark_batch(res.h_n, 1)
        return out, state


def _pairs_of(x: torch.Tensor, r: torch.Tensor, dim: int) -> torch.Tensor:
    """[inputs; references] along ``dim`` for all pairs, backgrounds first: x (n, ...) and r (B, ...) -> (2*B*n, ...)."""
    n, B = x.shape[dim], r.shape[dim]
    reps = [1] * x.dim()
    reps[dim] = B
    return torch.cat([x.repeat(*reps), r.repeat_interleave(n, dim=dim)], dim=dim)


class RuledHead:
    """Any head the transform has rules for, differentiated on (input, reference) pairs.

    model: the user's module (a :class:`~torch_imdb.model.ReviewClassifier` is explained as
    P(positive)); output selects a tuple or dict output. The model must call its one
    ``nn.LSTM`` / ``nn.GRU`` once, from zero state, on its input or the embedding of its ids.
    """

    reads_inputs = True

    def __init__(self, model: nn.Module, dtype: torch.dtype, output: int | str | None = None,
                 block_pairs: int = 64, extra_rules: dict | None = None) -> None:
        from torch_imdb.explain.backends import explainable_model
        from torch_imdb.explain.twin import ExplainableRNN

        self.copy = explainable_model(model, 1, dtype, output, extra_rules)
        twins = [(name, m) for name, m in self.copy.model.named_modules() if isinstance(m, ExplainableRNN)]
        if len(twins) != 1:
            raise ShapeRefusal(f"the fast engine explains models with one nn.LSTM / nn.GRU / nn.RNN module, this one has "
                             f"{len(twins)}: " + LIBRARIES_HINT)
        name, twin = twins[0]
        parent = self.copy.model.get_submodule(name.rpartition(".")[0]) if "." in name else self.copy.model
        self.feed = _Feed(twin)
        self.input_size = twin.input_size
        setattr(parent, name.rpartition(".")[2], self.feed)
        self.n_outputs: int | None = None
        self.block_pairs = block_pairs
        self.dtype = dtype

    @property
    def ids_read(self) -> bool:
        """Whether the model's last forward pass computed something from its ids besides their embedding."""
        return self.copy.ids_read

    @torch.no_grad()
    def lengths(self, constants: tuple, n: int, T: int) -> torch.Tensor | None:
        """The steps (n,) the model's recurrent layer runs for each of n inputs when it packs them (lengths it
        computes from the ids or its extra arguments), or None when it reads all T steps.

        constants: (ids (n, T) or None, *extra) of the inputs. Runs the copy's forward pass up to the layer.
        """
        ids, *extra = constants
        marker = _marker(n, T, self.input_size, torch.zeros((), dtype=self.dtype))
        self.feed.marker, self.feed.probe, self.feed.calls = marker, True, 0
        try:
            self.copy(marker, ids, *extra)
        except _Probe as probe:
            return None if probe.lengths is None else probe.lengths.cpu()
        finally:
            self.feed.marker, self.feed.probe = None, False
        return None  # the layer was never reached: multipliers() says so

    def multipliers(self, rx: RNNResults, rr: RNNResults, target: int, constants: tuple = ()) -> HeadMultipliers:
        """Run the copy on the 2*B*n pair rows fed the traced results; gradients of the inputs' outputs.

        constants: (ids (n, T) or None, *extra), the rows of the n inputs: every pair sees its
        input's constants, in both halves, as the libraries run it. The pairs go through in blocks
        of references of about ``block_pairs`` pairs: the head's tensors then stay in cache.
        """
        n, B = rx.outputs.shape[0], rr.outputs.shape[0]
        step = max(1, self.block_pairs // n)
        if step >= B:
            return self._multipliers(rx, rr, target, constants)
        parts = [self._multipliers(rx, rr.rows(slice(b, b + step)), target, constants)
                 for b in range(0, B, step)]
        cat = lambda name, dim: None if getattr(parts[0], name) is None else torch.cat(  # noqa: E731
            [getattr(p, name) for p in parts], dim=dim)
        return HeadMultipliers(cat("outputs", 1), cat("h_n", 1), cat("c_n", 1), parts[0].f_x, cat("f_r", 0))

    def _multipliers(self, rx: RNNResults, rr: RNNResults, target: int, constants: tuple) -> HeadMultipliers:
        n, B = rx.outputs.shape[0], rr.outputs.shape[0]
        P = B * n
        with torch.enable_grad():
            leaves = RNNResults(_pairs_of(rx.outputs, rr.outputs, 0).requires_grad_(),
                                _pairs_of(rx.h_n, rr.h_n, 1).requires_grad_(),
                                None if rx.c_n is None else _pairs_of(rx.c_n, rr.c_n, 1).requires_grad_())
            ids, *extra = constants
            rows = tuple(a.repeat(2 * B, *[1] * (a.dim() - 1)) if isinstance(a, torch.Tensor) else a for a in extra)
            # what the model hands its recurrent layer: checked to be this, unchanged, by the feed
            marker = _marker(2 * P, rx.outputs.shape[1], self.input_size, rx.outputs)
            self.feed.marker, self.feed.results, self.feed.calls = marker, leaves, 0
            try:
                y = self.copy(marker, None if ids is None else ids.repeat(2 * B, 1), *rows)
            finally:
                self.feed.marker = self.feed.results = None
            if self.feed.calls != 1:
                raise ShapeRefusal("the model's forward pass never calls its recurrent layer; the fast engine explains "
                                 "models built around one")
            self.n_outputs = y.shape[1]
            if not 0 <= target < y.shape[1]:
                raise UsageError(f"target {target} is not an output of this model (it has {y.shape[1]})")
            y = y[:, target]
            wanted = [t for t in (leaves.outputs, leaves.h_n, leaves.c_n) if t is not None]
            grads = torch.autograd.grad(y[:P].sum(), wanted, allow_unused=True)
        g_out, g_h = grads[0], grads[1]
        g_c = grads[2] if len(grads) > 2 else None
        T, W = rx.outputs.shape[1:]
        return HeadMultipliers(
            None if g_out is None else g_out[:P].view(B, n, T, W).permute(2, 0, 1, 3).contiguous(),
            None if g_h is None else g_h[:, :P].reshape(-1, B, n, g_h.shape[-1]),
            None if g_c is None else g_c[:, :P].reshape(-1, B, n, g_c.shape[-1]),
            y[:n].detach(), y[P:].detach().view(B, n))
