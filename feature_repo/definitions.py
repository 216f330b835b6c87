"""Feast definitions of a feature repo: entities -> sources -> feature views -> service.

``build`` makes every Feast object from ``features.yaml`` (``spec.py``), for any number of
each: an entity per spec entity (its join key and key type), a file source per spec source
(the entity rows' source included, so the registry knows where the events live), a feature
view per spec view (its entity, source, TTL, ``online`` flag and fields with their types)
and the spec's feature service, which serves every feature of every view. Adding a feature,
view or entity is one edit of the spec. ``check_definitions`` compares a set of Feast
objects with the spec and names the first feature, view, entity or source that differs;
``build`` runs it on what it made, and ``feature_repo.store`` runs it on a deployed
registry. ``check_sources`` compares the source files with the spec (columns, types,
timezone-aware timestamps).

``objects_for_repo(repo_dir)`` returns a repo's objects keyed by Python identifiers
(``entity_<name>``, ``source_<name>``, ``view_<name>``, ``service_<name>``). ``feast -c
<repo> apply`` imports a repo's ``definitions.py`` as the top-level module ``definitions``
(the other modules are in ``.feastignore``) and collects its module-level objects: this
file's own come from ``objects_for_repo`` on its folder at the bottom; another repo's
``definitions.py`` is a three-line shim calling it (``feature_repo.repo``). Either way the
source files are checked first. Source paths are absolute: Feast's duckdb offline store
reads a relative ``FileSource`` path from the working directory, not from the repo.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from feast import Entity, FeatureService, FeatureView, Field, FileSource, Project, ValueType
from feast.repo_contents import RepoContents
from feast.types import Array, Bool, Float64, Int64, String

if __package__:
    from .spec import SPEC_FILE, FeatureSpec, SpecError, data_dir, load_spec
    from .spec import Entity as SpecEntity
else:  # imported by Feast's CLI as a top-level module, with feature_repo/ on sys.path
    from spec import SPEC_FILE, FeatureSpec, SpecError, data_dir, load_spec
    from spec import Entity as SpecEntity

FEAST_TYPES = {
    "int64": Int64,
    "float64": Float64,
    "string": String,
    "bool": Bool,
    "list<int64>": Array(Int64),
    "list<string>": Array(String),
}
"""Spec dtype -> Feast type of a feature view field."""

VALUE_TYPES = {"int64": ValueType.INT64, "string": ValueType.STRING}
"""Spec dtype -> Feast value type of an entity's join key."""

ARROW_TYPES = {
    "int64": pa.int64(),
    "float64": pa.float64(),
    "string": pa.string(),
    "bool": pa.bool_(),
    "list<int64>": pa.list_(pa.int64()),
    "list<string>": pa.list_(pa.string()),
}
"""Spec dtype -> the Arrow type of the column in a source file (large strings and large
lists are taken too)."""


class SourceError(ValueError):
    """A source file is missing or unreadable, or its timestamps have no time zone."""


@dataclass(frozen=True)
class Definitions:
    """The Feast objects of one repo, in apply order."""

    entities: tuple[Entity, ...]
    sources: tuple[FileSource, ...]
    feature_views: tuple[FeatureView, ...]
    feature_services: tuple[FeatureService, ...]

    def repo_contents(self, project: str) -> RepoContents:
        """What ``feast apply`` would collect from a repo holding these objects."""
        return RepoContents(
            projects=[Project(name=project)],
            data_sources=list(self.sources),
            feature_views=list(self.feature_views),
            on_demand_feature_views=[],
            stream_feature_views=[],
            label_views=[],
            entities=list(self.entities),
            feature_services=list(self.feature_services),
            permissions=[],
        )


