"""Exact DeepLIFT-SHAP explanations of LSTM and GRU models.

- :mod:`.transform`: the model transform, a rule for every op of the forward pass (or a refusal);
- :mod:`.twin`: the explainable twin of nn.LSTM / nn.GRU, unrolled into ops with rules;
- :mod:`.rules`: the rescale and Shapley rules, and softmax, max and LayerNorm as their decompositions;
- :mod:`.api`: the explainer protocol, its result (``Attribution``), the input checks and the completeness guard;
- :mod:`.engines`: the one engine registry and ``make_engine``, which every command and benchmark builds with;
- :mod:`.backends`: shap.DeepExplainer and Captum DeepLiftShap on the explainable copy;
- :mod:`.fast`: the project's own engine, same values without hooks; :mod:`.head`: its heads;
- :mod:`.own`: the user's module as it is, what the fast engine's guard checks against;
- :mod:`.dropins`: shap's ``DeepExplainer``, Captum's ``DeepLiftShap`` and ``LayerDeepLiftShap`` on these engines;
- :mod:`.shapley`: the interventional Shapley values DeepSHAP approximates, sampled to a target, with standard errors;
- :mod:`.compare`, :mod:`.corpus`: what ``python -m torch_imdb.explain`` runs.

Every engine has ``attribute(inputs, baselines, target=0) -> Attribution`` with
token ids (N, T) and (B, T), or float sequences (N, T, F) and (B, T, F).
"""

# Loaded on first use (PEP 562), so that `python -m torch_imdb.explain --help` does not wait for torch.
_EXPORTS = {
    "Attribution": "api", "Explainer": "api", "make_engine": "engines", "CaptumDeepLiftShap": "backends", "FusedDeepShap": "backends",
    "ShapDeepExplainer": "backends",
    "check_completeness": "api", "FastDeepLiftShap": "fast", "FastDeepShap": "fast", "RNNParts": "own",
    "ExplainableModel": "transform", "RESCALE": "transform", "Rule": "transform", "UnruledOpError": "transform",
    "describe_rules": "transform", "make_explainable": "transform", "ExplainableRNN": "twin",
    "DeepExplainer": "dropins", "DeepLiftShap": "dropins", "LayerDeepLiftShap": "dropins", "ShapleySampling": "shapley",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'torch_imdb.explain' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"torch_imdb.explain.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
