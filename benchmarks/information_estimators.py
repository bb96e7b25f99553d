"""Which information estimator: the properties of every kernel x estimator of mspgt/signals/information.py on
planted cases, and on real token states where a cached boundary pass exists (the evidence behind the default;
docs/method.md, "Information curves and the eq. 28 test").

Rows (bits unless said): I(X;X)/S(X) (1 for a mutual information); independent states (mean of 10 draws, n = 128;
0 for a mutual information); the data-processing inequality on planted chains X -> Y -> Z (how many of 10 keep
I(X;Y) >= I(X;Z)); I(h; h - mean) - I(h; h) (<= 0 by the DPI); the entropy change under a common offset of 1x /
3x the typical token norm and under per-token rescaling (0 for an invariant estimator); the change of S and of
the independent-state MI from 32 to 256 tokens per group (0: no dependence on the group's size). With --real:
the same on SmolLM2 states from the probe sample of a cached pass (words with a massive norm left out, as the
pass leaves position 0 out), and I(h_14; h_15) beside its shuffle null.

Usage: python benchmarks/information_estimators.py [--real CACHE_CHUNK.npz] [--out docs/information_estimators.md]
(~30 s on 2 cores; --out writes the table under a header naming the command, the date and the machine)
"""

from __future__ import annotations

import argparse
import glob
import os

import numpy as np
import torch

from mspgt.signals.information import InformationSettings, group_information

CANDIDATES = {
    "cosine, plug-in (before)": InformationSettings(kernel="cosine", estimator="plugin", alpha=2.0),
    "cosine, U": InformationSettings(kernel="cosine"),
    "recentred, plug-in": InformationSettings(estimator="plugin", alpha=2.0),
    "recentred, U (default)": InformationSettings(),
}


def planted(n: int, d: int, gen: torch.Generator, rank: int = 8) -> torch.Tensor:
    z = torch.randn(n, rank, generator=gen, dtype=torch.float64)
    return z @ torch.randn(rank, d, generator=gen, dtype=torch.float64) + 0.3 * torch.randn(
        n, d, generator=gen, dtype=torch.float64)


