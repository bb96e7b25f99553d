"""Power of the paired t-test over prompts (experiment=intervention), so a study's number of prompts is chosen
from a power estimate, not a guess.

The paired t-test of n prompts (two-sided, level alpha) rejects when |t| > t_{1-alpha/2, n-1}; under a true
standardised paired effect d_z = mean(d) / sd(d), t follows the noncentral t distribution with n - 1 degrees
of freedom and noncentrality d_z * sqrt(n) (Cohen 1988, ch. 2; the computation G*Power does for "means:
difference between two dependent means"). Hence

    power(n, d_z, alpha) = P(T > t_crit) + P(T < -t_crit),  T ~ nct(n - 1, d_z sqrt(n)),

`prompts_for_power` is the smallest n with power >= the target, and `detectable_effect` the smallest d_z that
n prompts detect with that power (the sensitivity of a finished run: reported in every intervention.json, a
statement about the design, not a post-hoc power of the observed effect).

    python -m mspgt.interventions.power --effect 0.3          # prompts for d_z = 0.3 at 80% power
    python -m mspgt.interventions.power --prompts 90          # the d_z that 90 prompts detect
"""

from __future__ import annotations

import argparse
import math

from scipy import optimize, stats

DEFAULT_ALPHA = 0.05
DEFAULT_POWER = 0.80


def paired_t_power(n: int, effect: float, alpha: float = DEFAULT_ALPHA) -> float:
    """Power of the two-sided paired t-test of `n` pairs at level `alpha` against a true effect d_z = `effect`."""
    if n < 2:
        raise ValueError(f"a paired t-test needs at least 2 pairs, got n={n}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    df, nc = n - 1, abs(effect) * math.sqrt(n)
    crit = stats.t.ppf(1 - alpha / 2, df)
    # P(T < -crit | nc) written as P(T > crit | -nc): scipy's nct.cdf is nan far in that tail
    return float(stats.nct.sf(crit, df, nc) + stats.nct.sf(crit, df, -nc))


def prompts_for_power(effect: float, alpha: float = DEFAULT_ALPHA, power: float = DEFAULT_POWER) -> int:
    """The smallest number of prompts whose paired t-test reaches `power` against d_z = `effect`."""
    if not effect or not math.isfinite(effect):
        raise ValueError(f"the effect size d_z must be finite and non-zero, got {effect}")
    if not 0 < power < 1:
        raise ValueError(f"power must lie in (0, 1), got {power}")
    # the normal approximation n ~ ((z_{1-a/2} + z_{power}) / d)^2 is a lower bound: search upwards from it
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    n = max(2, math.floor((z / abs(effect)) ** 2))
    while paired_t_power(n, effect, alpha) < power:
        n += 1
    return n


def detectable_effect(n: int, alpha: float = DEFAULT_ALPHA, power: float = DEFAULT_POWER) -> float:
    """The smallest d_z that a paired t-test of `n` prompts detects with `power` (its sensitivity)."""
    if n < 2:
        raise ValueError(f"a paired t-test needs at least 2 pairs, got n={n}")
    high = 1.0
    while paired_t_power(n, high, alpha) < power:  # power rises with d_z: bracket the root, then solve
        high *= 2
    return float(optimize.brentq(lambda d: paired_t_power(n, d, alpha) - power, 1e-6, high, xtol=1e-10))


def power_record(n: int, alpha: float = DEFAULT_ALPHA, power: float = DEFAULT_POWER) -> dict[str, float | int | str]:
    """What an intervention run records about its design's sensitivity."""
    if n < 2:
        return {"n_prompts": n, "alpha": alpha, "power": power, "detectable_dz": float("nan"),
                "definition": "fewer than 2 prompts: no paired t-test"}
    return {"n_prompts": n, "alpha": alpha, "power": power, "detectable_dz": detectable_effect(n, alpha, power),
            "definition": "the smallest Cohen's d_z that the two-sided paired t-test over these prompts detects "
                          "with this power (noncentral t; mspgt/interventions/power.py)"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Power of the paired t-test over prompts (experiment=intervention)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--effect", type=float, help="the d_z to detect: prints the prompts needed")
    what.add_argument("--prompts", type=int, help="a number of prompts: prints the d_z it detects")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA)
    parser.add_argument("--power", type=float, default=DEFAULT_POWER)
    args = parser.parse_args(argv)
    if args.effect is not None:
        n = prompts_for_power(args.effect, args.alpha, args.power)
        print(f"{n} prompts: a two-sided paired t-test at alpha={args.alpha:g} detects d_z={args.effect:g} with "
              f"power {paired_t_power(n, args.effect, args.alpha):.3f} (target {args.power:g})")
    else:
        d = detectable_effect(args.prompts, args.alpha, args.power)
        print(f"{args.prompts} prompts detect d_z >= {d:.3f} with power {args.power:g} (two-sided paired t-test, "
              f"alpha={args.alpha:g})")


if __name__ == "__main__":
    main()
