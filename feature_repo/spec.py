"""The one feature spec: ``features.yaml``, parsed and checked.

``load_spec()`` reads ``feature_repo/features.yaml`` into a ``FeatureSpec``. The rest of the
project derives from it or is checked against it: the Feast definitions (``definitions.py``),
the model's feature config (``FeatureSpec.model_section()``, ``check_model_config()``) and the
data validation suites (each column's ``dtype``, ``valid`` and ``nullable``). A wrong spec fails
on load with a ``SpecError`` that names the key, e.g.
``features.yaml: features[3] (age).view: unknown feature view 'shopper_profil' (known:
shopper_profile, item_catalog)``.

The file's schema is a set of pydantic models (``_SpecFile`` and the models it holds): a
wrong type, value or reference is one ``ValidationError``, turned into one ``SpecError`` line.
This module imports only the standard library, PyYAML and pydantic, never Feast: the training
library reads the spec too, and Feast loads ``definitions.py`` (which imports it) on its own.

Example::

    spec = load_spec("retail/features.yaml")
    spec.columns()[:4]                            # shopper_id, item_id, shop_id, channel
    [f.name for f in spec.view_features("shopper_profile")]  # age, segment, ...
    spec.feature("age").entity                    # 'shopper'
    spec.entities["shopper"].dtype               # 'string' (its join key's dtype)
    [f.name for f in spec.context_features()]     # ['channel']
    spec.feature_views["shopper_profile"].ttl    # timedelta(days=...)
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, NoReturn, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from common.schema import error_line

REPO_DIR = Path(__file__).resolve().parent
"""The Feast feature repo: this folder (feature_store.yaml, features.yaml, definitions.py)."""

SPEC_FILE = "features.yaml"
DATA_DIR_ENV = "DEEPFM_DATA_DIR"
"""Environment variable naming the folder of the source files (default: ``<repo>/data``)."""

Dtype = Literal["int64", "float64", "string", "bool", "list<int64>", "list<string>"]
DTYPES = get_args(Dtype)
"""Column types a spec may use (Feast: Int64, Float64, String, Bool, Array(Int64),
Array(String)). Any column may be ``nullable``; a nullable int64 or bool column is read by
pandas as its nullable dtype (``Int64``, ``boolean``)."""

KEY_DTYPES = ("int64", "string")
"""Dtypes an entity's join key may have (its entity's key type)."""

Group = Literal["wide", "fm", "deep"]
GROUPS = get_args(Group)
"""DeepFM feature groups, in the order of ``model_section()["feature_groups"]``."""

# model feature type -> the column dtypes it can encode
_MODEL_TYPES = {
    "id": ("int64", "string", "bool"),
    "multi_id": ("list<int64>", "list<string>"),
    "raw": ("int64", "float64", "bool"),
    "match": ("list<int64>", "list<string>"),
}


class SpecError(ValueError):
    """The feature spec is wrong, or something disagrees with it; the message names the key."""


def _fail(key: str, message: str, kind: str = "invalid") -> NoReturn:
    """Fail a validator; ``key`` (may be empty) is relative to the model being validated."""
    raise PydanticCustomError(kind, "{message}", {"key": key, "message": message})


class _Schema(BaseModel):
    """A mapping of the spec: strict types (ints are accepted as floats), unknown keys
    rejected, naming the keys allowed. ``_derived`` fields are filled on load, not read."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    _derived: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        known = [k for k in cls.model_fields if k not in cls._derived]
        unknown = [k for k in data if k not in known] if isinstance(data, dict) else []
        if unknown:
            allowed = ", ".join(known)
            _fail(str(unknown[0]), f"unknown key (allowed: {allowed})", "extra_forbidden")
        return data


Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
Text = Annotated[str, Field(min_length=1)]


class Valid(_Schema):
    """Allowed values of a column (of each element, for a list column): the closed range
    ``[min, max]`` (either end may be open) or the set ``values``."""

    min: float | int | None = None
    max: float | int | None = None
    values: tuple[Any, ...] | None = Field(None, strict=False, min_length=1)

    @model_validator(mode="after")
    def _check(self) -> Valid:
        given = self.model_fields_set
        if not given or ("values" in given and len(given) > 1):
            _fail("", f"give min and/or max, or values, got {self.model_dump(include=given)}")
        if self.values is not None and any(self.values.count(v) > 1 for v in self.values):
            _fail("values", f"a value is listed twice in {list(self.values)}")
        if self.min is not None and self.max is not None and self.min > self.max:
            _fail("", f"min {self.min} is greater than max {self.max}")
        return self