def properties(s: InformationSettings, real: torch.Tensor | None) -> dict[str, float | str]:
    gen = torch.Generator().manual_seed(0)

    def mi(x: torch.Tensor, y: torch.Tensor) -> float:
        return float(group_information(torch.stack([x, y]), s)["mi_input"][1])

    def ent(x: torch.Tensor) -> float:
        return float(group_information(torch.stack([x, x]), s)["entropy"][0])

    out: dict[str, float | str] = {}
    x = planted(128, 64, gen)
    out["I(X;X) / S(X)"] = mi(x, x) / ent(x)
    for d in (64, 576):
        out[f"independent, low rank, d={d}"] = float(np.mean([mi(planted(128, d, gen), planted(128, d, gen))
                                                              for _ in range(10)]))
    out["independent, isotropic, d=576"] = float(np.mean([
        mi(torch.randn(128, 576, generator=gen, dtype=torch.float64),
           torch.randn(128, 576, generator=gen, dtype=torch.float64)) for _ in range(10)]))
    kept = 0
    for _ in range(10):
        x = planted(128, 64, gen)
        y = x @ torch.randn(64, 64, generator=gen, dtype=torch.float64) / 8 + 0.5 * x.std() * torch.randn(
            128, 64, generator=gen, dtype=torch.float64)
        z = y @ torch.randn(64, 64, generator=gen, dtype=torch.float64) / 8 + y.std() * torch.randn(
            128, 64, generator=gen, dtype=torch.float64)
        kept += mi(x, y) >= mi(x, z)
    out["DPI kept (of 10 chains)"] = f"{kept}"
    x = planted(128, 64, gen)
    out["I(h; h - mean) - I(h; h)"] = mi(x, x - x.mean(0)) - mi(x, x)
    b = torch.randn(64, generator=gen, dtype=torch.float64)
    b = b / b.norm() * x.norm(dim=-1).mean()
    out["S(X + offset 1x) - S(X)"] = ent(x + b) - ent(x)
    out["S(X + offset 3x) - S(X)"] = ent(x + 3 * b) - ent(x)
    c = torch.exp(torch.randn(128, 1, generator=gen, dtype=torch.float64))
    out["S(per-token rescaled) - S(X)"] = ent(x * c) - ent(x)
    big = planted(1024, 64, gen)
    out["S(n=32) - S(n=256)"] = ent(big[:32]) - ent(big[:256])
    out["indep. MI(n=32) - MI(n=256)"] = float(
        np.mean([mi(planted(32, 64, gen), planted(32, 64, gen)) for _ in range(10)])
        - np.mean([mi(planted(256, 64, gen), planted(256, 64, gen)) for _ in range(10)]))
    if real is not None:
        info = group_information(real.permute(1, 0, 2), s)  # [m, n, d]
        out["real S(h_0), S(h_15), S(h_L)"] = ", ".join(f"{info['entropy'][i]:.2f}" for i in (0, 15, -1))
        h = real[:, 15]
        b = torch.randn(h.shape[1], generator=gen, dtype=torch.float64)
        out["real S(h_15 + offset 1x) - S(h_15)"] = ent(h + b / b.norm() * h.norm(dim=-1).mean()) - ent(h)
        out["real S(h_15 rescaled) - S(h_15)"] = ent(h * torch.exp(torch.randn(len(h), 1, generator=gen,
                                                                               dtype=torch.float64))) - ent(h)
        out["real I(h_0; h_1), I(h_0; h_0)"] = f"{info['mi_input'][1]:.2f}, {mi(real[:, 0], real[:, 0]):.2f}"
        out["real I(h_14; h_15), shuffle null"] = f"{info['mi_adjacent'][15]:.2f}, {info['mi_adjacent_null'][15]:.2f}"
    return out


def real_states(path: str | None) -> torch.Tensor | None:
    """[128, m, d] float64 states of 128 words of a cached pass's probe sample (massive-norm words left out)."""
    if path is None:
        found = sorted(glob.glob(os.path.expanduser("~/.cache/mspgt/stats/*/chunk_00000.npz")))
        if not found:
            return None
        path = found[0]
    feat = torch.from_numpy(np.load(path)["train_feat"].astype(np.float64))  # [w, m, d]
    norm = feat.norm(dim=-1)
    feat = feat[(norm < 5 * norm.median(0).values).all(1)]
    return feat[np.linspace(0, len(feat) - 1, 128).round().astype(int)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", help="a cached chunk_*.npz of a boundary pass (default: the first one found)")
    ap.add_argument("--out", help="also write the table, with a header, to this markdown file")
    args = ap.parse_args()
    real = real_states(args.real)
    table = {name: properties(s, real) for name, s in CANDIDATES.items()}
    rows = list(next(iter(table.values())))
    lines = ["| property | " + " | ".join(table) + " |", "|---|" + "---|" * len(table)]
    for r in rows:
        cells = [v if isinstance(v, str) else f"{v:+.3f}" for v in (t[r] for t in table.values())]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    if args.out:
        import datetime
        import sys

        from mspgt.results import machine_info

        m = machine_info()
        header = [
            "# Which information estimator: properties on planted cases and SmolLM2 states", "",
            f"Made by `python benchmarks/{' '.join([os.path.basename(sys.argv[0]), *sys.argv[1:]])}` on "
            f"{datetime.date.today().isoformat()}, {m.get('cpu', '?')} ({m.get('platform', '')}); the rows are "
            "defined in the script's docstring, the choice in docs/method.md (\"Information curves and the eq. 28 "
            "test\"). Real states: " + ("none found" if real is None else f"{len(real)} words of a cached pass"),
            "", ""]
        with open(args.out, "w") as f:
            f.write("\n".join(header + lines) + "\n")


if __name__ == "__main__":
    main()
