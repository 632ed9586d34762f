"""Exact DeepLIFT-SHAP explanations of LSTM and GRU models.

- :mod:`.twin`: the explainable twin of nn.LSTM / nn.GRU and the model transform;
- :mod:`.rules`: the Shapley product rule and the rescale multiplier;
- :mod:`.backends`: shap.DeepExplainer and Captum DeepLiftShap on the explainable copy;
- :mod:`.fast`: the project's own engine, same values without hooks;
- :mod:`.compare`, :mod:`.corpus`: what ``python -m torch_imdb.explain`` runs.

Every engine has ``attribute(inputs, baselines, target=0) -> Attribution`` with
token ids (N, T) and (B, T), or float sequences (N, T, F) and (B, T, F).
"""

from torch_imdb.explain.backends import Attribution, CaptumDeepLiftShap, ShapDeepExplainer
from torch_imdb.explain.fast import FastDeepShap
from torch_imdb.explain.twin import ExplainableRNN, make_explainable

__all__ = ["Attribution", "CaptumDeepLiftShap", "ExplainableRNN", "FastDeepShap", "ShapDeepExplainer",
           "make_explainable"]
