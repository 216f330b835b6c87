"""The validation suites run on Spark: when the feature repo's Feast config chooses the
Spark offline store (``feature_store.spark.yaml``), ``validation.validate.validate_sources``
reads the window's sources with Spark and runs the same suites (``build_suites``) through
Great Expectations' Spark datasource, so that no source is collected in one process: GX
computes every metric as a Spark aggregate.

The batches are those of the pandas path: each source's usable rows (the entity rows in the
window, the feature versions up to its end, rows with a null timestamp kept) and the
exploded elements of each list column. The type expectations name Spark's types
(``SPARK_TYPES``) instead of pandas'; everything else in a suite is unchanged.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from feature_repo.spec import FeatureSpec

SPARK_TYPES = {
    "int64": "LongType",
    "float64": "DoubleType",
    "string": "StringType",
    "bool": "BooleanType",
    "list<int64>": "ArrayType",
    "list<string>": "ArrayType",
}
"""Spec dtype -> the Spark SQL type (GX's ``type_`` on Spark) of its column."""
TIMESTAMP_TYPE = "TimestampType"


def spark_batches(
    spec: FeatureSpec,
    repo_dir: str | Path | None,
    window_start: datetime,
    window_end: datetime,
) -> dict[str, DataFrame]:
    """Batch name -> Spark DataFrame (not computed): the rows of each source the run can use
    and the elements of each of its list columns.

    Raises:
        FileNotFoundError: a source file is missing; the message names the source.
    """
    from pyspark.sql import functions as F

    from feature_repo import spark_engine, store

    feast_store = store.get_store(repo_dir)
    spark = spark_engine.session(feast_store)
    batches = {}
    for name, source in spec.sources.items():
        path = spec.source_path(name, repo_dir)
        if not path.is_file():
            raise FileNotFoundError(
                f"source {name!r}: {path} does not exist (data directory: {path.parent}; "
                "set DEEPFM_DATA_DIR or generate the sample data)"
            )
        frame = spark_engine.read_parquet(spark, path)
        ts = source.timestamp_field
        if ts in frame.columns and dict(frame.dtypes)[ts] == "timestamp":
            t = F.col(ts)
            if name == spec.entity_rows:
                usable = (t >= F.lit(window_start)) & (t < F.lit(window_end))
            else:
                usable = t <= F.lit(window_end)
            frame = frame.filter(usable | t.isNull())
        batches[name] = frame
        for column, dtype in spec.source_columns(name).items():
            if dtype.startswith("list<") and column in frame.columns:
                batches[f"{name}.{column}"] = frame.select(F.explode(column).alias(column))
    return batches


def spark_suites(suites: dict[str, Any], spec: FeatureSpec) -> dict[str, Any]:
    """``suites`` with each type expectation naming the Spark type of its column."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    out = {}
    for name, suite in suites.items():
        source, _, list_column = name.partition(".")
        dtypes = spec.source_columns(source)
        expectations = []
        for e in suite.expectations:
            if isinstance(e, gxe.ExpectColumnValuesToBeOfType):
                dtype = dtypes.get(e.column)
                if list_column:  # the elements of a list column
                    dtype = dtype.removeprefix("list<").removesuffix(">")
                spark_type = TIMESTAMP_TYPE if dtype is None else SPARK_TYPES[dtype]
                e = gxe.ExpectColumnValuesToBeOfType(column=e.column, type_=spark_type)
            else:
                e = type(e)(**e.configuration.kwargs)
            expectations.append(e)
        out[name] = gx.ExpectationSuite(name=name, expectations=expectations)
    return out
