"""Progress bars for work that can take more than a few seconds (sweeps, synthesis, fits,
comparisons, long runs). One place, so every command behaves the same way:

* shown on standard error only when it is a terminal;
* off with ``quiet=True`` (the commands' ``-q``) or ``MOESIM_PROGRESS=0`` in the environment;
  ``MOESIM_PROGRESS=1`` forces it on (e.g. under a pager that is not a TTY).

Built on tqdm; code calls :func:`bar` and uses ``update``/``set_postfix_str``/``close`` (or
``with``) whether or not a bar is shown.
"""
from __future__ import annotations

import os
import sys


def enabled(quiet: bool = False) -> bool:
    """Whether a progress bar should be drawn."""
    if quiet:
        return False
    env = os.environ.get("MOESIM_PROGRESS", "").strip().lower()
    if env in ("0", "false", "no", "off"):
        return False
    if env in ("1", "true", "yes", "on"):
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _Null:
    """Stands in for a tqdm bar when none is shown."""

    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def set_description_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bar(total: int | float | None = None, *, desc: str = "", unit: str = "it",
        quiet: bool = False, initial: int = 0, **kw):
    """A tqdm bar on stderr (or a silent stand-in, see :func:`enabled`)."""
    if not enabled(quiet):
        b = _Null()
        b.n = initial
        return b
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit=unit, initial=initial, file=sys.stderr,
                dynamic_ncols=True, leave=False, **kw)
