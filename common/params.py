"""``KEY=VALUE`` assignments given on a command line (``--set train.batch_size=4096``,
``--param min_auc=0.7``, ``--node-selector pool=gpu``): one syntax, one set of errors.

Pure Python: every part of the project may import it (the bottom layer).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import yaml


def parse_value(text: str) -> Any:
    """A value as YAML reads it (``4096`` -> int, ``[32,16]`` -> list, ``null`` -> None),
    except that ``1e-3`` is a float (YAML 1.1 reads it as a string)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(
            f"{text!r} is not a YAML value: {getattr(e, 'problem', None) or e}"
        ) from None
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    return value


def parse_assignments(
    items: Iterable[str],
    flag: str,
    *,
    typed: bool = True,
    last_wins: bool = False,
    example: str = "",
) -> dict[str, Any]:
    """``["a.b=1", "c=x=y", "d="]`` -> ``{"a.b": 1, "c": "x=y", "d": None}``.

    The key is what comes before the first ``=`` (stripped), the value all after it. With
    ``typed`` the values are read by ``parse_value``; without, they stay strings (for a
    caller that types them itself, e.g. from declared parameter types). A key given twice
    is an error, unless ``last_wins`` (overrides: a later one replaces an earlier one).

    Raises:
        ValueError: one line starting ``"{flag} 'item': "``: ``expected KEY=VALUE`` (and
            ``example``) for an item without ``=`` or with an empty key, ``KEY is given
            twice`` (without ``last_wins``), or why the value is not YAML.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            hint = f", e.g. {flag} {example}" if example else ""
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE{hint}")
        if key in out and not last_wins:
            raise ValueError(f"{flag} {item!r}: {key} is given twice")
        if typed:
            try:
                out[key] = parse_value(value)
            except ValueError as e:
                raise ValueError(f"{flag} {item!r}: {e}") from None
        else:
            out[key] = value
    return out
