"""Point-in-time retrieval on Spark: Feast's Spark offline store, chosen by the repo's Feast
config (``feature_store.spark.yaml``: ``offline_store: {type: spark, spark_conf: ...}``).

The entity rows never pass through this process: they are read by Spark from the entity
rows' parquet file, filtered to the window and numbered in file order (``ROW``), then
joined by Feast's Spark point-in-time query (the same semantics as the duckdb store: the
latest version at or before each event's time within the view's TTL, every entity row kept).
The result is a Spark DataFrame: ``write_shards`` writes it as shards (``feature_repo.shards``)
from the executors; ``feature_repo.store.get_training_data`` collects it in order for the
in-memory path.

One SparkSession per process (Feast's ``get_spark_session_or_start_new_with_repoconfig``
reuses the active one): ``spark_conf`` decides local mode (``local[*]``) or a cluster
(``k8s://...``, manifests/spark/).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from feature_repo.definitions import spark_select
from feature_repo.shards import ROWS_PER_FILE, Manifest, finish

if TYPE_CHECKING:
    from feast import FeatureStore
    from pyspark.sql import DataFrame, SparkSession

    from feature_repo.spec import FeatureSpec

ROW = "__entity_row"
"""Each entity row's position in its file (increasing, not consecutive)."""

SESSION_CONF = {
    # Spark keeps times in the session time zone; the store's times are UTC
    "spark.sql.session.timeZone": "UTC",
    # nanosecond parquet timestamps (pandas' default) are read as longs and converted by
    # definitions.spark_select; Spark has no finer type than microseconds
    "spark.sql.legacy.parquet.nanosAsLong": "true",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}
"""Session settings the retrieval relies on, set on every session it uses (runtime SQL
settings: they apply to a session that was already running too)."""


class SparkEngineError(ValueError):
    """Spark could not start: the message names the Feast config whose spark_conf it used."""


def is_spark(store: FeatureStore) -> bool:
    """Whether ``store``'s offline store is Feast's Spark store."""
    return getattr(store.config.offline_store, "type", "") == "spark"


def session(store: FeatureStore) -> SparkSession:
    """The process's SparkSession, started with the store's ``spark_conf`` if none runs."""
    from feast.infra.offline_stores.contrib.spark_offline_store.spark import (
        get_spark_session_or_start_new_with_repoconfig,
    )

    try:
        spark = get_spark_session_or_start_new_with_repoconfig(store.config.offline_store)
    except Exception as e:  # pyspark's errors are not ValueErrors; this is the user's setup
        config = os.environ.get("FEAST_FS_YAML_FILE_PATH") or Path(
            store.repo_path, "feature_store.yaml"
        )
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SparkEngineError(
            f"Spark did not start (offline_store.spark_conf of {config}; Spark needs Java 17 "
            f"at $JAVA_HOME or on PATH): {first}"
        ) from None
    for key, value in SESSION_CONF.items():
        spark.conf.set(key, value)
    if not os.environ.get("DEEPFM_SPARK_LOG"):
        spark.sparkContext.setLogLevel("ERROR")
    return spark


def read_parquet(spark: SparkSession, path: str | Path) -> DataFrame:
    """A parquet file as a Spark DataFrame, nanosecond times as microsecond timestamps."""
    query = spark_select(str(path))
    return spark.sql(query) if query else spark.read.parquet(str(path))


def entity_rows(
    spark: SparkSession, spec: FeatureSpec, repo_dir: Path, start: datetime, end: datetime
) -> DataFrame:
    """The entity rows with ``start <= timestamp < end``: the spec's entity-row columns,
    timestamp and label, and ``ROW`` (the position in the file)."""
    from pyspark.sql import functions as F

    ts = spec.timestamp
    columns = [*(f.name for f in spec.entity_row_features()), ts, spec.label.name]
    rows = read_parquet(spark, spec.source_path(spec.entity_rows, repo_dir)).select(*columns)
    rows = rows.filter((F.col(ts) >= F.lit(start)) & (F.col(ts) < F.lit(end)))
    return rows.withColumn(ROW, F.monotonically_increasing_id())


