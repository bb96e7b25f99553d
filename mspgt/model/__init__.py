"""Model loading and what is known about a model before and after it loads.

loading.py (the five sources, block lookup), checkpoint.py (local folders and hub ids, errors that name the
fix), identity.py (the weights id, from content), attention_layout.py (each block's allowed keys),
sizing.py (dtype and batch size `auto`), tiny.py (tiny random models of ten real architectures).
"""

from mspgt.model.loading import LoadedModel, load_model

__all__ = ["LoadedModel", "load_model"]
