"""The model transform: every op of a user's forward pass gets an exact DeepLIFT rule, or is refused.

:class:`ExplainableModel` wraps a copy of the user's model. While shap or Captum
differentiate it, its forward pass runs under :class:`RuleMode`, a
``TorchFunctionMode`` that sees every torch call (functions, tensor methods,
operators, ``torch.nn.functional``) and, for each call on an *explained* tensor
(one that requires grad: the input and everything computed from it), applies
the op's rule from :data:`RULES`:

- linear and indexing ops (add, sum, mean, cat, view, getitem, ``F.linear``, a
  product with a constant, a masked fill with a constant mask, ...) run as they
  are: their gradient is already the exact multiplier;
- one-input elementwise nonlinearities (``torch.sigmoid``, ``F.relu``, ``F.gelu``,
  ``torch.exp``, ``x ** 2``, ...) get the rescale rule;
- products, matrix products and divisions of two explained tensors get the
  two-player Shapley rule;
- softmax, log-softmax, max / amax / min over a dimension and LayerNorm run as
  their decompositions into those rules (:mod:`.rules`), so completeness is exact;
- anything else on an explained tensor (a comparison, ``.item()``, Python control
  flow on a value, an op without a rule) raises :class:`UnruledOpError` before any
  attribution is computed, naming the op and the line of the user's code.

Tensors computed from the token ids alone (padding masks, lengths for
``pack_padded_sequence``) and extra forward arguments do not require grad: they
are constants of the explanation. For token models the explained input is the
embedding output: the copy's ``nn.Embedding`` returns the embedded batch the
libraries hand in, while the rest of the forward pass still sees the real ids.
Every ``nn.LSTM`` / ``nn.GRU`` becomes the unrolled :class:`~.twin.ExplainableRNN`,
whose sigmoids, tanhs and products the same rules cover, also for a
``PackedSequence`` input and when one module is called several times.
"""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from torch_imdb.errors import UsageError
from torch_imdb.explain import rules
from torch_imdb.explain.inputs import Layout
from torch_imdb.cells import RECURRENT_MODULES
from torch_imdb.explain.marks import _MODES, explained, mark_batch, user_location  # noqa: F401 - re-exported

# ---------------------------------------------------------------- the op registry


class UnruledOpError(UsageError):
    """An op on an explained tensor that no rule covers: refused before any attribution."""


def _name(func) -> str:
    """The op's name without the dunder and reflection marks: ``__rmul__`` -> ``mul``, ``TensorBase.add`` -> ``add``."""
    name = getattr(func, "__name__", None) or str(func)
    if name.startswith("__r") and name.endswith("__") and name not in ("__repr__", "__reduce__"):
        return name[3:-2]
    return name.strip("_") if name.startswith("__") else name


# Ops whose gradient is already the exact DeepLIFT multiplier: linear (or affine) in the explained
# arguments, the other arguments constant; indexing and shape ops; ops whose result is no explained
# tensor (shapes, fresh tensors of the same size).
LINEAR = {
    "add", "sub", "rsub", "neg", "positive", "iadd", "isub", "sum", "mean", "cumsum", "nansum",
    "cat", "concat", "concatenate", "stack", "hstack", "vstack", "reshape", "view", "view_as", "permute",
    "transpose", "swapaxes", "movedim", "t", "contiguous", "unsqueeze", "squeeze", "flatten", "unflatten",
    "expand", "expand_as", "repeat", "tile", "chunk", "split", "tensor_split", "unbind", "narrow", "select",
    "getitem", "setitem", "flip", "roll", "index_select", "gather", "clone", "masked_select",
    "to", "float", "double", "half", "bfloat16", "type_as", "type", "cpu", "cuda",
    "linear", "conv1d", "conv2d", "embedding_bag", "pad", "dropout", "alpha_dropout", "batch_norm",
    "avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
    "_pack_padded_sequence", "_pad_packed_sequence", "trace", "diagonal", "diag_embed", "tril", "triu",
    "size", "dim", "numel", "len", "get", "is_floating_point", "is_complex", "element_size", "stride",
    "is_contiguous", "get_device", "storage_offset", "nelement", "ndimension", "data_ptr",
    "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "new_zeros",
    "new_ones", "new_empty", "new_full", "new_tensor", "requires_grad_", "retain_grad", "format", "repr",
}

# One explained input, elementwise: the rescale rule. (The other arguments, e.g. GELU's
# ``approximate`` or a power's exponent, are constants of the function.)
ELEMENTWISE = {
    "sigmoid", "tanh", "relu", "relu6", "gelu", "elu", "selu", "celu", "leaky_relu", "softplus", "silu",
    "mish", "hardtanh", "hardsigmoid", "hardswish", "logsigmoid", "softsign", "tanhshrink", "exp", "exp2",
    "expm1", "log", "log1p", "log2", "log10", "sqrt", "rsqrt", "square", "abs", "reciprocal", "erf", "sin",
    "cos", "pow", "float_power", "clamp", "clip", "clamp_min", "clamp_max", "threshold", "sigmoid_",
    "tanh_", "relu_", "exp_", "elu_", "leaky_relu_",
}

# Ops linear in each argument but for which two explained arguments meet: the Shapley rule.
BILINEAR = {"mul", "multiply", "matmul", "mm", "bmm", "einsum", "outer", "dot", "inner", "tensordot", "imul"}
DIVISION = {"div", "divide", "true_divide", "truediv", "itruediv"}

