"""mspgt: tests of Multi-Scale Probabilistic Generation Theory (Zhang & Dong, arXiv 2505.18244).

Pipeline, one sub-package a step: data -> model -> extraction -> signals -> fusion (peaks, bootstrap)
-> interventions -> reports; experiments/ wires them into the three experiments of the paper.
"""

import os

from omegaconf import OmegaConf

__version__ = "0.1.0"

# `${mspgt.launch_dir:}`: the folder the command was started from. Hydra's `${hydra:runtime.cwd}` is the
# same folder (jobs never chdir: hydra.job.chdir=false) but cannot be resolved while a multirun sets up its
# sweep folder, so conf/ uses this one for every path that a sweep folder is built from.
OmegaConf.register_new_resolver("mspgt.launch_dir", os.getcwd, replace=True)
