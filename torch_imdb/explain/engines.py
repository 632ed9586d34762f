"""The one engine registry: each engine's name (as ``--engines`` takes it) and how it is built.

Every command, runner and benchmark builds its explainers here, so an engine added to :data:`REGISTRY` reaches
them all; ``cli.ENGINES``, the command line's torch-free list, is tested equal to its keys (this module does not
import the command line: it sits below it).
"""

from __future__ import annotations

import torch

from torch_imdb.errors import UsageError
from torch_imdb.explain.backends import CaptumDeepLiftShap, FusedDeepShap, ShapDeepExplainer
from torch_imdb.explain.fast import FastDeepShap
from torch_imdb.explain.shapley import ShapleySampling

# name -> how to build it for (model, dtype, options), options being the engine's own keyword arguments
REGISTRY = {
    "shap": lambda model, dtype, options: ShapDeepExplainer(model, dtype, **options),
    "captum": lambda model, dtype, options: CaptumDeepLiftShap(model, dtype, **options),
    "fast": lambda model, dtype, options: FastDeepShap(model, dtype, **{**options, "compile": False}),
    "fast-compiled": lambda model, dtype, options: FastDeepShap(model, dtype, **{**options, "compile": True}),
    "fused": lambda model, dtype, options: FusedDeepShap(model, dtype, **options),
    "shapley": lambda model, dtype, options: ShapleySampling(model, dtype, **options),
}


def make_engine(name: str, model, dtype: torch.dtype = torch.float32, **options):
    """The explainer called ``name`` (a key of REGISTRY, as cli.ENGINES lists them) for ``model`` in ``dtype``,
    built with ``options`` (its own keyword arguments: ``chunk_pairs`` of the fast engine, ``target_reliability``
    of the shapley engine, ``output`` of any). fast-compiled is
    the fast engine with torch.compile, fused the transform with the fast engine's fused recurrence, shapley the
    sampled interventional Shapley values (not DeepSHAP: the game DeepSHAP approximates, to a reliability of 0.98)."""
    if name not in REGISTRY:
        raise UsageError(f"unknown engine {name!r}; choose from {', '.join(REGISTRY)}")
    return REGISTRY[name](model, dtype, options)
