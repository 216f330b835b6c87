"""Requests checked against the feature spec, before anything is scored.

A request names its candidates by the spec's entity join keys and may carry request
context and any other feature of the spec. Every value is checked against the column it
names (``features.yaml``): its type (``dtype``), its range or value set (``valid``; for a
list column, each element's) and, for an entity key, that it is there. The two protocols
give the same checks:

- KServe V1: ``{"instances": [{"<column>": value, ...}, ...]}``, one object per candidate;
  a field it leaves out is read from the online store, ``null`` is a missing value.
- Open Inference Protocol (V2): ``{"inputs": [{"name": "<column>", "shape": [N],
  "datatype": "INT64", "data": [...]}, ...]}``, one tensor per column, N candidates each
  (``shape [N, 1]`` too); a column it leaves out is read from the store. List columns are
  not tensors: they come from the store (or from a V1 request).

**One rule for bad input: HTTP 400** (what KServe's model server answers for an invalid
input), with ``{"error": "<where>: <what>"}`` naming the field, e.g.
``instances[3].<column>: -5000 is below the spec's minimum 0``. A request larger than the
server's limits is 413. Checks are per column over all candidates at once; only an error
walks back to the first candidate at fault.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from feature_repo.spec import FeatureSpec

BAD_REQUEST = 400
"""The status of every request that fails a check (KServe's InvalidInput)."""
TOO_LARGE = 413

_INT64 = (-(2**63), 2**63 - 1)
_TYPES: dict[str, tuple[type, ...]] = {
    "int64": (int,),
    "float64": (int, float),
    "string": (str,),
    "bool": (bool,),
}
_EXPECTED = {
    "int64": "an integer",
    "float64": "a finite number",
    "string": "a string",
    "bool": "true or false",
}
_LISTS = {"int64": "a list of integers", "string": "a list of strings"}
_V2_TYPES = {
    "int64": {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"},
    "float64": {"FP32", "FP64"},
    "string": {"BYTES"},
    "bool": {"BOOL"},
}
_V2_NAMES = {"int64": "INT64", "float64": "FP64", "string": "BYTES", "bool": "BOOL"}


class RequestError(Exception):
    """A request the server refuses: HTTP ``status`` and a message naming the field."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Absent:
    """A field the request did not send (the store's value is used), unlike ``None``."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()


@dataclass
class Batch:
    """N checked candidates, column by column: ``columns[name]`` holds N values, ``None``
    for a missing value and ``ABSENT`` where the request did not send the field."""

    n: int
    columns: dict[str, list[Any]]

    def values(self, name: str) -> list[Any]:
        """N values of a column, ``None`` where missing or not sent."""
        column = self.columns.get(name)
        if column is None:
            return [None] * self.n
        return [None if v is ABSENT else v for v in column]

    def absent(self, name: str) -> list[bool]:
        """N flags: the request did not send this column's value."""
        column = self.columns.get(name)
        if column is None:
            return [True] * self.n
        return [v is ABSENT for v in column]


@dataclass(frozen=True)
class _Column:
    name: str
    dtype: str
    key: bool
    min: float | None
    max: float | None
    values: frozenset | None
    shown_values: tuple


class RequestChecks:
    """The checks of a feature spec: ``v1(payload)`` and ``v2(inputs)`` -> a ``Batch``,
    or RequestError naming the field at fault."""

    def __init__(self, spec: FeatureSpec, max_candidates: int) -> None:
        self.max_candidates = max_candidates
        self.join_keys = [e.join_key for e in spec.entities.values()]
        self.columns: dict[str, _Column] = {}
        for f in spec.features:
            valid = f.valid
            self.columns[f.name] = _Column(
                name=f.name,
                dtype=f.dtype,
                key=f.name in self.join_keys,
                min=valid.min if valid else None,
                max=valid.max if valid else None,
                values=frozenset(valid.values) if valid and valid.values else None,
                shown_values=tuple(valid.values) if valid and valid.values else (),
            )
        self.dtypes = {name: c.dtype for name, c in self.columns.items()}

    # ------------------------------------------------------------------------------ V1

    def v1(self, payload: Any) -> Batch:
        """A decoded V1 body (a dict, or the raw bytes when the content type was not JSON)."""
        if isinstance(payload, bytes | bytearray | str):
            payload = parse_json(payload)
        if not isinstance(payload, dict) or "instances" not in payload:
            raise RequestError(BAD_REQUEST, 'expected a JSON object {"instances": [{...}, ...]}')
        instances = payload["instances"]
        if not isinstance(instances, list):
            raise RequestError(
                BAD_REQUEST, f"instances: expected a list, got {json_type(instances)}"
            )
        self._check_count(len(instances), "instances")
        if set(map(type, instances)) != {dict}:
            i = next(i for i, row in enumerate(instances) if type(row) is not dict)
            raise RequestError(
                BAD_REQUEST,
                f"instances[{i}]: expected an object of features, got {json_type(instances[i])}",
            )
        sent = set().union(*instances)
        unknown = sent - self.columns.keys()
        if unknown:
            i, key = next((i, k) for i, row in enumerate(instances) for k in row if k in unknown)
            raise RequestError(
                BAD_REQUEST,
                f"instances[{i}]: unknown field {key!r} (known: {', '.join(self.columns)})",
            )
        columns = {
            name: list(map(dict.get, instances, repeat(name), repeat(ABSENT)))
            for name in self.columns
            if name in sent or name in self.join_keys
        }
        for name, values in columns.items():
            self._check(self.columns[name], values, lambda i, n=name: f"instances[{i}].{n}")
        return Batch(len(instances), columns)

    # ------------------------------------------------------------------------------ V2

    def v2(self, inputs: Sequence[tuple[str, Sequence[int], str, Any]]) -> Batch:
        """V2 input tensors as ``(name, shape, datatype, data)``."""
        if not inputs:
            raise RequestError(BAD_REQUEST, "inputs: empty; send one tensor per column")
        columns: dict[str, list[Any]] = {}
        where: dict[str, int] = {}
        n = None
        for j, (name, shape, datatype, data) in enumerate(inputs):
            at = f"inputs[{j}] ({name})"
            column = self.columns.get(name)
            if column is None:
                raise RequestError(
                    BAD_REQUEST, f"{at}: unknown input (known: {', '.join(self.columns)})"
                )
            if name in columns:
                raise RequestError(BAD_REQUEST, f"{at}: sent twice")
            if column.dtype.startswith("list<"):
                raise RequestError(
                    BAD_REQUEST,
                    f"{at}: a list feature ({column.dtype}) is not a V2 tensor; leave it to "
                    "the feature store or send it with the V1 protocol",
                )
            if datatype not in _V2_TYPES[column.dtype]:
                raise RequestError(
                    BAD_REQUEST,
                    f"{at}: datatype {datatype!r} does not fit the spec's {column.dtype} "
                    f"(use {_V2_NAMES[column.dtype]})",
                )
            values = _flat(data, shape, at)
            if n is None:
                self._check_count(len(values), f"{at}: shape[0]")
                n = len(values)
            elif len(values) != n:
                raise RequestError(
                    BAD_REQUEST, f"{at}: {len(values)} values, but inputs[0] has {n}"
                )
            columns[name] = values
            where[name] = j
        assert n is not None
        for key in self.join_keys:
            if key not in columns:
                raise RequestError(BAD_REQUEST, f"inputs: no tensor {key!r} (an entity key)")
        for name, values in columns.items():
            at = f"inputs[{where[name]}] ({name})"
            self._check(self.columns[name], values, lambda i, at=at: f"{at}.data[{i}]")
        return Batch(n, columns)

    def v2_inputs(self) -> list[dict[str, Any]]:
        """The V2 model metadata's inputs: every scalar column, ``[-1]`` candidates."""
        return [
            {"name": c.name, "datatype": _V2_NAMES[c.dtype], "shape": [-1]}
            for c in self.columns.values()
            if not c.dtype.startswith("list<")
        ]

    # ------------------------------------------------------------------------- the checks

    def _check_count(self, n: int, where: str) -> None:
        if n == 0:
            raise RequestError(BAD_REQUEST, f"{where}: empty; send 1 or more candidates")
        if n > self.max_candidates:
            raise RequestError(
                TOO_LARGE,
                f"{where}: {n:,} candidates, more than the limit of "
                f"{self.max_candidates:,} per request",
            )

    def _check(self, column: _Column, values: list[Any], where: Callable[[int], str]) -> None:
        """Type, presence (entity keys), range and value set of one column's N values."""

        def fail(test: Callable[[Any], bool], message: Callable[[Any], str]) -> None:
            i = next(i for i, v in enumerate(values) if test(v))
            raise RequestError(BAD_REQUEST, f"{where(i)}: {message(values[i])}")

        def missing(v: Any) -> bool:
            return v is None or v is ABSENT

        absent = values.count(None) + values.count(ABSENT)  # counted in C, as below
        present = [v for v in values if not missing(v)] if absent else values
        if column.key and absent:
            fail(missing, lambda v: "required (an entity key)")
        scalar = column.dtype.removeprefix("list<").removesuffix(">")
        expected = _EXPECTED[scalar] if scalar == column.dtype else _LISTS[scalar]
        expected += "" if column.key else " or null"
        if column.dtype != scalar:  # a list column: check the lists, then their elements
            if not set(map(type, present)) <= {list}:
                fail(lambda v: not missing(v) and type(v) is not list, _got(expected))
            elements = list(chain.from_iterable(present))
            if not self._fits(elements, scalar):
                fail(lambda v: not missing(v) and not self._fits(v, scalar), _got(expected))
            if not self._valid(column, elements):
                fail(
                    lambda v: not missing(v) and not self._valid(column, v),
                    lambda v: self._invalid(column, v),
                )
            return
        if not self._fits(present, scalar):
            fail(lambda v: not missing(v) and not self._fits([v], scalar), _got(expected))
        if not self._valid(column, present):
            fail(
                lambda v: not missing(v) and not self._valid(column, [v]),
                lambda v: self._invalid(column, [v]),
            )

    @staticmethod
    def _fits(values: list[Any], dtype: str) -> bool:
        """Every value is of ``dtype`` (bools are not numbers; int64 in range; floats
        finite). One pass over the types; min/max for the int range."""
        if not values:
            return True
        if not set(map(type, values)) <= set(_TYPES[dtype]):
            return False
        if dtype == "int64":
            return _INT64[0] <= min(values) and max(values) <= _INT64[1]
        if dtype == "float64":
            try:
                return all(map(math.isfinite, values))
            except OverflowError:  # an int beyond any float
                return False
        return True

    @staticmethod
    def _valid(column: _Column, values: list[Any]) -> bool:
        """Every value is within the spec's ``valid`` range or set."""
        if not values:
            return True
        if column.values is not None and not set(values) <= column.values:
            return False
        if column.min is not None and min(values) < column.min:
            return False
        return not (column.max is not None and max(values) > column.max)

    @staticmethod
    def _invalid(column: _Column, values: list[Any]) -> str:
        """Why the first invalid one of ``values`` (a candidate's value or list) is."""
        for k, v in enumerate(values):
            element = f"element {k}, " if column.dtype.startswith("list<") else ""
            if column.values is not None and v not in column.values:
                allowed = ", ".join(map(shown, column.shown_values))
                return f"{element}{shown(v)} is not one of the spec's values ({allowed})"
            if column.min is not None and v < column.min:
                return f"{element}{shown(v)} is below the spec's minimum {column.min}"
            if column.max is not None and v > column.max:
                return f"{element}{shown(v)} is above the spec's maximum {column.max}"
        raise AssertionError("no invalid value")


def _got(expected: str) -> Callable[[Any], str]:
    return lambda v: f"expected {expected}, got {shown(v)}"


def _flat(data: Any, shape: Sequence[int], at: str) -> list[Any]:
    """A V2 tensor's data as N values: shape [N] (flat data) or [N, 1] (flat or nested)."""
    if not isinstance(data, list):
        raise RequestError(BAD_REQUEST, f"{at}: data must be a list, got {json_type(data)}")
    shape = list(shape)
    if len(shape) == 2 and shape[1] == 1:
        if data and set(map(type, data)) == {list}:
            if set(map(len, data)) != {1}:
                raise RequestError(BAD_REQUEST, f"{at}: shape {shape} needs one value per row")
            data = [row[0] for row in data]
    elif len(shape) != 1:
        raise RequestError(
            BAD_REQUEST, f"{at}: shape {shape}: send [N] or [N, 1], one value per candidate"
        )
    if shape[0] != len(data):
        raise RequestError(BAD_REQUEST, f"{at}: shape {shape} but {len(data)} values in data")
    if list in set(map(type, data)) or dict in set(map(type, data)):
        raise RequestError(BAD_REQUEST, f"{at}: data must hold one scalar per candidate")
    return data


def parse_json(body: bytes | bytearray | str) -> Any:
    """A request body as JSON; 400 for anything else (invalid UTF-8 or JSON, NaN or
    Infinity, nesting deeper than the parser allows)."""
    import orjson

    try:
        return orjson.loads(body)
    except (orjson.JSONDecodeError, TypeError) as e:
        raise RequestError(BAD_REQUEST, f"the body is not valid JSON: {e}") from None


def json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


def shown(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