REFUSALS = {  # by the op's own name (``__bool__``, not ``bool``)
    "__bool__": "Python control flow on an explained value (an `if` or `while` on a tensor that depends on the "
            "input) has no rule: compute the condition from the token ids or pass it as an extra argument",
    "item": "reading an explained value as a Python number (.item()) has no rule",
    "tolist": "reading explained values as Python numbers (.tolist()) has no rule",
    "numpy": "reading explained values as numpy (.numpy()) has no rule",
    "detach": "detaching an explained tensor would give the input and its reference different constants; "
              "compute constants from the token ids or pass them as extra arguments",
    "__int__": "reading an explained value as a Python number has no rule",
    "__float__": "reading an explained value as a Python number has no rule",
    "__index__": "using an explained value as an index has no rule",
}
COMPARISONS = {"eq", "ne", "lt", "le", "gt", "ge", "greater", "less", "isnan", "isinf", "isfinite", "argmax",
               "argmin", "argsort", "sort", "topk", "sign", "round", "floor", "ceil", "trunc", "heaviside"}


def _dim_arg(args, kwargs, position: int, default=None):
    return kwargs.get("dim", args[position] if len(args) > position else default)


def _elementwise(func, args, kwargs):
    """The rescale rule on the one explained argument of ``func``; the others are constants of fn."""
    kwargs = {k: v for k, v in kwargs.items() if k != "inplace"}
    flat = list(args)
    slots = [k for k, a in enumerate(flat) if explained(a)]
    if len(slots) != 1 or any(explained(v) for v in kwargs.values()):
        raise _refusal(_name(func), "two explained arguments of an elementwise op have no rule")
    k = slots[0]
    plain = getattr(torch.Tensor, _name(func).rstrip("_"), None) if _name(func).endswith("_") else None
    call = plain if plain is not None else func

    def fn(z: torch.Tensor) -> torch.Tensor:
        return call(*flat[:k], z, *flat[k + 1 :], **kwargs)

    return rules.elementwise(fn, flat[k])


def _bilinear(func, args, kwargs):
    if _name(func) == "einsum":
        equation, operands = args[0], args[1:] if len(args) > 2 else args[1]
        if len(operands) != 2:
            raise _refusal("einsum", "einsum of more than two explained operands has no rule")
        return rules.bilinear(lambda a, b: torch.einsum(equation, a, b), *operands)
    a, b = args[0], args[1]
    name = _name(func)
    op = getattr(torch, "mul" if name == "imul" else name, torch.mul)  # ``a *= b`` is rebound to the result
    return rules.bilinear(op if not kwargs else lambda x, y: op(x, y, **kwargs), a, b)


def _division(func, args, kwargs):
    a, b = args[0], args[1]
    if getattr(func, "__name__", "").startswith("__r"):  # reflected, ``other / self``: args are (self, other)
        a, b = b, a
    if kwargs.get("rounding_mode"):
        raise _refusal(_name(func), "division with rounding has no rule")
    if _linear_here(func, args, kwargs):  # a / constant
        return func(*args, **kwargs)
    return rules.divide(a, b, a_varies=explained(a))


def _softmax(func, args, kwargs, log: bool = False):
    z, dim = args[0], _dim_arg(args, kwargs, 1)
    if dim is None:
        raise _refusal(_name(func), "softmax without dim has no rule; pass dim")
    dtype = kwargs.get("dtype") or (args[2] if len(args) > 2 and isinstance(args[2], torch.dtype) else None)
    z = z.to(dtype) if dtype is not None else z
    return rules.log_softmax(z, dim) if log else rules.softmax(z, dim)


def _max(func, args, kwargs, sign: float = 1.0):
    name = _name(func)
    z = args[0]
    other = args[1] if len(args) > 1 and isinstance(args[1], torch.Tensor) else kwargs.get("other")
    if other is not None or name in ("maximum", "minimum", "fmax", "fmin"):
        other = args[1] if other is None else other
        return sign * rules.maximum(sign * z, sign * other)
    dim = _dim_arg(args, kwargs, 1)
    keepdim = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
    if dim is None or (isinstance(dim, (tuple, list)) and len(dim) != 1):
        raise _refusal(name, "a maximum over all elements (or several dims) mixes the batch; give one dim")
    dim = dim[0] if isinstance(dim, (tuple, list)) else dim
    if dim % z.dim() == 0:
        raise _refusal(name, "a maximum over the batch dimension has no rule")
    values = sign * rules.amax(sign * z, dim, keepdim)
    if name in ("amax", "amin"):
        return values
    with torch.no_grad():
        indices = (sign * z).argmax(dim=dim, keepdim=keepdim)
    return (torch.return_types.max if sign > 0 else torch.return_types.min)((values, indices))


def _layer_norm(func, args, kwargs):
    names = ("input", "normalized_shape", "weight", "bias", "eps")
    values = dict(zip(names, args), **kwargs)
    if explained(values.get("weight")) or explained(values.get("bias")):
        raise _refusal("layer_norm", "explained weights of a layer norm have no rule")
    return rules.layer_norm(values["input"], tuple(values["normalized_shape"]), values.get("weight"),
                            values.get("bias"), values.get("eps", 1e-5))


def _logsumexp(func, args, kwargs):
    z, dim = args[0], _dim_arg(args, kwargs, 1)
    keepdim = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
    dims = [dim] if isinstance(dim, int) else list(dim or [])
    if not dims or any(d % z.dim() == 0 for d in dims):
        raise _refusal("logsumexp", "a logsumexp over the batch dimension (or over all elements) mixes the explained "
                                    "inputs; give the other dims")
    return rules.logsumexp(z, dim, keepdim)


def _pool_args(func, args, kwargs, names: tuple[str, ...]) -> dict:
    values = dict(zip(names, args), **kwargs)
    x = values["input"]
    spatial = 1 if _name(func).endswith("1d") else 2
    if x.dim() != 2 + spatial:
        raise _refusal(_name(func), f"pooling an input without its batch dimension ({x.dim()} dims) has no rule")
    if values.get("return_indices"):
        raise _refusal(_name(func), "the indices of a max pooling (return_indices=True) have no rule")
    values["spatial"] = spatial
    return values