# ------------------------------------------------------------------------ the spec


class Entity(_Schema):
    """What features describe, identified by one join key column (``shopper`` ->
    ``shopper_id``); ``name`` is its key in ``entities`` (likewise for sources and views).
    ``dtype`` (filled on load) is its key type: the dtype of the join key's feature, int64
    or string."""

    _derived = ("name", "dtype")
    name: str = ""
    join_key: Text
    dtype: str = ""
    description: str = ""


class Source(_Schema):
    """A table of rows with an event time: ``path`` is relative to the data directory."""

    _derived = ("name",)
    name: str = ""
    path: Text
    timestamp_field: Text
    description: str = ""


class View(_Schema):
    """A Feast feature view: the features of one entity read from one source. A version of
    an entity's features is valid from its timestamp until the next version, for at most
    ``ttl_days`` days. ``online: false`` keeps a view out of the online store (it is
    still retrieved for training)."""

    _derived = ("name",)
    name: str = ""
    source: str
    entity: str
    ttl_days: int = Field(gt=0)
    online: bool = True
    description: str = ""

    @property
    def ttl(self) -> timedelta:
        return timedelta(days=self.ttl_days)


class ModelFeature(_Schema):
    """One input of the model, made from ``column``: ``encoding`` holds FeatureConfig keys
    (``type``, ``vocab``, ``boundaries``, ...; passed on verbatim, ``model.config`` checks
    their values), ``groups`` the DeepFM groups it joins. ``name`` defaults to the column's."""

    _derived = ("column",)
    name: Name | None = None
    column: str = ""
    groups: tuple[Group, ...] = Field(min_length=1, strict=False)
    type: Literal["id", "multi_id", "raw", "match"]
    key: Any = None
    vocab: Any = None
    hash_bucket_size: Any = None
    num_buckets: Any = None
    boundaries: Any = None
    normalizer: Any = None
    pooling: Any = None
    max_length: Any = None
    embedding_dim: Any = None
    init_fn: Any = None

    @model_validator(mode="after")
    def _check(self) -> ModelFeature:
        if len(set(self.groups)) != len(self.groups):
            _fail("groups", f"a group is listed twice in {list(self.groups)}")
        return self

    @property
    def encoding(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ENCODING_KEYS if k in self.model_fields_set}

    def config(self) -> dict[str, Any]:
        """This feature as one entry of a model config's ``features`` list."""
        column = {} if self.column == self.name else {"column": self.column}
        return {"name": self.name, **column, **copy.deepcopy(self.encoding)}


ENCODING_KEYS = tuple(k for k in ModelFeature.model_fields if k not in ("name", "column", "groups"))
"""Keys of a model feature passed on verbatim to ``model.config.FeatureConfig`` (which
validates their values)."""


class _Column(_Schema):
    """A column (a feature or the label): its ``valid`` values must fit its dtype."""

    name: Name
    dtype: Dtype
    valid: Valid | None = None
    description: str = ""

    @model_validator(mode="after")
    def _check_valid(self) -> _Column:
        element = self.dtype.removeprefix("list<").removesuffix(">")
        if self.valid is None:
            return self
        for j, v in enumerate(self.valid.values or ()):
            if not _is_scalar(v, element):
                quote = " (quote it in YAML)" if element == "string" else ""
                _fail(f"valid.values[{j}]", f"{v!r} is not a {element} value{quote}")
        if element in ("string", "bool") and self.valid.values is None:
            _fail("valid", f"a {element} column takes values, not min/max")
        return self


class Feature(_Column):
    """A column of the training table, listed once in the spec.

    ``source`` is the table it is read from; ``view`` the feature view serving it (None for
    the entity rows' own columns: entity keys, request context, the label). ``entity`` is
    the entity it describes (for an entity key, the entity it identifies; None for request
    context columns such as ``channel``).
    """

    _derived = ("entity",)
    source: str | None = None
    view: str | None = None
    entity: str | None = None
    nullable: bool = False
    model_features: tuple[ModelFeature, ...] = Field((), strict=False)

    @model_validator(mode="after")
    def _check_types(self) -> Feature:
        for j, m in enumerate(self.model_features):
            if self.dtype not in _MODEL_TYPES[m.type]:
                _fail(
                    f"model_features[{j}].type",
                    f"type {m.type} needs dtype {_either(_MODEL_TYPES[m.type])}, "
                    f"the column is {self.dtype}",
                )
        return self


