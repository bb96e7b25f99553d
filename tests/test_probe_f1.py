"""probes.f1_average: our macro, micro and weighted F1 equal sklearn's."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize("average", ["macro", "micro", "weighted"])
def test_f1_average_matches_sklearn(average):
    from sklearn.metrics import f1_score

    from mspgt.signals.probes import _confusion_counts, average_f1

    rng = np.random.default_rng(3)
    gold = rng.integers(0, 5, 400)
    pred = np.where(rng.random((400, 3)) < 0.6, gold[:, None], rng.integers(0, 6, (400, 3)))  # class 5: never gold
    tp, fp, fn = (c[0].astype(np.float64) for c in _confusion_counts(gold, pred, np.zeros(400, int), 1, 6))
    present = np.unique(gold)
    ours = average_f1(tp[:, present], fp[:, present], fn[:, present], average)  # [L+1]
    ref = [f1_score(gold, pred[:, layer], labels=present, average=average, zero_division=np.nan) for layer in range(3)]
    np.testing.assert_allclose(ours, ref, rtol=1e-12)
