"""Exact DeepLIFT-SHAP explanations of the LSTM.

- :mod:`.twin`: the trained LSTM unrolled into hook-friendly modules;
- :mod:`.rules`: the Shapley product rule and the rescale multiplier;
- :mod:`.backends`: shap.DeepExplainer and Captum DeepLiftShap on the twin;
- :mod:`.fast`: the project's own engine, same values without hooks;
- :mod:`.compare`, :mod:`.all_test`: what ``python -m torch_imdb.explain`` runs.

Every engine has ``attribute(inputs, baselines) -> TokenAttribution`` with
token ids (N, T) and (B, T).
"""

from torch_imdb.explain.backends import CaptumDeepLiftShap, ShapDeepExplainer, TokenAttribution
from torch_imdb.explain.fast import FastDeepShap
from torch_imdb.explain.twin import LSTMTwin

__all__ = ["CaptumDeepLiftShap", "FastDeepShap", "LSTMTwin", "ShapDeepExplainer", "TokenAttribution"]