def build(spec: FeatureSpec, repo_dir: str | Path) -> Definitions:
    """The Feast objects of ``spec``, reading the sources under ``data_dir(repo_dir)``."""
    # Entities: who the features describe, and the entity rows' column that identifies them.
    entities = {name: _entity(entity) for name, entity in spec.entities.items()}

    # Sources: parquet files with an event-time column. The entity rows' source is no
    # view's source; it is registered so the registry knows where the events live.
    # A Spark offline store (feature_store.spark.yaml) reads the same files as SparkSources.
    spark = offline_store_type(repo_dir) == "spark"
    sources = {name: _file_source(spec, name, repo_dir, spark=spark) for name in spec.sources}

    # Feature views: the features of one entity, read from one source, valid for a TTL.
    views = {
        name: _feature_view(spec, name, entities[view.entity], sources[view.source])
        for name, view in spec.feature_views.items()
    }

    # The feature service: the one name that training and serving ask Feast for.
    service = FeatureService(
        name=spec.feature_service,
        features=list(views.values()),
        description=f"Every feature the model reads from Feast ({spec.path.name})",
    )

    definitions = Definitions(
        entities=tuple(entities.values()),
        sources=tuple(sources.values()),
        feature_views=tuple(views.values()),
        feature_services=(service,),
    )
    check_definitions(spec, definitions, repo_dir, where="feature_repo/definitions.py")
    return definitions


def objects_for_repo(repo_dir: str | Path, *, check: bool = True) -> dict[str, object]:
    """Every Feast object of the repo ``repo_dir``, built from its ``features.yaml``, keyed
    by a unique Python identifier: ``entity_<name>``, ``source_<name>``, ``view_<name>`` and
    ``service_<name>`` (``{"entity_shopper": Entity(...), ...}``); what a repo's
    ``definitions.py`` puts in its globals for ``feast apply``.

    ``check``: first check the source files against the spec (``check_sources``), so that
    nothing the files contradict is registered.

    Raises:
        SpecError: the spec is wrong, or a source file lacks a column of the spec.
        SourceError: a source file is missing or unreadable (only with ``check``).
    """
    repo = Path(repo_dir).resolve()
    spec = load_spec(repo / SPEC_FILE)
    if check:
        check_sources(spec, repo)
    definitions = build(spec, repo)
    return {
        **{f"entity_{e.name}": e for e in definitions.entities},
        **{f"source_{s.name}": s for s in definitions.sources},
        **{f"view_{v.name}": v for v in definitions.feature_views},
        **{f"service_{s.name}": s for s in definitions.feature_services},
    }


def _entity(entity: SpecEntity) -> Entity:
    return Entity(
        name=entity.name,
        join_keys=[entity.join_key],
        value_type=VALUE_TYPES[entity.dtype],
        description=entity.description,
    )


def offline_store_type(repo_dir: str | Path) -> str:
    """The ``offline_store.type`` of the repo's Feast config (``$FEAST_FS_YAML_FILE_PATH``
    when set, as Feast reads it, else ``<repo>/feature_store.yaml``); ``"duckdb"`` if it
    names none."""
    import os

    import yaml

    config = os.environ.get("FEAST_FS_YAML_FILE_PATH") or Path(repo_dir) / "feature_store.yaml"
    try:
        loaded = yaml.safe_load(Path(config).read_text()) or {}
    except OSError:
        return "duckdb"
    offline = loaded.get("offline_store") or {}
    return str(offline.get("type", "duckdb") if isinstance(offline, dict) else offline)


def quiet_spark_warnings() -> None:
    """Hide Feast's warning that its Spark store and source are experimental, given each
    time one is made (the registry's too): a user of the Spark profile can do nothing about
    it. Feast's Spark module sets its own filter for RuntimeWarning when it is imported, so
    it is imported first and this filter goes in front of it."""
    import warnings

    import feast.infra.offline_stores.contrib.spark_offline_store.spark  # noqa: F401

    warnings.filterwarnings(
        "ignore",
        message=r"The spark (data source API|offline store) is an experimental feature",
        category=RuntimeWarning,
    )