@dataclass(frozen=True)
class FeatureSpec:
    """The parsed ``features.yaml``; see the file's header for what each key means."""

    path: Path
    label: Feature
    entities: dict[str, Entity]
    sources: dict[str, Source]
    entity_rows: str
    feature_views: dict[str, View]
    feature_service: str
    features: tuple[Feature, ...]
    group_key: str | None = None
    """The column whose groups grouped AUC averages over (a column of the entity rows)."""

    @property
    def timestamp(self) -> str:
        """The event-time column of the entity rows and of the training table."""
        return self.sources[self.entity_rows].timestamp_field

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise SpecError(f"{self.path.name}: no feature named {name!r}")

    def view_features(self, view: str) -> list[Feature]:
        """The features served by feature view ``view``, in spec order."""
        if view not in self.feature_views:
            raise SpecError(
                f"{self.path.name}: unknown feature view {view!r} "
                f"(known: {', '.join(self.feature_views)})"
            )
        return [f for f in self.features if f.view == view]

    def entity_row_features(self) -> list[Feature]:
        """Features that are columns of the entity rows (entity keys, context), in spec order."""
        return [f for f in self.features if f.view is None]

    def join_keys(self) -> dict[str, str]:
        """Join key -> its dtype (int64 or string), for every entity, in spec order."""
        return {e.join_key: e.dtype for e in self.entities.values()}

    def context_features(self) -> list[Feature]:
        """Request-context features: the entity rows' columns that are neither an entity's
        join key, the label nor the timestamp (given with a request, not stored), in spec
        order."""
        keys = {e.join_key for e in self.entities.values()}
        return [f for f in self.entity_row_features() if f.name not in keys]

    def columns(self) -> list[str]:
        """The training table's columns, in order: the entity rows' features, the timestamp,
        the label, then every view's features (the sample generator's ``flat`` table)."""
        return [
            *(f.name for f in self.entity_row_features()),
            self.timestamp,
            self.label.name,
            *(f.name for f in self.features if f.view is not None),
        ]

    def source_columns(self, source: str) -> dict[str, str]:
        """Column -> dtype that source ``source`` must hold, besides its timestamp field: the
        entity rows' features and the label, or a view's join key and features."""
        if source not in self.sources:
            raise SpecError(f"{self.path.name}: no source named {source!r}")
        if source == self.entity_rows:
            return {f.name: f.dtype for f in [*self.entity_row_features(), self.label]}
        (view,) = (v for v in self.feature_views.values() if v.source == source)
        key = self.entities[view.entity].join_key
        return {key: self.feature(key).dtype} | {
            f.name: f.dtype for f in self.view_features(view.name)
        }

    def source_path(self, source: str, repo_dir: str | Path | None = None) -> Path:
        """Absolute path of a source's file: its ``path`` under ``data_dir(repo_dir)``."""
        return data_dir(repo_dir) / self.sources[source].path

    def model_features(self) -> list[ModelFeature]:
        """Every model feature, in spec order (a column's in its own order)."""
        return [m for f in self.features for m in f.model_features]

    def model_section(self) -> dict[str, Any]:
        """The model config's feature part::

        {"features": [{"name": "shopper_id", "type": "id", ...}, ...],  # FeatureConfig YAML
         "feature_groups": {"wide": [...], "fm": [...], "deep": [...]},
         "label": "purchased", "timestamp": "visit_ts"}
        """
        model_features = self.model_features()
        return {
            "features": [m.config() for m in model_features],
            "feature_groups": {
                g: [m.name for m in model_features if g in m.groups] for g in GROUPS
            },
            "label": self.label.name,
            "timestamp": self.timestamp,
        }

    def check_model_config(
        self,
        features: list[dict[str, Any]],
        feature_groups: dict[str, list[str] | None],
        where: str = "the model config",
    ) -> None:
        """Raise SpecError naming the first feature in which a model config's ``features``
        and ``feature_groups`` (model.config YAML format) differ from ``model_section()``."""
        expected = self.model_section()
        want = {f["name"]: f for f in expected["features"]}
        have = {f.get("name"): f for f in features}
        spec = self.path.name
        for name in have:
            if name not in want:
                raise SpecError(f"{where}: feature {name!r} is not in {spec}")
        for name, config in want.items():
            if name not in have:
                raise SpecError(f"{where}: feature {name!r} of {spec} is missing")
            for key in sorted(set(config) | set(have[name])):
                if have[name].get(key) != config.get(key):
                    raise SpecError(
                        f"{where}: feature {name!r}.{key} is {have[name].get(key)!r}, "
                        f"{spec} says {config.get(key)!r}"
                    )
        for group in GROUPS:
            got, wanted = list(feature_groups.get(group) or []), expected["feature_groups"][group]
            for name in [*got, *wanted]:
                if (name in got) != (name in wanted):
                    state = "is in" if name in got else "is missing from"
                    raise SpecError(
                        f"{where}: feature {name!r} {state} feature_groups.{group}, unlike {spec}"
                    )
            if got != wanted:
                raise SpecError(
                    f"{where}: feature_groups.{group} is ordered {got}, {spec} gives {wanted}"
                )


