"""Great Expectations suites derived from the feature spec (``features.yaml``), never listed
by hand. Per source (the entity rows' source and each feature view's):

- the exact column set: the spec's columns of the source plus its timestamp field;
- at least ``min_rows`` rows (entity rows in the window) or at least 1 (feature sources);
- each column's type, checked on the pandas dtype that ``validation.validate`` reads the
  spec dtype as (``PANDAS_DTYPES``): ``int64`` -> ``Int64`` (nullable: a parquet int
  column with nulls, or a float column of whole numbers, is an int column), ``float64``
  -> ``float64`` (NaN = missing), ``string`` -> ``string``, ``bool`` -> ``boolean``, a list
  -> Python lists; a column that cannot be read as its dtype keeps its own and fails;
- not null unless ``nullable`` (entity keys and the label never), and its ``valid`` set
  or range;
- each element of a list column: its type, not null and its ``valid`` set or range, on a
  helper batch ``<source>.<column>`` of the exploded elements;
- the timestamp: timezone-aware, never null; entity rows in ``[window_start,
  window_end)``, feature versions not after ``window_end``;
- feature sources: one version per (entity key, timestamp).
"""

import logging
import os
from datetime import datetime
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    import great_expectations as gx

    from feature_repo.spec import Feature, FeatureSpec

PANDAS_DTYPES = {
    "int64": "Int64",
    "float64": "float64",
    "string": "string",
    "bool": "boolean",
    "list<int64>": "object",
    "list<string>": "object",
}
"""Spec dtype -> the one pandas dtype a column of that dtype is validated as (see
``validation.validate.as_spec_dtypes``): nullable extension dtypes for ints, bools and
strings, numpy floats (NaN = missing), object columns of Python lists."""

# spec dtype -> the GX ``type_`` of its pandas column. GX compares a typed column's
# ``dtype.type`` with numpy's type of that name (``int`` -> numpy.int64, the type of
# ``Int64``; ``bool`` -> numpy.bool_, of ``boolean``; ``str`` -> str, of ``string``), and
# checks an object column (lists, or a column whose values do not fit its dtype) value by
# value against the Python type of that name.
_COLUMN_TYPES = {
    "int64": "int",
    "float64": "float",
    "string": "str",
    "bool": "bool",
    "list<int64>": "list",
    "list<string>": "list",
}
# a timezone-aware datetime64 column has ``type`` pd.Timestamp; a naive one np.datetime64
_TIMESTAMP_TYPE = "Timestamp"


def build_suites(
    spec: "FeatureSpec",
    window_start: datetime | None = None,
    window_end: datetime | None = None,
    *,
    min_rows: int = 1,
) -> "dict[str, gx.ExpectationSuite]":
    """Expectation suites derived from ``spec``, keyed by batch name: each source's name,
    plus ``<source>.<column>`` for the elements of each list column. The window bounds the
    timestamps (left out when None); ``min_rows`` is the entity rows' minimum row count.

    Example: for a view source ``customers`` with ``age: {dtype: int64, valid: {min: 0,
    max: 120}}`` and ``interests: {dtype: list<int64>, valid: {min: 1}}``,
    ``build_suites(spec, start, end)["customers"]`` holds
    ``expect_column_values_to_be_between(age, 0, 120)``, and ``["customers.interests"]``
    ``expect_column_values_to_be_between(interests, 1, None)`` on each element."""
    gx, gxe = import_gx()
    keys = {e.join_key for e in spec.entities.values()}
    suites = {}
    for name, source in spec.sources.items():
        columns = spec.source_columns(name)
        ts = source.timestamp_field
        expectations = [
            gxe.ExpectTableColumnsToMatchSet(column_set=[*columns, ts], exact_match=True),
            gxe.ExpectTableRowCountToBeBetween(
                min_value=min_rows if name == spec.entity_rows else 1
            ),
        ]
        for column, dtype in columns.items():
            feature = spec.label if column == spec.label.name else spec.feature(column)
            expectations.append(
                gxe.ExpectColumnValuesToBeOfType(column=column, type_=_COLUMN_TYPES[dtype])
            )
            if not feature.nullable or column in keys:
                expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=column))
            if dtype.startswith("list<"):
                suites[f"{name}.{column}"] = gx.ExpectationSuite(
                    name=f"{name}.{column}", expectations=_element_expectations(feature)
                )
            else:
                expectations += _valid_expectations(feature)
        expectations += [
            gxe.ExpectColumnValuesToBeOfType(column=ts, type_=_TIMESTAMP_TYPE),
            gxe.ExpectColumnValuesToNotBeNull(column=ts),
        ]
        if name == spec.entity_rows:
            if window_start is not None and window_end is not None:
                expectations.append(
                    gxe.ExpectColumnValuesToBeBetween(
                        column=ts,
                        min_value=pd.Timestamp(window_start),
                        max_value=pd.Timestamp(window_end),
                        strict_max=True,
                    )
                )
        else:
            (view,) = (v for v in spec.feature_views.values() if v.source == name)
            key = spec.entities[view.entity].join_key
            expectations.append(gxe.ExpectCompoundColumnsToBeUnique(column_list=[key, ts]))
            if window_end is not None:
                expectations.append(
                    gxe.ExpectColumnValuesToBeBetween(column=ts, max_value=pd.Timestamp(window_end))
                )
        suites[name] = gx.ExpectationSuite(name=name, expectations=expectations)
    return suites


def _valid_expectations(feature: "Feature") -> list:
    """The ``valid`` set or range of a scalar column (of each element, for the elements)."""
    _, gxe = import_gx()
    valid = feature.valid
    if valid is None:
        return []
    if valid.values is not None:
        return [gxe.ExpectColumnValuesToBeInSet(column=feature.name, value_set=list(valid.values))]
    return [
        gxe.ExpectColumnValuesToBeBetween(
            column=feature.name, min_value=valid.min, max_value=valid.max
        )
    ]


def _element_expectations(feature: "Feature") -> list:
    """Expectations on the exploded elements of a list column (one row per element)."""
    _, gxe = import_gx()
    element = feature.dtype.removeprefix("list<").removesuffix(">")
    return [
        gxe.ExpectColumnValuesToBeOfType(column=feature.name, type_=_COLUMN_TYPES[element]),
        gxe.ExpectColumnValuesToNotBeNull(column=feature.name),
        *_valid_expectations(feature),
    ]


def import_gx():
    """great_expectations and its expectations, imported with telemetry and progress bars
    off and its logging quiet (imported lazily: compiling the pipeline does not need it)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    import great_expectations.expectations as gxe

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    return gx, gxe