def spark_select(path: str | Path) -> str | None:
    """A Spark SQL query reading the parquet file ``path`` with its nanosecond timestamps
    as microsecond ones (Spark has none finer; it reads them as longs with
    ``spark.sql.legacy.parquet.nanosAsLong``, which the Spark profile sets); None when the
    file has no nanosecond column (Spark reads it as it is) or cannot be read here."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException):
        return None
    nanos = {f.name for f in schema if pa.types.is_timestamp(f.type) and f.type.unit == "ns"}
    if not nanos:
        return None
    columns = ", ".join(
        f"timestamp_micros(div(`{f.name}`, 1000)) AS `{f.name}`"
        if f.name in nanos
        else f"`{f.name}`"
        for f in schema
    )
    return f"SELECT {columns} FROM parquet.`{path}`"


def _file_source(
    spec: FeatureSpec, name: str, repo_dir: str | Path, *, spark: bool = False
) -> FileSource:
    source = spec.sources[name]
    if spark:
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import (
            SparkSource,
        )

        quiet_spark_warnings()

        path = str(spec.source_path(name, repo_dir))
        return SparkSource(
            name=name,
            path=path,
            query=spark_select(path),
            file_format="parquet",
            timestamp_field=source.timestamp_field,
            description=source.description,
        )
    return FileSource(
        name=name,
        path=str(spec.source_path(name, repo_dir)),
        timestamp_field=source.timestamp_field,
        description=source.description,
    )


def _feature_view(spec: FeatureSpec, name: str, entity: Entity, source: FileSource) -> FeatureView:
    view = spec.feature_views[name]
    return FeatureView(
        name=name,
        entities=[entity],
        ttl=view.ttl,
        schema=[
            Field(name=f.name, dtype=FEAST_TYPES[f.dtype], description=f.description)
            for f in spec.view_features(name)
        ],
        source=source,
        online=view.online,
        description=view.description,
    )


# ------------------------------------------------------------------------- checks


def check_definitions(
    spec: FeatureSpec,
    definitions: Definitions,
    repo_dir: str | Path,
    *,
    where: str,
    hint: str = "",
) -> None:
    """Raise SpecError naming the first object or feature where ``definitions`` and ``spec``
    differ: entities and their join keys; sources with their paths (under
    ``data_dir(repo_dir)``) and timestamp fields; views with their entity, source, TTL and
    fields (name and type); the feature service, which serves every feature of every view.
    ``where`` names the definitions in the message, ``hint`` ends it."""
    problem = next(_differences(spec, definitions, repo_dir, where), None)
    if problem is not None:
        raise SpecError(f"{problem}{hint}")


def _differences(
    spec: FeatureSpec, definitions: Definitions, repo_dir: str | Path, where: str
) -> Iterator[str]:
    """Each difference as a message, in checking order. Only the first is read, so a check
    may rely on the ones before it (a view is compared once both sides have it)."""
    name = spec.path.name
    entities = {e.name: e for e in definitions.entities}
    yield from _name_differences("entity", spec.entities, entities, name, where)
    for entity in spec.entities.values():
        if entities[entity.name].join_key != entity.join_key:
            yield (
                f"entity {entity.name!r}: join key {entities[entity.name].join_key!r} in "
                f"{where}, {entity.join_key!r} in {name}"
            )

    sources = {s.name: s for s in definitions.sources}
    yield from _name_differences("source", spec.sources, sources, name, where)
    for source in spec.sources.values():
        path = str(spec.source_path(source.name, repo_dir))
        if sources[source.name].path != path:
            yield (
                f"source {source.name!r} reads {sources[source.name].path} in {where}, "
                f"but {name} and the data directory give {path}"
            )
        if sources[source.name].timestamp_field != source.timestamp_field:
            yield (
                f"source {source.name!r}: timestamp field "
                f"{sources[source.name].timestamp_field!r} in {where}, "
                f"{source.timestamp_field!r} in {name}"
            )

    views = {v.name: v for v in definitions.feature_views}
    yield from _name_differences("feature view", spec.feature_views, views, name, where)
    for view in spec.feature_views.values():
        fv = views[view.name]
        got = {
            "entity": fv.entities,
            "source": fv.batch_source.name if fv.batch_source else None,
            "ttl": fv.ttl,
            "online": fv.online,
        }
        want = {
            "entity": [view.entity],
            "source": view.source,
            "ttl": view.ttl,
            "online": view.online,
        }
        for key, value in want.items():
            if got[key] != value:
                yield f"feature view {view.name!r}: {key} {got[key]} in {where}, {value} in {name}"
        fields = {f.name: f.dtype for f in fv.features}
        features = spec.view_features(view.name)
        for feature in features:
            if feature.name not in fields:
                yield (
                    f"feature {feature.name!r} of view {view.name!r} in {name} is not in "
                    f"the Feast view {view.name!r} ({where})"
                )
            elif fields[feature.name] != FEAST_TYPES[feature.dtype]:
                yield (
                    f"feature {feature.name!r} of view {view.name!r}: type "
                    f"{fields[feature.name]} in {where}, {feature.dtype} in {name}"
                )
        for field in sorted(fields.keys() - {f.name for f in features}):
            yield (
                f"feature {field!r} is in the Feast view {view.name!r} ({where}) but not in {name}"
            )

    services = {s.name: s for s in definitions.feature_services}
    yield from _name_differences("feature service", [spec.feature_service], services, name, where)
    served = {
        p.name: sorted(f.name for f in p.features)
        for p in services[spec.feature_service].feature_view_projections
    }
    for view in spec.feature_views:
        want = sorted(f.name for f in spec.view_features(view))
        if served.get(view, []) != want:
            yield (
                f"feature service {spec.feature_service!r} serves {served.get(view, [])} of "
                f"view {view!r} in {where}; {name} lists {want}"
            )


def _name_differences(
    what: str, in_spec: Iterable[str], in_feast: Iterable[str], name: str, where: str
) -> Iterator[str]:
    in_spec, in_feast = list(in_spec), list(in_feast)
    for key in in_spec:
        if key not in in_feast:
            yield f"{what} {key!r} of {name} is not in {where}"
    for key in in_feast:
        if key not in in_spec:
            yield f"{what} {key!r} is in {where} but not in {name}"


def check_sources(spec: FeatureSpec, repo_dir: str | Path | None = None) -> None:
    """Check that every source file exists and has the spec's columns with the spec's types
    and a timezone-aware timestamp field (reads only the parquet footers).

    Raises:
        SourceError: a file is missing or unreadable, or its timestamps are naive.
        SpecError: a column of the spec is missing from its file or has another type.
    """
    for name, source in spec.sources.items():
        path = spec.source_path(name, repo_dir)
        if not path.is_file():
            raise SourceError(
                f"source {name!r}: {path} does not exist (the data directory is "
                f"$DEEPFM_DATA_DIR or <repo>/data; `deepfm data generate --out "
                f"{data_dir(repo_dir)}` writes a sample there)"
            )
        try:
            schema = pq.read_schema(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise SourceError(f"source {name!r}: {path} is not a parquet file: {e}") from None
        columns = {source.timestamp_field: "timestamp"} | spec.source_columns(name)
        for column, dtype in columns.items():
            if column not in schema.names:
                raise SpecError(
                    f"{spec.path.name}: column {column!r} of source {name!r} is not in {path}"
                )
            found = schema.field(column).type
            if dtype == "timestamp":
                if not pa.types.is_timestamp(found) or found.tz is None:
                    raise SourceError(
                        f"source {name!r}: timestamp field {column!r} of {path} is {found}, "
                        "not a timestamp with a time zone (Feast would take naive times as UTC)"
                    )
            elif _arrow_type(found) != ARROW_TYPES[dtype]:
                raise SpecError(
                    f"{spec.path.name}: column {column!r} of source {name!r} is {dtype}, "
                    f"but {path} holds {found}"
                )


def _arrow_type(found: pa.DataType) -> pa.DataType:
    """``found`` with large strings and lists as plain ones, and a list's element field
    unnamed (pandas and pyarrow write either)."""
    if pa.types.is_large_string(found) or pa.types.is_string_view(found):
        return pa.string()
    if pa.types.is_list(found) or pa.types.is_large_list(found):
        return pa.list_(_arrow_type(found.value_type))
    return found


# ----------------------------------------------------------- what `feast apply` collects

# `feast -c feature_repo apply` imports this file as the top-level module `definitions`:
# register nothing that the files contradict. Imported as `feature_repo.definitions`, the
# objects are built without reading the source files.
globals().update(objects_for_repo(Path(__file__).resolve().parent, check=not __package__))
