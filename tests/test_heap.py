"""steady_heap (mspgt/heap.py): a loop that allocates and frees ~100 MB a step page-faults it back in every
step under glibc's own (dynamic) thresholds, and not inside steady_heap. Each case runs in a fresh
interpreter, so the thresholds start where glibc starts them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mspgt.heap import _glibc

pytestmark = pytest.mark.skipif(_glibc() is None, reason="steady_heap acts on glibc only (a no-op elsewhere)")

CHURN = """
import json, resource
from mspgt.heap import steady_heap

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def churn(steps):  # what a probe step does: large temporaries, each under 32 MiB, all freed at the end
    before = faults()
    for _ in range(steps):
        blocks = [bytearray(20 << 20) for _ in range(5)]  # 100 MiB, zero-filled (every page touched)
        del blocks
    return faults() - before

churn(2)  # the first frees raise glibc's dynamic thresholds to where they settle
default = churn(10)
with steady_heap() as was_set:
    churn(1)  # the heap grows once
    steady = churn(10)
print(json.dumps({"set": was_set, "default": default, "steady": steady}))
"""

PAGES_PER_STEP = 5 * (20 << 20) // 4096  # 4 KiB pages touched by one step


def run_churn(env: dict[str, str]) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run(
        [sys.executable, "-c", CHURN],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_loop_faults_its_temporaries_back_every_step_without_it_and_not_inside_it():
    r = run_churn({})
    assert r["set"] is True
    assert r["default"] > 10 * PAGES_PER_STEP * 0.3  # glibc trims the heap top and refaults it every step
    assert r["steady"] < 0.02 * r["default"]  # kept: no page comes back from the kernel


def test_malloc_tuning_in_the_environment_wins():
    r = run_churn({"MALLOC_TRIM_THRESHOLD_": str(1 << 20)})
    assert r["set"] is False
