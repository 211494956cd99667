"""Writing outputs safely: atomic file replacement and numpy -> plain Python conversion.

Every file moesim writes in one go (results, fitted models, count tables) goes through
:func:`atomic_write`, so an interrupted run never leaves a half-written file under the final
name; JSON/YAML payloads go through :func:`to_plain`.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a sibling temporary path, then move it onto ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    write(tmp)
    os.replace(tmp, path)
    return path


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (leftovers and locks of a dead writer are stale)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True             # it exists, owned by someone else
    except OSError:
        return False
    return True


def to_plain(x: Any, *, nonfinite_as_none: bool = True) -> Any:
    """dicts/lists/tuples/arrays/numpy scalars -> plain Python (dict keys as strings).

    JSON has no NaN or infinity: with ``nonfinite_as_none`` they become None. YAML has both,
    so model files keep them (``nonfinite_as_none=False``)."""
    if isinstance(x, dict):
        return {str(k): to_plain(v, nonfinite_as_none=nonfinite_as_none) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_plain(v, nonfinite_as_none=nonfinite_as_none) for v in x]
    if isinstance(x, np.ndarray):
        return to_plain(x.tolist(), nonfinite_as_none=nonfinite_as_none)
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and nonfinite_as_none and not math.isfinite(x):
        return None
    return x
