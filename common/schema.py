"""One line for a pydantic ``ValidationError`` of a YAML file's data: the dotted key at
fault and what is wrong there, e.g. ``train.batch_size: must be > 0, got 0`` or
``features[3] (age).valid.min: expected a number, got 'x'``. The config (``model.config``)
and the feature spec (``feature_repo.spec``) both report their errors this way."""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

# pydantic error type -> the message after the key ({input} is the wrong value; other
# fields come from the error's context)
MESSAGES = {
    "missing": "required key is missing",
    "int_type": "expected an integer, got {input!r}",
    "float_type": "expected a number, got {input!r}",
    "bool_type": "expected true or false, got {input!r}",
    "string_type": "expected a string, got {input!r}",
    "list_type": "expected a list, got {input!r}",
    "tuple_type": "expected a list, got {input!r}",
    "dict_type": "expected a mapping, got {input!r}",
    "model_type": "expected a mapping, got {input!r}",
    "string_pattern_mismatch": "expected a name of letters, digits and _, got {input!r}",
    "literal_error": "expected one of {expected}, got {input!r}",
    "greater_than": "must be > {gt:g}, got {input!r}",
    "greater_than_equal": "must be >= {ge:g}, got {input!r}",
    "less_than": "must be < {lt:g}, got {input!r}",
    "too_short": "must list at least one value",
    "string_too_short": "must not be empty",
}
# errors about the shape of the data rather than a value: a feature is named by its index
SHAPE_ERRORS = frozenset({"missing", "extra_forbidden", "literal_error"})
_FEATURE = re.compile(r"features\[\d+\]")


def _child(node: Any, part: str | int) -> Any:
    if isinstance(node, dict):
        return node.get(part)
    ok = isinstance(node, list) and isinstance(part, int) and part < len(node)
    return node[part] if ok else None


def error_line(
    error: ValidationError, data: Any, *, top: str, name_on_shape_errors: bool = True
) -> str:
    """The first error of ``error`` (raised validating ``data``) as ``"<key>: <what>"``;
    ``top`` names the whole document when the error has no key. A list item under
    ``features`` is also named by its ``name`` (``features[3] (age)``), unless the error is
    about the data's shape and ``name_on_shape_errors`` is false."""
    errors = error.errors()
    first, node = errors[0], data
    for i, part in enumerate(first["loc"]):
        if isinstance(part, str) and not isinstance(node, dict):  # a union member's tag:
            same = [e for e in errors if e["loc"][:i] == first["loc"][:i]]
            first = max(same, key=lambda e: len(e["loc"]))  # the member that got furthest
            break
        node = _child(node, part)
    shape = first["type"] in SHAPE_ERRORS or first["type"].endswith("_type")
    named = name_on_shape_errors or not shape
    key, node = "", data
    for part in first["loc"]:
        if part == "[key]" or (isinstance(part, str) and not isinstance(node, dict)):
            continue
        key += f"[{part}]" if isinstance(node, list) else f".{part}" if key else str(part)
        node = _child(node, part)
        if named and _FEATURE.fullmatch(key) and isinstance(node, dict):
            key += f" ({node['name']})" if isinstance(node.get("name"), str) else ""
    ctx = first.get("ctx") or {}
    if ctx.get("key"):
        key += ctx["key"] if not key or ctx["key"].startswith("[") else f".{ctx['key']}"
    if "message" in ctx:
        return f"{key}: {ctx['message']}"
    template = MESSAGES.get(first["type"])
    text = template.format(input=first.get("input"), **ctx) if template else first["msg"]
    return f"{key or top}: {text}"