def data_dir(repo_dir: str | Path | None = None) -> Path:
    """The absolute folder of the source files: ``$DEEPFM_DATA_DIR`` (a relative value is
    taken relative to the feature repo ``repo_dir``, as Feast takes its own paths), else
    ``<repo_dir>/data``. ``repo_dir`` defaults to ``REPO_DIR``."""
    repo = Path(repo_dir or REPO_DIR).resolve()
    return (repo / (os.environ.get(DATA_DIR_ENV) or "data")).resolve()


# ------------------------------------------------------------------------ the file


def _check_match_key(key: str, column: Feature, name: str, other: Feature | None) -> None:
    """A match looks ``name``'s ids up in the list ``column``: ``name`` must be a feature
    holding ids of the list's element dtype, or a list of them."""
    element = column.dtype.removeprefix("list<").removesuffix(">")
    if other is None:
        _fail(key, f"{name!r} is not a feature of this spec")
    if other.dtype not in (element, column.dtype):
        _fail(
            key,
            f"{name!r} has dtype {other.dtype}; looking it up in {column.name!r} "
            f"({column.dtype}) needs {element} or {column.dtype}",
        )


class _SpecFile(_Schema):
    """``features.yaml``; the cross-key checks: references name what exists, names are
    unique, every entity, source and view is used."""

    label: _Column
    entities: dict[Name, Entity] = Field(min_length=1)
    sources: dict[Name, Source] = Field(min_length=1)
    entity_rows: str
    feature_views: dict[Name, View] = Field(min_length=1)
    feature_service: Name
    features: tuple[Feature, ...] = Field(min_length=1, strict=False)
    group_key: Name | None = None

    @model_validator(mode="after")
    def _check_references(self) -> _SpecFile:
        def choice(key: str, value: str, known: dict, what: str) -> None:
            if value not in known:
                _fail(key, f"unknown {what} {value!r} (known: {', '.join(known)})")

        rows = self.entity_rows
        choice("entity_rows", rows, self.sources, "source")
        for name, view in self.feature_views.items():
            key = f"feature_views.{name}"
            choice(f"{key}.source", view.source, self.sources, "source")
            if view.source == rows:
                _fail(f"{key}.source", f"{rows!r} holds the entity rows, not features")
            choice(f"{key}.entity", view.entity, self.entities, "entity")
        for i, f in enumerate(self.features):
            key = f"features[{i}] ({f.name})"
            if (f.source is None) == (f.view is None):
                _fail(
                    key,
                    f"give exactly one of source (for a column of the entity rows, {rows!r}) "
                    "or view (the feature view serving it)",
                )
            if f.view is not None:
                choice(f"{key}.view", f.view, self.feature_views, "feature view")
            elif f.source != rows:
                _fail(
                    f"{key}.source",
                    f"must be the entity rows ({rows!r}), got {f.source!r}; columns of other "
                    "sources are served by a view",
                )
        columns = [
            *((f"features[{i}]", f.name) for i, f in enumerate(self.features)),
            ("label", self.label.name),
            (f"sources.{rows}.timestamp_field", self.sources[rows].timestamp_field),
        ]
        seen: dict[str, str] = {}
        for key, name in columns:
            if name in seen:
                _fail(key, f"duplicate column name {name!r} (also {seen[name]})")
            seen[name] = key
        model_names: dict[str, str] = {}
        by_name = {f.name: f for f in self.features}
        for i, f in enumerate(self.features):
            for j, m in enumerate(f.model_features):
                key, name = f"features[{i}] ({f.name}).model_features[{j}]", m.name or f.name
                if name in model_names:
                    _fail(
                        f"{key}.name",
                        f"duplicate model feature name {name!r} (also {model_names[name]})",
                    )
                model_names[name] = key
                if m.type == "match" and isinstance(m.key, str):  # else model.config names it
                    _check_match_key(f"{key}.key", f, m.key, by_name.get(m.key))
        for name, entity in self.entities.items():
            column = by_name.get(entity.join_key)
            if column is None or column.view is not None:
                _fail(
                    f"entities.{name}.join_key",
                    f"{entity.join_key!r} must be a feature with source {rows!r} (a column of "
                    "the entity rows)",
                )
            if column.dtype not in KEY_DTYPES:
                _fail(
                    f"entities.{name}.join_key",
                    f"{entity.join_key!r} has dtype {column.dtype}; a join key is int64 or string",
                )
            if not any(v.entity == name for v in self.feature_views.values()):
                _fail(f"entities.{name}", "no feature view describes this entity")
        if self.group_key is not None:
            row_columns = [f.name for f in self.features if f.view is None]
            if self.group_key not in row_columns:
                _fail(
                    "group_key",
                    f"{self.group_key!r} is not a column of the entity rows {rows!r} "
                    f"(known: {', '.join(row_columns)})",
                )
        for name in self.sources:
            readers = [v for v, view in self.feature_views.items() if view.source == name]
            if name != rows and len(readers) != 1:
                _fail(
                    f"sources.{name}",
                    f"read by {len(readers)} feature views {readers}; each feature source "
                    "feeds exactly one",
                )
        for name in self.feature_views:
            if not any(f.view == name for f in self.features):
                _fail(f"feature_views.{name}", "no feature names this view")
        return self

    def spec(self, path: Path) -> FeatureSpec:
        """The checked file as a FeatureSpec: names from the mappings' keys; a feature's
        source and entity from its view, else the entity rows and the entity it keys."""
        views, rows = _named(self.feature_views), self.entity_rows
        join_keys = {e.join_key: name for name, e in self.entities.items()}

        def resolved(f: Feature) -> Feature:
            view = views.get(f.view or "")
            return f.model_copy(
                update={
                    "source": view.source if view else rows,
                    "entity": view.entity if view else join_keys.get(f.name),
                    "model_features": tuple(
                        m.model_copy(update={"name": m.name or f.name, "column": f.name})
                        for m in f.model_features
                    ),
                }
            )

        label = Feature(source=rows, **dict(self.label))
        features = tuple(resolved(f) for f in self.features)
        dtypes = {f.name: f.dtype for f in features}
        entities = {
            name: e.model_copy(update={"dtype": dtypes[e.join_key]})
            for name, e in _named(self.entities).items()
        }
        return FeatureSpec(
            path, label, entities, _named(self.sources), rows, views,
            self.feature_service, features, self.group_key,
        )  # fmt: skip


