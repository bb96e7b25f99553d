"""Fusion of the layer-wise signals (paper eq. 6), peak detection and the group bootstrap."""
