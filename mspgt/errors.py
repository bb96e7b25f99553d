"""The one error type users see: what went wrong and the fix, raised before long work starts."""

from __future__ import annotations


class MspgtError(Exception):
    """A problem with the user's input or environment. The message names the fix."""

    def __init__(self, problem: str, fix: str) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}\n  fix: {fix}")


def choose(kind: str, name: str, choices: list[str] | tuple[str, ...], override: str) -> None:
    """Raise a clear error for an unknown name, listing the valid choices."""
    if name not in choices:
        raise MspgtError(
            f"unknown {kind} {name!r}",
            f"use one of {sorted(choices)}, e.g. `{override}={sorted(choices)[0]}`",
        )