def training_table(
    store: FeatureStore, spec: FeatureSpec, repo_dir: Path, start: datetime, end: datetime
) -> DataFrame | None:
    """The window's training table as a Spark DataFrame (not computed yet): the entity
    rows' columns, ``ROW``, then every feature of the spec's feature service; None when no
    entity row is in the window."""
    spark = session(store)
    rows = entity_rows(spark, spec, repo_dir, start, end)
    if rows.isEmpty():
        return None
    job = store.get_historical_features(
        entity_df=rows, features=store.get_feature_service(spec.feature_service)
    )
    features = [f.name for view in spec.feature_views for f in spec.view_features(view)]
    columns = [*(f.name for f in spec.entity_row_features()), spec.timestamp, spec.label.name]
    return job.to_spark_df().select(*columns, ROW, *features)


def write_shards(
    table: DataFrame,
    folder: str | Path,
    timestamp: str,
    *,
    rows_per_file: int = ROWS_PER_FILE,
    overwrite: bool = False,
) -> Manifest:
    """Write the Spark table as a shard folder (``feature_repo.shards``) from the executors:
    ranges of (timestamp, ``ROW``) per task, sorted in each, one folder per UTC day, at
    most ``rows_per_file`` rows per file; then the manifest from the footers. Nothing is
    collected in this process. The folder appears complete or not at all."""
    from pyspark.sql import functions as F

    from feature_repo.shards import ShardError, _check_target, _replace

    folder = Path(folder)
    _check_target(folder, overwrite)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    out = tmp / "spark"
    # the join is computed once: counted, range-sampled and written from the executors'
    # storage (memory, spilling to disk), not recomputed for each
    from pyspark import StorageLevel

    table = table.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        rows = table.count()
        if not rows:
            raise ShardError("the training table has no rows: nothing to shard")
        tasks = max(1, -(-rows // rows_per_file))
        day = "__day"
        # sorted by day first, so that the partitioned writer needs no sort of its own
        # (Spark's sorts are not stable: ties would lose the entity rows' order)
        ordered = (
            table.withColumn(day, F.date_format(F.col(timestamp), "yyyy-MM-dd"))
            .repartitionByRange(tasks, F.col(timestamp), F.col(ROW))
            .sortWithinPartitions(day, timestamp, ROW)
            .drop(ROW)
        )
        (
            ordered.write.option("maxRecordsPerFile", rows_per_file)
            .partitionBy(day)
            .parquet(str(out))
        )
        _rename_parts(out, tmp, day)
        shutil.rmtree(out)
        manifest = finish(tmp, timestamp)
        _replace(tmp, folder)
        return Manifest(**{**manifest.__dict__, "folder": folder})
    finally:
        table.unpersist()
        shutil.rmtree(tmp, ignore_errors=True)


def _rename_parts(out: Path, folder: Path, day: str) -> None:
    """Spark's ``<day>=2026-11-01/part-00003-<uuid>.c001.snappy.parquet`` ->
    ``2026-11-01/part-00000.parquet``, numbered in Spark's order (task, then file)."""
    for partition in sorted(out.glob(f"{day}=*")):
        target = folder / partition.name.split("=", 1)[1]
        target.mkdir()
        parts = sorted(partition.glob("part-*.parquet"), key=_task_and_file)
        for i, part in enumerate(parts):
            os.replace(part, target / f"part-{i:05d}.parquet")


def _task_and_file(path: Path) -> tuple[Any, ...]:
    """``part-00003-<uuid>.c001.snappy.parquet`` -> (3, 1)."""
    name = path.name
    task = int(name.split("-")[1])
    counter = name.split(".")[1]
    return task, int(counter[1:]) if counter.startswith("c") else 0