def _named(items: dict[str, Any]) -> dict[str, Any]:
    return {name: item.model_copy(update={"name": name}) for name, item in items.items()}


# ------------------------------------------------------------------------- loading


def load_spec(path: str | Path | None = None) -> FeatureSpec:
    """Read and validate a feature spec (default: ``features.yaml`` beside this file).

    Raises:
        SpecError: the file is missing or not YAML, or a key is unknown, missing or wrong;
            the message starts with the file name and the key.
    """
    path = Path(path) if path is not None else REPO_DIR / SPEC_FILE
    if not path.is_file():
        raise SpecError(f"feature spec {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SpecError(f"feature spec {path} is not valid YAML: {e}") from None
    try:
        return _SpecFile.model_validate(data).spec(path)
    except ValidationError as e:
        raise SpecError(f"{path.name}: {error_line(e, data, top='the top level')}") from None


def _either(names: tuple[str, ...]) -> str:
    """``a, b or c``."""
    return " or ".join(filter(None, [", ".join(names[:-1]), names[-1]]))


def _is_scalar(value: Any, dtype: str) -> bool:
    """Whether a YAML value fits a column of scalar ``dtype`` (int64, float64, string, bool)."""
    if dtype == "string":
        return isinstance(value, str)
    if dtype == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (dtype == "float64" and isinstance(value, float))
