"""mspgt: tests of Multi-Scale Probabilistic Generation Theory (Zhang & Dong, arXiv 2505.18244).

Pipeline, one sub-package a step: data -> model -> extraction -> signals -> fusion (peaks, bootstrap)
-> interventions -> reports; experiments/ wires them into the three experiments of the paper.
"""

__version__ = "0.1.0"