def _per_dim(value, spatial: int) -> list[int]:
    return list(value) if isinstance(value, (tuple, list)) else [value] * spatial


def _max_pool(func, args, kwargs):
    """max_pool1d / max_pool2d as the max rule over each window's positions (padding and dilation included)."""
    v = _pool_args(func, args, kwargs, ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode",
                                        "return_indices"))
    x, n = v["input"], v["spatial"]
    kernel = _per_dim(v["kernel_size"], n)
    stride = _per_dim(v.get("stride") or kernel, n)
    padding, dilation = _per_dim(v.get("padding", 0), n), _per_dim(v.get("dilation", 1), n)
    members = []
    for size, k, s, p, d in zip(x.shape[2:], kernel, stride, padding, dilation):
        span = size + 2 * p - d * (k - 1) - 1
        out = (-(-span // s) if v.get("ceil_mode") else span // s) + 1
        if v.get("ceil_mode") and (out - 1) * s >= size + p:
            out -= 1
        members.append([[o * s - p + j * d for j in range(k) if 0 <= o * s - p + j * d < size] for o in range(out)])
    return rules.window_max(x, members)


def _adaptive_max_pool(func, args, kwargs):
    """adaptive_max_pool1d / 2d: output o along a dim of size L reads positions floor(o L / O) to ceil((o+1) L / O)."""
    v = _pool_args(func, args, kwargs, ("input", "output_size", "return_indices"))
    x, n = v["input"], v["spatial"]
    sizes = [L if O is None else O for L, O in zip(x.shape[2:], _per_dim(v["output_size"], n))]
    return rules.window_max(x, [[list(range(o * L // O, -(-(o + 1) * L // O))) for o in range(O)]
                                for L, O in zip(x.shape[2:], sizes)])


def _normalize(func, args, kwargs):
    values = dict(zip(("input", "p", "dim", "eps", "out"), args), **kwargs)
    x, p, dim = values["input"], float(values.get("p", 2.0)), values.get("dim", 1)
    if values.get("out") is not None or not math.isfinite(p) or p <= 0:
        raise _refusal("normalize", "only a finite p > 0 and no out= have a rule")
    if not isinstance(dim, int) or dim % x.dim() == 0:
        raise _refusal("normalize", "normalising over the batch dimension (or several dims) has no rule")
    return rules.normalize(x, p, dim, values.get("eps", 1e-12))


_MHA = inspect.signature(F.multi_head_attention_forward)


def _multi_head_attention(func, args, kwargs):
    """``F.multi_head_attention_forward`` (what ``nn.MultiheadAttention`` and the transformer layers call) through
    its unfused math: the projections (linear), scaled scores q k^T (Shapley), the masks (constants), softmax (its
    decomposition), the weighted sum of the values (Shapley) and the output projection (linear). Its inputs are
    (L, N, E) by its signature: the batch is dim 1."""
    a = _MHA.bind(*args, **kwargs).arguments
    unsupported = [name for name in ("bias_k", "bias_v", "static_k", "static_v") if a.get(name) is not None]
    if unsupported or a.get("add_zero_attn") or (a.get("training", True) and a.get("dropout_p", 0.0) > 0) \
            or (a.get("is_causal") and a.get("attn_mask") is None):
        raise _refusal("multi_head_attention_forward", "attention with " + (", ".join(unsupported) or
                       "add_zero_attn, dropout in training mode or is_causal without a mask") + " has no rule")
    q, k, v = (a[name] for name in ("query", "key", "value"))
    if q.dim() != 3:
        raise _refusal("multi_head_attention_forward", "attention on an input without its batch dimension has no rule")
    bias = a.get("in_proj_bias")
    bq, bk, bv = bias.chunk(3) if bias is not None else (None, None, None)
    weights = (a["q_proj_weight"], a["k_proj_weight"], a["v_proj_weight"]) if a.get("use_separate_proj_weight") \
        else a["in_proj_weight"].chunk(3)
    heads = a["num_heads"]
    (L, N, E), S = q.shape, k.shape[0]
    d = E // heads
    split = lambda t, w, b, n: F.linear(t.transpose(0, 1), w, b).view(N, n, heads, d).transpose(1, 2)  # noqa: E731
    q, k, v = split(q, weights[0], bq, L), split(k, weights[1], bk, S), split(v, weights[2], bv, S)  # (N, h, ., d)
    scores = _product(q, k.transpose(-2, -1)) / math.sqrt(d)  # (N, h, L, S)
    mask = a.get("attn_mask")
    if mask is not None:
        mask = mask.view(N, heads, L, S) if mask.dim() == 3 else mask
        scores = scores.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    padding = a.get("key_padding_mask")
    if padding is not None:
        padding = padding.view(N, 1, 1, S)
        scores = scores.masked_fill(padding, float("-inf")) if padding.dtype == torch.bool else scores + padding
    attention = rules.softmax(scores, -1)
    out = _product(attention, v).transpose(1, 2).reshape(N, L, E)
    out = F.linear(out, a["out_proj_weight"], a.get("out_proj_bias")).transpose(0, 1)
    if not a.get("need_weights", True):
        return out, None
    return out, attention.mean(dim=1) if a.get("average_attn_weights", True) else attention


def _product(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x @ y by the matmul's own rule: the Shapley rule when both are explained, else linear."""
    return _linear_product(torch.matmul, (x, y), {})


def _reduction(func, args, kwargs, batch_dim: int = 0):
    """sum / mean: linear, but not over the batch (dim 0, or ``batch_dim`` of a time-major tensor), which would
    mix inputs and references."""
    dim = _dim_arg(args, kwargs, 1)
    tensor = args[0]
    if isinstance(tensor, torch.Tensor) and tensor.dim() > 0:
        dims = [dim] if isinstance(dim, int) else (list(dim) if dim is not None else None)
        if dims is None or any(d % tensor.dim() == batch_dim for d in dims):
            raise _refusal(_name(func), "a sum or mean over the batch dimension (or over all elements) mixes the "
                                        "explained inputs; reduce over the other dimensions")
    return func(*args, **kwargs)


def _linear_here(func, args, kwargs) -> bool:
    """Whether a product or division is linear in this call: one explained factor, or a constant divisor."""
    if _name(func) in DIVISION:
        reflected = getattr(func, "__name__", "").startswith("__r")  # other / self
        divisor = args[0] if reflected else (args[1] if len(args) > 1 else kwargs.get("other"))
        return not explained(divisor)
    return sum(explained(a) for a in tree_flatten((args, kwargs))[0]) < 2


def _batch_first(func, args, kwargs, rule: "Rule", k: int):
    """Apply ``rule`` to operands whose batch is dim k > 0: the batch moved to dim 0, a ``dim`` argument
    renumbered to match, the result moved back."""
    name = _name(func)
    if not rule.time_major:
        raise _refusal(name, f"on a time-major tensor (the batch on dim {k}) this op has no rule; move the batch "
                             "first (e.g. .transpose(0, 1)) before it")
    nd = next(a.dim() for a in tree_flatten((args, kwargs))[0] if explained(a))
    # the explained operands and the constants laid out like them (a time-major mask) move; others broadcast
    move = lambda a: a.movedim(k, 0) if isinstance(a, torch.Tensor) and a.dim() == nd else a  # noqa: E731
    args, kwargs = [move(a) for a in args], {key: move(v) for key, v in kwargs.items()}
    dim = _dim_arg(args, kwargs, rule.dim_arg) if rule.dim_arg is not None else None
    if name == "layer_norm":
        shape = kwargs.get("normalized_shape", args[1] if len(args) > 1 else ())
        if k >= nd - len(tuple(shape)):
            raise _refusal(name, "a layer norm over the batch dimension mixes the explained inputs")
        dim = None
    out_k = k
    if isinstance(dim, (tuple, list)) and len(dim) == 1:
        dim = dim[0]
    if isinstance(dim, int):
        d = dim % nd
        if d == k:
            raise _refusal(name, f"over the batch dimension (dim {k} of a time-major tensor) this op has no rule")
        moved = d + 1 if d < k else d
        if "dim" in kwargs:
            kwargs["dim"] = moved
        else:
            args[rule.dim_arg] = moved
        keepdim = kwargs.get("keepdim", args[rule.dim_arg + 1] if len(args) > rule.dim_arg + 1 else False)
        if rule.reduces and not keepdim and d < k:
            out_k = k - 1
    result = rule.apply(func, tuple(args), kwargs)
    if isinstance(result, tuple):  # max / min with a dim: (values, indices)
        return type(result)(tuple(t.movedim(0, out_k) for t in result))
    return result.movedim(0, out_k)


@dataclass(frozen=True)
class Rule:
    """How the transform treats one op on explained tensors, and the facts :class:`RuleMode` needs about it.

    kind: what :func:`describe_rules` lists it under ("linear", "rescale", "shapley", ...);
    apply: ``apply(func, args, kwargs)``, the op's result with the rule's gradient, the batch on dim 0;
    time_major: on operands whose batch is a later dim (a ``batch_first=False`` model's outputs) it runs with
    the batch moved to dim 0 (else such operands are refused); dim_arg: the position of its ``dim`` argument
    (renumbered when the batch moves), None if it has none; reduces: its ``dim`` goes away (unless keepdim);
    own_layout: it finds the batch itself (an op whose signature fixes the layout, such as multi-head
    attention's (L, N, E)), so the mode hands it the call as it is.
    """

    kind: str
    apply: Callable
    time_major: bool = False
    dim_arg: int | None = None
    reduces: bool = False
    own_layout: bool = False


def _run(func, args, kwargs):
    return func(*args, **kwargs)


def _linear_product(func, args, kwargs):
    return func(*args, **kwargs) if _linear_here(func, args, kwargs) else _bilinear(func, args, kwargs)


def _max_rule(sign: float = 1.0) -> Rule:
    return Rule("max", lambda f, a, k: _max(f, a, k, sign), time_major=True, dim_arg=1, reduces=True)


RESCALE = Rule("rescale", _elementwise, time_major=True)  # any one-input elementwise op: a caller's too
RULES: dict[str, Rule] = {
    **{name: Rule("linear", _run) for name in LINEAR},
    **{name: RESCALE for name in ELEMENTWISE},
    **{name: Rule("shapley", _linear_product, time_major=name in ("mul", "multiply", "imul")) for name in BILINEAR},
    **{name: Rule("shapley", _division, time_major=True) for name in DIVISION},
    "sum": Rule("linear", _reduction),
    "mean": Rule("linear", _reduction),
    "masked_fill": Rule("linear", _run),
    "masked_fill_": Rule("linear", _run),
    "where": Rule("linear", _run),
    "softmax": Rule("softmax", _softmax, time_major=True, dim_arg=1),
    "log_softmax": Rule("log-softmax", lambda f, a, k: _softmax(f, a, k, log=True), time_major=True, dim_arg=1),
    "logsumexp": Rule("logsumexp", _logsumexp, time_major=True, dim_arg=1, reduces=True),
    "max": _max_rule(), "amax": _max_rule(), "maximum": Rule("max", _max, time_major=True),
    "min": _max_rule(-1.0), "amin": _max_rule(-1.0),
    "minimum": Rule("max", lambda f, a, k: _max(f, a, k, -1.0), time_major=True),
    "max_pool1d": Rule("max", _max_pool), "max_pool2d": Rule("max", _max_pool),
    "adaptive_max_pool1d": Rule("max", _adaptive_max_pool), "adaptive_max_pool2d": Rule("max", _adaptive_max_pool),
    "normalize": Rule("normalize", _normalize),
    "layer_norm": Rule("layer-norm", _layer_norm, time_major=True),
    "multi_head_attention_forward": Rule("attention", _multi_head_attention, own_layout=True),
}


# ---------------------------------------------------------------- where in the user's code

def _refusal(name: str, why: str = "") -> UnruledOpError:
    return UnruledOpError(f"the transform has no exact rule for `{name}` on an explained tensor at {user_location()}"
                          + (f": {why}" if why else "; see the README's list of covered ops"))


class RuleMode(TorchFunctionMode):
    """Applies :data:`RULES` to every torch call on explained tensors while the copy runs forward.

    ``rules`` maps op names to :class:`Rule`; pass a changed copy of :data:`RULES` to switch
    one off (for tests of the completeness guard). ``batch``: the explained batch's row count.

    Where each explained tensor holds the batch is carried, not guessed: the explained input
    holds it on dim 0, a recurrent module's outputs where its layout puts it (:func:`mark_batch`),
    and every call's result where the call moves it (a transpose, a permute, a reduction of
    another dim, ...). Only a tensor whose layout was lost (a ``view`` that merged the batch with
    another dim and split it again) is read by its sizes.
    """

    def __init__(self, rules_table: dict[str, Rule] | None = None, watch: tuple[torch.Tensor, ...] = (),
                 batch: int | None = None) -> None:
        super().__init__()
        self.rules = RULES if rules_table is None else rules_table
        self.watch = watch
        self.watched_read = False  # whether any op read a tensor of ``watch`` (the ids: masks, lengths)
        self.batch = batch  # rows of the explained batch: how a time-major tensor's batch dim is found
        # (data_ptr, shape, strides) of an explained tensor -> (the tensor, the dim that holds its batch). Keyed by
        # where the data lies, so that an alias finds it too (the new tensor object a library's module hook returns
        # for a module's output); the tensors are held for the one forward pass, so no memory is reused meanwhile.
        self.layout: dict[tuple, tuple[torch.Tensor, int]] = {}

    def remember(self, t: torch.Tensor, dim: int) -> None:
        """``t`` holds the batch on ``dim``."""
        self.layout[(t.data_ptr(), tuple(t.shape), t.stride())] = (t, dim)

    def __enter__(self):
        _MODES.append(self)
        return super().__enter__()

    def __exit__(self, *exc):
        _MODES.remove(self)
        return super().__exit__(*exc)

    def dim_of(self, t: torch.Tensor, strict: bool = False) -> int:
        """Where ``t`` holds the batch: as carried, else read from its sizes (dim 0 when it has the batch's size,
        else the one later dim that has it). ``strict``: a one-line refusal where the sizes do not tell (no dim of
        the batch's size: merged with another dim; or several, dim 0 among them)."""
        known = self.known_dim(t)
        if known is None and strict:
            raise _refusal("an op", "where this tensor holds the batch was lost (a view or reshape merged it with "
                                    "another dim) and its sizes do not tell; keep the batch a dim of its own")
        return 0 if known is None else known

    def known_dim(self, t: torch.Tensor) -> int | None:
        """Where ``t`` holds the batch as carried, or as its sizes tell (the one dim of the batch's size); None
        when neither tells."""
        known = self.layout.get((t.data_ptr(), tuple(t.shape), t.stride()))
        if known is not None:
            return known[1]
        if self.batch is None or t.dim() == 0:
            return 0
        sized = [d for d in range(t.dim()) if t.shape[d] == self.batch]
        return sized[0] if len(sized) == 1 else None

    def batch_dim(self, flat: list) -> int:
        """Where the explained operands hold the batch (see :meth:`dim_of`); operands that disagree are refused."""
        dims = {self.dim_of(t, strict=True) for t in flat if explained(t) and t.dim() > 0}
        if len(dims) > 1:
            raise _refusal("an op", "its explained operands hold the batch on different dims; move the batch first")
        return dims.pop() if dims else 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat = tree_flatten((args, kwargs))[0]
        if self.watch and not self.watched_read:
            self.watched_read = any(a is w for a in flat for w in self.watch)
        if not torch.is_grad_enabled() or not any(explained(a) for a in flat):
            return func(*args, **kwargs)
        raw, name = getattr(func, "__name__", ""), _name(func)
        if raw == "__get__":  # attribute reads: .shape, .dtype, .grad_fn, ...
            return func(*args, **kwargs)
        if raw in REFUSALS:
            raise _refusal(name, REFUSALS[raw])
        if name in COMPARISONS:
            raise _refusal(name, "a comparison or ranking of explained values (a mask, or an `if` on them) is a step "
                                 "function with no rule; compute masks from the token ids or pass them as extra arguments")
        rule = self.rules.get(name)
        if rule is None:
            raise _refusal(name)
        if name.endswith("_") and rule.kind != "linear" and kwargs.get("inplace") is None and \
                not getattr(func, "__module__", "") == "torch.nn.functional":
            raise _refusal(name, "an in-place nonlinear op on an explained tensor has no rule; use the out-of-place op")
        if rule.apply is _reduction:
            result = _reduction(func, args, kwargs, self.batch_dim(flat))
        else:
            nonlinear = rule.kind != "linear" and not (rule.kind == "shapley" and _linear_here(func, args, kwargs))
            k = self.batch_dim(flat) if nonlinear and not rule.own_layout else 0  # linear ops run in any layout
            result = _batch_first(func, args, kwargs, rule, k) if k else rule.apply(func, args, kwargs)
        if not rule.own_layout:
            self._carry(name, args, kwargs, flat, result)
        return result

    def _carry(self, name: str, args, kwargs, flat: list, result) -> None:
        """Record where the result holds the batch, from where its first explained operand holds it."""
        if name == "_pad_packed_sequence":  # a packed sequence padded again: its batch_first says where
            padded = result[0] if isinstance(result, (tuple, list)) else result
            batch_first = args[2] if len(args) > 2 else kwargs.get("batch_first", False)
            if explained(padded):
                self.remember(padded, 0 if batch_first else 1)
            return
        operand = next(t for t in flat if explained(t))
        k = self.known_dim(operand) if operand.dim() else None
        if k is None:
            return  # a layout lost stays lost: nothing is guessed for the result either
        for t in (result if isinstance(result, (tuple, list)) else [result]):
            if explained(t) and t.dim() > 0:
                d = _moved_batch_dim(name, args, kwargs, operand, k, t, self.batch)
                if d is not None:
                    self.remember(t, d)


def _moved_batch_dim(name: str, args, kwargs, operand: torch.Tensor, k: int, result: torch.Tensor,
                     batch: int | None) -> int | None:
    """Where a call's result holds the batch, given that its explained ``operand`` holds it on dim ``k``; None when
    the call loses it (a view merging it with another dim)."""
    nd = operand.dim()
    if name in ("transpose", "swapaxes", "swapdims"):
        a, b = (_dim_arg(args, kwargs, 1, kwargs.get("dim0")), _dim_arg(args, kwargs, 2, kwargs.get("dim1")))
        a, b = int(a) % nd, int(b) % nd
        return b if k == a else a if k == b else k
    if name == "t":
        return 1 - k if nd == 2 else k
    if name == "permute":
        order = kwargs.get("dims", args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:])
        return [int(d) % nd for d in order].index(k)
    if name == "movedim":
        source, target = (_dim_arg(args, kwargs, 1, kwargs.get("source")), args[2] if len(args) > 2 else
                          kwargs.get("destination"))
        source = [source] if isinstance(source, int) else list(source)
        target = [target] if isinstance(target, int) else list(target)
        order: list[int | None] = [None] * nd
        for s_, t_ in zip(source, target):
            order[t_ % nd] = s_ % nd
        rest = iter(d for d in range(nd) if d not in {s_ % nd for s_ in source})
        return [d if d is not None else next(rest) for d in order].index(k)
    if name == "unsqueeze":
        d = int(_dim_arg(args, kwargs, 1)) % (nd + 1)
        return k + 1 if d <= k else k
    if name == "getitem" and len(args) > 1:
        return _indexed_batch_dim(args[1], nd, k)
    if name == "stack":
        d = int(_dim_arg(args, kwargs, 1, 0)) % (nd + 1)
        return k + 1 if d <= k else k
    if name in ("view", "reshape", "flatten", "unflatten", "view_as", "reshape_as"):
        if k == 0 and batch and operand.shape[0] % batch == 0 and result.dim() and result.shape[0] % batch == 0:
            return 0  # the batch stays the outermost factor of dim 0 ((batch * sentences, words, ...) and back),
            # where the halves of dim 0 still pair each input with its reference
        before = math.prod(operand.shape[:k])  # the elements before the batch's dim, in memory order
        kept = [d for d in range(result.dim()) if math.prod(result.shape[:d]) == before
                and result.shape[d] == operand.shape[k]]
        return kept[0] if len(kept) == 1 else None  # merged with another dim: lost
    if result.dim() == nd and result.shape[k] == operand.shape[k]:
        return k  # elementwise, a rule's result, a linear map of the last dim, a mask filled in, a slice
    removed = _removed_dims(name, args, kwargs, nd, result.dim())
    if removed is not None and k not in removed:
        return k - sum(d < k for d in removed)
    sized = [d for d in range(result.dim()) if result.shape[d] == batch]
    return sized[0] if len(sized) == 1 else None


def _indexed_batch_dim(index, nd: int, k: int) -> int | None:
    """Where ``t[index]`` holds the batch when t holds it on dim k: slices keep a dim, integers drop one, None adds
    one, an Ellipsis stands for the dims no item names; None when the batch is indexed by an integer or a tensor."""
    items = list(index) if isinstance(index, tuple) else [index]
    if Ellipsis in items:
        at = items.index(Ellipsis)
        named = sum(1 for i in items if i is not None and i is not Ellipsis)
        items[at:at + 1] = [slice(None)] * (nd - named)
    in_dim = out_dim = 0
    for item in items:
        if item is None:
            out_dim += 1
            continue
        if in_dim == k:
            return out_dim if isinstance(item, slice) else None
        if isinstance(item, slice):
            out_dim += 1
        elif not isinstance(item, int):
            return None  # an index tensor: advanced indexing moves dims
        in_dim += 1
    return out_dim + (k - in_dim)


def _removed_dims(name: str, args, kwargs, nd: int, out_nd: int) -> list[int] | None:
    """The operand's dims a call removes (a reduction without keepdim, a select), or None if unknown."""
    if out_nd >= nd:
        return None
    if name == "select":
        return [int(_dim_arg(args, kwargs, 1)) % nd]
    dim = _dim_arg(args, kwargs, 1)
    if isinstance(dim, int):
        return [dim % nd]
    if isinstance(dim, (tuple, list)) and all(isinstance(d, int) for d in dim):
        return sorted(d % nd for d in dim)
    return None


# ---------------------------------------------------------------- the explainable copy


class _Context:
    """The explained batch for the copy's embeddings, set by :class:`ExplainableModel` per call: ``pairs`` of
    (the model's ids, the explained vectors served for them); ``record`` (while the copy finds its inputs'
    embeddings) maps each ids tensor an embedding is applied to, by identity, to what that embedding gives."""

    def __init__(self) -> None:
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.record: dict[int, tuple[torch.Tensor, nn.Module, torch.Tensor]] | None = None


class EmbeddingFromContext(nn.Module):
    """Stands in for the model's ``nn.Embedding``: returns the explained vectors for the model's own ids.

    Outside an explanation (no vectors set) it embeds ids as the original did and passes
    already-embedded float input (…, E) through, so the copy can also be handed to shap or
    Captum directly with embeddings (for models that use their ids for nothing else).
    """

    def __init__(self, embedding: nn.Embedding, context: _Context) -> None:
        super().__init__()
        self.embedding = embedding
        self.context = context

    @property
    def num_embeddings(self) -> int:
        return self.embedding.num_embeddings

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ctx = self.context
        if ctx.record is not None:
            return self._recorded(ids, ctx.record)
        if not ctx.pairs:
            return ids if ids.is_floating_point() else self.embedding(ids)
        for known, vectors in ctx.pairs:
            if ids is known:
                return vectors
        raise UnruledOpError(f"the model's nn.Embedding is applied to something other than its input ids at "
                             f"{user_location()}; the transform explains the embedding of the input ids")

    def _recorded(self, ids: torch.Tensor, record: dict) -> torch.Tensor:
        """The embedding of ``ids``, noted in ``record`` (a one-line error for ids it has no vector for)."""
        if not ids.is_floating_point() and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_embeddings):
            raise UsageError(f"token ids outside [0, {self.num_embeddings}) reach the nn.Embedding at {user_location()}; "
                             "were they encoded with this model's vocabulary?")
        out = self.embedding(ids)
        if id(ids) in record and record[id(ids)][1] is not self:
            raise UsageError(f"the same input ids are read by two nn.Embedding modules (at {user_location()}): which "
                             "vectors to explain is ambiguous; pass the embeddings as float inputs instead")
        record[id(ids)] = (ids, self, out)
        return out


class _Plain(nn.Module):
    """A module the libraries would apply their own rule to, run through the transform's rules instead.

    shap treats ``nn.Softmax`` as elementwise and Captum subtracts a mean over the whole tensor;
    neither is exact. Wrapped, the libraries pass the gradient through and :class:`RuleMode`
    gives the op its rule.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.inner = [module]  # a plain list: not a child, so no library hooks it

    def forward(self, *args, **kwargs):
        return self.inner[0].forward(*args, **kwargs)

    def __getattr__(self, name: str):
        """The wrapped module's attributes (a transformer layer reads its norms' ``eps``)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner[0], name)


# Module types shap or Captum hook with rules of their own.
LIBRARY_RULED = (nn.Sigmoid, nn.Tanh, nn.ReLU, nn.ReLU6, nn.ELU, nn.SELU, nn.CELU, nn.LeakyReLU, nn.Softplus,
                 nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.GELU, nn.SiLU, nn.Mish, nn.Hardtanh, nn.Hardsigmoid,
                 nn.Hardswish, nn.LogSigmoid, nn.Softsign, nn.Tanhshrink, nn.MaxPool1d, nn.MaxPool2d,
                 nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d, nn.Threshold,
                 nn.PReLU, nn.Dropout, nn.BatchNorm1d, nn.LayerNorm)


def _prepare_copy(model: nn.Module, steps: int, context: _Context) -> tuple[nn.Module, int]:
    """The copy: recurrent modules unrolled, embeddings served from the context, library-ruled modules plain."""
    from torch_imdb.explain.twin import ExplainableRNN

    root = copy.deepcopy(model).eval()
    for p in root.parameters():  # now: the modules _Plain hides are out of root.parameters() after the swap
        p.requires_grad_(False)  # only the explained input requires grad: that is what marks it
    embeddings = 0

    def swap(module: nn.Module) -> nn.Module:
        nonlocal embeddings
        if isinstance(module, RECURRENT_MODULES):
            return ExplainableRNN(module, steps).eval()
        if type(module) is nn.Embedding:
            embeddings += 1
            return EmbeddingFromContext(module, context)
        if isinstance(module, LIBRARY_RULED):
            return _Plain(module)
        for name, child in module.named_children():
            setattr(module, name, swap(child))
        return module

    root = swap(root)
    for p in root.parameters():  # and again: the twins copied requires_grad from the originals
        p.requires_grad_(False)
    return root, embeddings


class ExplainableModel(nn.Module):
    """A copy of ``model`` that shap and Captum explain exactly: ``forward(x, ids=None, *extra) -> (batch, K)``.

    x: the explained input, float (batch, T, F) sequences, or for a token model its
    embeddings (batch, T, E); ids: for a token model, the token ids (batch, T) the rest of
    the forward pass sees (masks, lengths); extra: further forward arguments, passed through
    as constants. The model's output (a tensor, or the entry ``output`` of a tuple or dict
    output) is returned as (batch, K): a (batch,) output becomes (batch, 1).
    ``rules_table`` is the table it runs under (:data:`RULES` by default; :func:`make_explainable` adds a
    caller's rules to it).
    """

    def __init__(self, model: nn.Module, steps: int, output: int | str | None = None,
                 rules_table: dict[str, Rule] | None = None) -> None:
        super().__init__()
        self.context = _Context()
        self.model, self.embeddings = _prepare_copy(model, steps, self.context)
        self.output = output
        self.rules_table = rules_table
        self.ids_read = False  # whether the last forward pass computed anything from the ids (a mask, lengths)
        self.layout: Layout | None = None  # several inputs: where each lies in the explained tensor (see .inputs)

    @property
    def tokens(self) -> bool:
        return self.embeddings > 0

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """The embeddings (n, T, E) of ids (n, T): the explained input of a token model."""
        if self.embeddings != 1:
            raise UsageError(f"token ids need a model with exactly one nn.Embedding (found {self.embeddings}); "
                             "pass embedded float inputs (N, T, E) instead")
        emb = next(m for m in self.model.modules() if isinstance(m, EmbeddingFromContext))
        with torch.no_grad():
            return emb.embedding(ids)

    def vocab_size(self) -> int:
        return next(m for m in self.model.modules() if isinstance(m, EmbeddingFromContext)).num_embeddings

    def embed_inputs(self, inputs: list[torch.Tensor], extra: tuple = ()) -> list[torch.Tensor]:
        """The explained values of each of several inputs (a tuple the model's forward takes first): the vectors
        the model's own nn.Embedding gives a token input (found by running the model once), a float input as it
        is. A one-line error for token ids that no embedding reads as they are."""
        ctx = self.context
        ctx.record = {}
        try:
            with torch.no_grad():
                self.model(*inputs, *extra)
            record = ctx.record
        finally:
            ctx.record = None
        out = []
        for k, x in enumerate(inputs):
            if not x.is_floating_point() and id(x) not in record:
                raise UsageError(f"input {k} holds token ids but no nn.Embedding of the model reads them as they are "
                                 "(unchanged, first thing); pass their embeddings as a float input instead")
            out.append(x if x.is_floating_point() else record[id(x)][2])
        return out

    def forward(self, x: torch.Tensor, ids: torch.Tensor | None = None, *extra) -> torch.Tensor:
        """The explained output (batch, K) of explained values x; with a :attr:`layout` (several inputs), x and
        ids are the inputs' explained values and token ids side by side (see :mod:`.inputs`)."""
        ctx = self.context
        if self.layout is None:
            explained, ids_of = [x], [ids]
        else:
            explained, ids_of = self.layout.unpack(x), self.layout.unpack_ids(ids)
        ctx.pairs = [(i, v) for i, v in zip(ids_of, explained) if i is not None]
        watch = tuple(i for i in ids_of if i is not None)
        mode = RuleMode(self.rules_table, watch=watch, batch=x.shape[0])
        try:
            with mode:
                for v in explained:  # each explained input holds the batch on dim 0, whatever its other sizes
                    mark_batch(v, 0)
                out = self.model(*(v if i is None else i for i, v in zip(ids_of, explained)), *extra)
        finally:
            ctx.pairs = []
        self.ids_read = mode.watched_read
        return self.select(out)

    def select(self, out) -> torch.Tensor:
        """The explained output (batch, K) of the model's raw output."""
        return select_output(out, self.output)


def select_output(out, key: int | str | None) -> torch.Tensor:
    """The explained output (batch, K) of a model's raw output: the tensor, or its entry ``key`` of a tuple or dict
    output; a (batch,) output becomes (batch, 1). One-line errors for anything else."""
    if isinstance(out, dict):
        if key is None and len(out) == 1:
            key = next(iter(out))
        if key not in out:
            raise UsageError(f"the model returns a dict with keys {sorted(map(str, out))}; choose one with "
                             f"output=KEY (--output KEY)")
        out = out[key]
    elif isinstance(out, (tuple, list)):
        if key is None:
            raise UsageError(f"the model returns a {type(out).__name__} of {len(out)}; choose one with output=INDEX")
        if not isinstance(key, int) or not -len(out) <= key < len(out):
            raise UsageError(f"output={key!r} is not an index of the model's {len(out)} outputs")
        out = out[key]
    elif key is not None:
        raise UsageError(f"output={key!r} was given but the model returns a single tensor")
    if not isinstance(out, torch.Tensor):
        raise UsageError(f"the explained output is a {type(out).__name__}, not a tensor")
    if out.dim() == 1:
        return out.unsqueeze(1)
    if out.dim() != 2:
        raise UsageError(f"the explained output has shape {tuple(out.shape)}; explain a (batch,) or (batch, K) output")
    return out


def make_explainable(model: nn.Module, steps: int, output: int | str | None = None,
                     extra_rules: dict[str, Rule] | None = None, fused: bool = False) -> ExplainableModel:
    """The explainable copy of ``model`` for sequences of up to ``steps`` steps (the original is not changed).

    See :class:`ExplainableModel`. Ops without a rule are refused, in one line naming the
    op and the line of the user's code, the first time the copy runs forward while differentiated.
    ``extra_rules`` (op name -> :class:`Rule`, e.g. ``{"atan": RESCALE}``) join :data:`RULES`, replacing a rule
    of the same name. ``fused``: every recurrent module's call on an explained batch of (input, reference) pairs
    runs as the fast engine's fused rule (:class:`~.stack.FusedRecurrence`) instead of unrolled, the same values.
    """
    bad_rule = next((k for k, v in (extra_rules or {}).items() if not isinstance(k, str) or not isinstance(v, Rule)),
                    None)
    if extra_rules is not None and (not isinstance(extra_rules, dict) or bad_rule is not None):
        raise UsageError("extra_rules maps op names to torch_imdb.explain.Rule entries, e.g. {'atan': RESCALE}; "
                         f"got {bad_rule!r}" if bad_rule is not None else f"got a {type(extra_rules).__name__}")
    bad = next((m for m in model.modules() if isinstance(m, (nn.LSTMCell, nn.GRUCell, nn.RNNCell))), None)
    if bad is not None:
        raise UsageError(f"the model holds an {type(bad).__name__}, which the explainable twin does not cover; "
                         "it explains nn.LSTM, nn.GRU and nn.RNN")
    from torch_imdb.explain.twin import ExplainableRNN

    copy = ExplainableModel(model, steps, output, {**RULES, **(extra_rules or {})}).eval()
    for module in copy.modules():
        if isinstance(module, ExplainableRNN):
            module.fused = fused
    return copy


def describe_rules() -> dict[str, list[str]]:
    """The op names the transform covers, by rule kind (for docs and error messages)."""
    by_kind: dict[str, list[str]] = {}
    for name, rule in sorted(RULES.items()):
        by_kind.setdefault(rule.kind, []).append(name)
    return by_kind


__all__ = ["ExplainableModel", "RESCALE", "RULES", "Rule", "RuleMode", "UnruledOpError", "describe_rules", "explained",
           "make_explainable", "select_output"]
