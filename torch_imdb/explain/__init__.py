"""Exact DeepLIFT-SHAP explanations of LSTM and GRU models.

- :mod:`.transform`: the model transform, a rule for every op of the forward pass (or a refusal);
- :mod:`.twin`: the explainable twin of nn.LSTM / nn.GRU, unrolled into ops with rules;
- :mod:`.rules`: the rescale and Shapley rules, and softmax, max and LayerNorm as their decompositions;
- :mod:`.backends`: shap.DeepExplainer and Captum DeepLiftShap on the explainable copy;
- :mod:`.fast`: the project's own engine, same values without hooks;
- :mod:`.compare`, :mod:`.corpus`: what ``python -m torch_imdb.explain`` runs.

Every engine has ``attribute(inputs, baselines, target=0) -> Attribution`` with
token ids (N, T) and (B, T), or float sequences (N, T, F) and (B, T, F).
"""

from torch_imdb.explain.backends import Attribution, CaptumDeepLiftShap, ShapDeepExplainer, check_completeness
from torch_imdb.explain.fast import FastDeepLiftShap, FastDeepShap, RNNParts
from torch_imdb.explain.transform import ExplainableModel, UnruledOpError, describe_rules, make_explainable
from torch_imdb.explain.twin import ExplainableRNN

__all__ = ["Attribution", "CaptumDeepLiftShap", "ExplainableModel", "ExplainableRNN", "FastDeepLiftShap",
           "FastDeepShap", "RNNParts", "ShapDeepExplainer", "UnruledOpError", "check_completeness",
           "describe_rules", "make_explainable"]
