"""Model loading (packaged GGUF, hub ids, tiny random models of the real architectures) and block lookup."""

from mspgt.model.loading import LoadedModel, load_model

__all__ = ["LoadedModel", "load_model"]
