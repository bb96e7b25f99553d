"""Signals: the three layer-wise signals of the paper (eqs. 3-5): representation change (cka), probe jumps
(probes) and attention drift (attention_drift); layerwise recomputes them from stored statistics."""
