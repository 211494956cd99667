"""Output locations, checked before the work starts.

A command that writes a file or a folder calls one of these first, so a path it cannot
write (``/proc/x``, ``/dev/null/sub``, a folder where a file is wanted, a read-only place)
is a one-line error *before* minutes of simulation or fitting, not a traceback after.

Writability is tested by creating (and removing) a probe file in the nearest existing
ancestor: permission bits alone say nothing when running as root, on read-only mounts or on
pseudo file systems such as /proc.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import MoesimError


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and not p.is_symlink():
        if p.parent == p:
            break
        p = p.parent
    return p


def _check_creatable(path: Path, what: str) -> None:
    """The missing part of ``path`` can be created: its nearest existing ancestor is a
    writable directory (creating the missing folders is left to the writer)."""
    anc = _nearest_existing(path.parent)
    if not anc.is_dir():
        raise MoesimError(f"{what} {path}: cannot be written: {anc} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".moesim-probe-", dir=anc)
    except OSError as exc:
        raise MoesimError(f"{what} {path}: cannot create files in {anc}: "
                          f"{exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)


def check_output_file(path: str | os.PathLike, what: str = "output file", *,
                      suffixes: tuple[str, ...] | None = None) -> Path:
    """Raise MoesimError unless ``path`` can be written as a file (it may exist as a file and
    is then replaced). ``what`` names the file in the message, e.g. ``"-o"`` or
    ``"--plot"``; ``suffixes`` (e.g. ``(".png", ".svg", ".pdf")``) are the allowed
    extensions, case-insensitive. Returns ``path`` as a Path; missing parent folders are
    allowed (writers create them) as long as they can be created."""
    p = Path(path)
    if str(path) == "":
        raise MoesimError(f"{what}: empty path")
    if suffixes is not None and p.suffix.lower() not in suffixes:
        raise MoesimError(f"{what} {p}: must end in {', '.join(suffixes)}, got "
                          f"{p.suffix or 'no extension'!r}")
    if p.is_dir():
        raise MoesimError(f"{what} {p}: is an existing directory; a file is wanted")
    if p.exists() and not p.is_file():
        raise MoesimError(f"{what} {p}: exists and is not a regular file")
    _check_creatable(p, what)
    return p


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Raise MoesimError unless ``path`` can be used as a folder of results: an existing
    directory or a path whose missing folders can be created, in a writable parent (results
    folders are written as a sibling and renamed into place, so the *parent* must accept new
    entries). An existing *file* there is an error (never replaced by a folder). Returns
    ``path`` as a Path."""
    p = Path(path)
    if str(path) == "":
        raise MoesimError(f"{what}: empty path")
    if p.exists() and not p.is_dir():
        raise MoesimError(f"{what} {p}: is an existing file; a results folder is wanted")
    _check_creatable(p.resolve() if p.is_symlink() else p, what)
    return p
