"""torch-imdb: an exactly explained PyTorch LSTM sentiment model on IMDB (SHAP + Captum)."""

__version__ = "0.1.0"
