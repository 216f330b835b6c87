"""Output paths checked before the work that fills them: a command that would fail to
write its result after minutes of training fails at once instead, naming the flag.

Pure standard library (the bottom layer). Nothing is created or touched here.
"""

from __future__ import annotations

import os
from pathlib import Path


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (what a ``mkdir -p`` would start from)."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_creatable(path: Path, flag: str) -> None:
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise ValueError(f"{flag} {path}: {base} is not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: {base} is not writable")


def check_output_file(path: str | os.PathLike, flag: str) -> Path:
    """Raise ValueError naming ``flag`` unless a file can be written at ``path``: an
    existing writable file, or a new file whose folder exists (or can be made) and is
    writable. Returns the path."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{flag} {p}: is a folder; expected a file path")
    if p.exists():
        if not os.access(p, os.W_OK):
            raise ValueError(f"{flag} {p}: the file is not writable")
        return p
    _check_creatable(p, flag)
    return p


def check_output_dir(path: str | os.PathLike, flag: str) -> Path:
    """Raise ValueError naming ``flag`` unless a folder can be written at ``path``: an
    existing writable folder, or a new one whose nearest existing ancestor is a writable
    folder. Returns the path."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{flag} {p}: is a file; expected a folder")
    if p.is_dir():
        if not os.access(p, os.W_OK | os.X_OK):
            raise ValueError(f"{flag} {p}: the folder is not writable")
        return p
    _check_creatable(p, flag)
    return p
