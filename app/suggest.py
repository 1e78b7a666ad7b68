"""Error messages that help: the closest valid name to a mistyped one, and (a bounded list of) what exists."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

SHOWN = 20  # names listed at most; past that, "and N more"


def closest(name: str, options: Iterable[str]) -> str | None:
    """The option nearest to `name` (case-insensitive), if one is near enough to be a typo."""
    options = list(options)
    by_lower = {o.lower(): o for o in options}
    found = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[found[0]] if found else None


def hint(name: str, options: Iterable[str], noun: str = "valid names") -> str:
    """`"; did you mean `x`? valid names: a, b, c"` (bounded), or `""` when there are no options."""
    options = sorted(set(options))
    if not options:
        return ""
    guess = closest(name, options)
    listed = ", ".join(options[:SHOWN]) + (f" and {len(options) - SHOWN} more" if len(options) > SHOWN else "")
    return (f"; did you mean {guess!r}?" if guess else "") + f" ({noun}: {listed})"
