"""The training config: features, feature groups, model, losses, metrics, training.

A YAML file maps onto these pydantic models. ``load_config`` validates on load: unknown keys,
wrong types, impossible values and references to features that do not exist fail with a
``ConfigError`` naming the key, e.g. ``model.deep.hidden_units[1]: must be > 0, got -3``.

Example (see ``configs/deepfm.yaml``)::

    data: {label: purchased, group_key: shopper_id}
    features:
      - {name: shopper_id, type: id, vocab: {min_count: 2}, embedding_dim: 16}
      - {name: cost, type: raw, boundaries: [10, 50, 200], embedding_dim: 16}
      - {name: likes, type: multi_id, hash_bucket_size: 1000, pooling: mean}
    feature_groups: {wide: [shopper_id], fm: [shopper_id, cost], deep: [shopper_id, cost]}
    model: {deep: {hidden_units: [256, 128, 64]}}
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from common.schema import error_line


class ConfigError(ValueError):
    """A config value is wrong; the message starts with the dotted key at fault."""


def _fail(key: str, message: str, kind: str = "invalid") -> NoReturn:
    """Fail a validator; ``key`` (may be empty) is relative to the model being validated."""
    raise PydanticCustomError(kind, "{message}", {"key": key, "message": message})


class _Section(BaseModel):
    """A mapping of the config: strict types (no ``"1"`` for 1, no 512.0 for 512, ints are
    accepted as floats), unknown keys rejected, ``null`` for a section whose keys all have
    defaults is the defaults."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if data is None and not any(f.is_required() for f in cls.model_fields.values()):
            return {}
        unknown = sorted(set(data) - set(cls.model_fields)) if isinstance(data, dict) else []
        if unknown:
            allowed = ", ".join(sorted(cls.model_fields))
            _fail(str(unknown[0]), f"unknown key (allowed: {allowed})", "extra_forbidden")
        return data


Positive = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]


def _check_init_fn(key: str, spec: str | None) -> None:
    if spec:
        from model.modules.init import parse_init_fn

        try:
            parse_init_fn(spec)
        except ValueError as e:
            _fail(key, str(e))


# --------------------------------------------------------------------------- features


class VocabConfig(_Section):
    """Fit a vocabulary on the training data: ids seen fewer than ``min_count`` times share
    the OOV row; ``max_size`` keeps only the most frequent ids."""

    min_count: Positive = 1
    max_size: Positive | None = None


class FeatureConfig(_Section):
    """One input feature.

    - ``type: id``: a categorical id, encoded by exactly one of ``vocab`` (fitted; row 0 =
      missing, row 1 = OOV), ``hash_bucket_size`` (stable hash into N rows) or
      ``num_buckets`` (the column already holds ids in ``[0, N)``).
    - ``type: multi_id``: a list of ids per row (same encodings), pooled by ``pooling``
      (sum or mean) over at most ``max_length`` values.
    - ``type: raw``: a number. With ``boundaries`` it is bucketised (bucket = how many
      boundaries are <= the value; missing values get their own bucket) and embedded;
      without, it is a dense input normalised by ``normalizer`` (missing -> the training mean).
    - ``type: match``: how many of the row's ``key`` ids (a column of one id, or of a list)
      are among the ids of its list column ``column`` (e.g. the ad's category among the
      user's interest categories; the topics a product's tags share with a customer's
      interests), embedded as one of ``max_length + 2`` rows: 0 = unknown (null or empty
      key or list), else 1 + the number found, at most ``max_length`` (one key id: 1 = not
      in the list, 2 = in it). Nothing to fit: ids are compared by value (ints as ints, else
      as strings). A cross of a user and an item field that the FM's dot products of
      separate (or shared) embeddings learn only slowly.
    """

    name: str = Field(min_length=1)
    type: Literal["id", "multi_id", "raw", "match"]
    column: str | None = None
    key: str | None = None  # type match: the column whose ids are looked for in ``column``
    embedding_dim: Positive = 16
    vocab: VocabConfig | None = None
    hash_bucket_size: Positive | None = None
    num_buckets: Positive | None = None
    boundaries: list[float] | None = None
    normalizer: Literal["standard", "log1p_standard", "none"] = "standard"
    pooling: Literal["sum", "mean"] = "sum"
    max_length: Positive = 16
    # Initialiser of the embedding, e.g. "nn.init.normal_,std=0.0001"; default normal with
    # std min(0.01, sqrt(1/rows)) (model.deepfm.default_init_std)
    init_fn: str | None = None

    @property
    def source_column(self) -> str:
        return self.column or self.name

    @property
    def source_columns(self) -> tuple[str, ...]:
        """Every raw column the feature reads: its column, and a match's key column."""
        return (self.source_column, self.key) if self.key else (self.source_column,)

    @property
    def is_sparse(self) -> bool:
        """Embedded through a table (ids, multi-valued ids, bucketised numbers)."""
        return self.type != "raw" or self.boundaries is not None

    @model_validator(mode="after")
    def _check(self) -> FeatureConfig:
        _check_init_fn("init_fn", self.init_fn)
        chosen = [n for n in ("vocab", "hash_bucket_size", "num_buckets") if getattr(self, n)]
        b = self.boundaries
        if self.type == "match":
            if not self.key:
                _fail("key", "a match feature needs key: the column looked for in its list")
            if self.key == self.source_column:
                _fail("key", f"{self.key!r} is the list itself; a match compares two columns")
            if chosen or b is not None:
                _fail(chosen[0] if chosen else "boundaries", "a match feature takes no encoding")
            return self
        if self.key is not None:
            _fail("key", f"only match features take a key, not {self.type}")
        if self.type != "raw":
            if len(chosen) != 1:
                _fail(
                    "",
                    f"an {self.type} feature needs exactly one of vocab, hash_bucket_size, "
                    f"num_buckets (got {', '.join(chosen) or 'none'})",
                )
            if b is not None:
                _fail("boundaries", "only raw features take boundaries")
        elif chosen:
            _fail(chosen[0], "raw features take boundaries or a normalizer")
        elif b is not None and not b:
            _fail("boundaries", "must not be empty")
        elif b and any(lo >= hi for lo, hi in zip(b, b[1:], strict=False)):
            _fail("boundaries", f"must be strictly increasing, got {b}")
        return self


class FeatureGroups(_Section):
    """Feature names per DeepFM group. ``fm`` is optional: without it (or empty) the deep
    group's embeddings feed the FM."""

    wide: list[str] = Field(min_length=1)
    deep: list[str] = Field(min_length=1)
    fm: list[str] | None = None


# ----------------------------------------------------------------------------- model


class MLPConfig(_Section):
    """Options of ``model.modules.MLP``."""

    hidden_units: list[Positive] = Field(min_length=1)
    dropout_ratio: Fraction | list[Fraction] | None = None
    activation: str | None = "nn.ReLU"
    use_bn: bool = False
    use_ln: bool = False
    bias: bool = True

    @model_validator(mode="after")
    def _check(self) -> MLPConfig:
        if self.use_bn and self.use_ln:
            _fail("", "use_bn and use_ln cannot both be true")
        ratios, layers = self.dropout_ratio, len(self.hidden_units)
        if isinstance(ratios, list) and len(ratios) not in (0, 1, layers):
            _fail("dropout_ratio", f"{len(ratios)} values for {layers} layers")
        from model.modules.mlp import create_activation

        try:
            create_activation(self.activation)
        except (ValueError, SyntaxError) as e:
            _fail("activation", str(e))
        return self


class BinaryCrossEntropy(_Section):
    label_smoothing: Fraction = 0.0


class SoftmaxCrossEntropy(_Section):
    label_smoothing: Fraction = 0.0


class L2Loss(_Section):
    pass


class LossConfig(_Section):
    """Exactly one of the losses (TorchEasyRec's ``LossConfig`` oneof)."""

    binary_cross_entropy: BinaryCrossEntropy | None = None
    softmax_cross_entropy: SoftmaxCrossEntropy | None = None
    l2_loss: L2Loss | None = None

    @property
    def kind(self) -> str:
        return next(n for n in type(self).model_fields if getattr(self, n) is not None)

    @model_validator(mode="after")
    def _check(self) -> LossConfig:
        chosen = [n for n in type(self).model_fields if getattr(self, n) is not None]
        if len(chosen) != 1:
            _fail("", f"exactly one loss type, got {chosen or 'none'}")
        return self


Metric = Literal["auc", "logloss", "grouped_auc", "normalized_entropy", "calibration"]


class ModelConfig(_Section):
    """DeepFM: ``deep`` MLP, optional ``final`` MLP, the wide part's embedding size and
    initialiser (e.g. ``"nn.init.uniform_,a=-0.01,b=0.01"``), classes and losses."""

    deep: MLPConfig
    final: MLPConfig | None = None
    wide_embedding_dim: Positive = 4
    wide_init_fn: str | None = None
    num_class: Positive = 1
    losses: list[LossConfig] = Field(
        default_factory=lambda: [LossConfig(binary_cross_entropy=BinaryCrossEntropy())]
    )
    metrics: list[Metric] = Field(default_factory=lambda: ["auc", "logloss", "calibration"])

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        _check_init_fn("wide_init_fn", self.wide_init_fn)
        if not self.losses:
            _fail("losses", "must list one loss")
        if len(self.losses) > 1:
            _fail("losses", "DeepFM trains one loss; list exactly one")
        kind = self.losses[0].kind
        if kind == "softmax_cross_entropy" and self.num_class < 2:
            _fail("losses[0]", "softmax_cross_entropy needs num_class > 1")
        if kind != "softmax_cross_entropy" and self.num_class != 1:
            _fail("losses[0]", f"{kind} needs num_class 1")
        return self


# -------------------------------------------------------------------------- training


class SparseOptimizerConfig(_Section):
    """Optimizer of the embedding tables (``model.optim``).

    ``adam`` (default): Adam that equals ``torch.optim.Adam`` on the rows of fields with at
    most ``dense_max_rows`` rows (updated every step, as a dense table) and updates the rows
    of larger fields when a batch touches them (lazily, so a step never passes over a large
    table); ``lazy_adam``: every row lazily (``torch.optim.SparseAdam``'s rule);
    ``adagrad`` / ``rowwise_adagrad``: one update per touched row; ``sparse_adam``:
    ``torch.optim.SparseAdam``; ``sgd``. ``lr`` defaults to 0.001 for the Adams and 0.02
    otherwise. ``embedding_regularizer`` (FuxiCTR's key; adam and lazy_adam): L2 on the
    embeddings, ``loss + embedding_regularizer / 2 * ||w||^2`` over the rows updated.
    """

    type: Literal["adam", "lazy_adam", "adagrad", "rowwise_adagrad", "sparse_adam", "sgd"] = "adam"
    lr: float | None = Field(None, gt=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    dense_max_rows: int = Field(10000, ge=0)
    embedding_regularizer: float = Field(0.0, ge=0)
    initial_accumulator_value: float = 0.0
    eps: float = 1e-8

    @model_validator(mode="after")
    def _check(self) -> SparseOptimizerConfig:
        if self.lr is None:
            self.lr = 0.001 if self.type in ("adam", "lazy_adam", "sparse_adam") else 0.02
        if self.embedding_regularizer and self.type not in ("adam", "lazy_adam"):
            _fail("embedding_regularizer", f"needs type adam or lazy_adam, not {self.type}")
        return self


class DenseOptimizerConfig(_Section):
    """Optimizer of the MLPs and output layer."""

    type: Literal["adam", "adamw", "adagrad", "sgd"] = "adam"
    lr: float = Field(0.001, gt=0)
    weight_decay: float = Field(0.0, ge=0)


class TrainConfig(_Section):
    """How to train. ``num_epochs`` is the most epochs to run (default 1). With more than
    one, the last ``validation_fraction`` of the training rows by ``data.timestamp`` (by row
    order without one) is held out as a validation split, never the eval rows: after each
    epoch the model is scored on it, training stops once its AUC (-MSE for l2_loss) has not
    improved for ``early_stop_patience`` epochs, and the best epoch's weights are kept
    (``validation_fraction: 0``: no split, every epoch runs and the last is kept)."""

    batch_size: Positive = 1024
    eval_batch_size: Positive = 65536
    num_epochs: Positive = 1
    early_stop_patience: Positive = 1
    validation_fraction: Fraction = 0.1
    seed: int = 42
    sparse_optimizer: SparseOptimizerConfig = Field(default_factory=SparseOptimizerConfig)
    dense_optimizer: DenseOptimizerConfig = Field(default_factory=DenseOptimizerConfig)
    mixed_precision: Literal["bf16", "fp16"] | None = None
    # Sparse embedding gradients (true), dense (false), or auto: sparse on CPU, dense on a
    # GPU when all tables together hold at most 2**27 values.
    sparse_gradients: bool | None = None
    # torch.compile the network after the embedding lookups (a few seconds of compiling).
    # With the CPU kernels (model/kernels.py) only the MLPs and output are left to compile,
    # which gains little on CPU; off by default.
    compile: bool = False
    num_threads: Positive | None = None
    # A CPU training step uses at most one thread per this many samples of its batch (at
    # least 1, at most num_threads): waking a thread costs more than a small share of work
    # (model/threads.py: step_threads). 0: every thread at any batch size.
    min_samples_per_thread: int = Field(1024, ge=0)
    # Checkpoints (with a model directory): every save_checkpoints_steps steps or
    # save_checkpoints_secs seconds, whichever comes first (0: not by that measure), and at
    # each epoch end; a 1-epoch run on 1M rows at batch 1024 (977 steps) writes 4 + 1.
    save_checkpoints_steps: int = Field(200, ge=0)
    save_checkpoints_secs: float = Field(600.0, ge=0)
    log_steps: Positive = 200


class DataConfig(_Section):
    """Which columns hold the label, the optional sample weight, the event time (for a
    time split) and the grouping key of grouped AUC."""

    label: str = "label"
    sample_weight: str | None = None
    timestamp: str | None = "event_timestamp"
    group_key: str | None = None
    # shard folders (feature_repo.shards) train streamed (model.stream) or in memory:
    # auto streams from stream_min_rows rows (the manifest's count) on
    streaming: Literal["auto", True, False] = "auto"
    stream_min_rows: int = Field(default=5_000_000, ge=1)
    shuffle_buffer_rows: int = Field(default=1_000_000, ge=0)


class Config(_Section):
    features: list[FeatureConfig] = Field(min_length=1)
    feature_groups: FeatureGroups
    model: ModelConfig
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    def feature(self, name: str) -> FeatureConfig:
        return self._by_name()[name]

    def _by_name(self) -> dict[str, FeatureConfig]:
        return {f.name: f for f in self.features}

    @property
    def group_features(self) -> list[str]:
        """Every feature some group uses, in first-use order (wide, fm, deep)."""
        groups = self.feature_groups
        return list(dict.fromkeys([*groups.wide, *(groups.fm or []), *groups.deep]))

    def to_dict(self) -> dict[str, Any]:
        """Plain data that ``config_from_dict`` turns back into an equal Config (explicit
        nulls kept: ``activation: null`` is not the default)."""
        return self.model_dump()

    def input_columns(self) -> list[str]:
        """The raw columns the features read (what scoring needs)."""
        return sorted({c for n in self.group_features for c in self.feature(n).source_columns})

    @model_validator(mode="after")
    def _check(self) -> Config:
        """Cross-section checks: unique feature names, groups of known features that fit
        their group (no dense feature in wide or fm, one FM embedding size), metrics."""
        names = [f.name for f in self.features]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            _fail("features", f"duplicate feature name {dup[0]!r}")
        by_name, groups = self._by_name(), self.feature_groups
        for gname in ("wide", "fm", "deep"):
            members = getattr(groups, gname) or []
            for j, n in enumerate(members):
                if n not in by_name:
                    _fail(f"feature_groups.{gname}[{j}]", f"unknown feature {n!r}")
            if len(set(members)) != len(members):
                _fail(f"feature_groups.{gname}", "a feature is listed twice")
        for j, n in enumerate(groups.wide):
            if not by_name[n].is_sparse:
                _fail(
                    f"feature_groups.wide[{j}]",
                    f"dense feature {n!r} is not allowed in the wide group (give it "
                    "boundaries to bucketise it)",
                )
        fm_names = groups.fm or groups.deep
        fm_key = "feature_groups.fm" if groups.fm else "feature_groups.deep (used as the fm group)"
        for n in fm_names:
            if not by_name[n].is_sparse:
                _fail(
                    fm_key,
                    f"dense feature {n!r} cannot enter the FM; add an fm group of embedded "
                    "features",
                )
        if len({by_name[n].embedding_dim for n in fm_names}) > 1:
            detail = ", ".join(f"{n}={by_name[n].embedding_dim}" for n in fm_names)
            _fail(fm_key, f"all FM features need the same embedding_dim ({detail})")
        if "grouped_auc" in self.model.metrics and not self.data.group_key:
            _fail("model.metrics", "grouped_auc needs data.group_key")
        return self


# ------------------------------------------------------------------------ validation


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a Config from plain data (e.g. parsed YAML)."""
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(error_line(e, data, top="config", name_on_shape_errors=False)) from None


def read_config_dict(
    path: str | Path, resolve_spec: Callable[[dict[str, Any], Path], None] | None = None
) -> dict[str, Any]:
    """The plain data of a YAML config file (not validated yet). A ``feature_spec: PATH`` key
    is handed to ``resolve_spec(data, path)``, which fills ``features`` and ``feature_groups``
    in place: the model library does not read feature specs itself (the training library
    does, ``training.config.load_config``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    if "feature_spec" in data:
        if resolve_spec is None:
            raise ConfigError(
                f"{path}: feature_spec: load this config with training.config.load_config, "
                "which resolves the feature spec into features and feature_groups"
            )
        resolve_spec(data, path)
    return data


def load_config(
    path: str | Path,
    overrides: dict[str, Any] | None = None,
    resolve_spec: Callable[[dict[str, Any], Path], None] | None = None,
) -> Config:
    """Read a YAML config file, apply dotted ``overrides`` (``{"train.batch_size": 4096}``),
    and validate it. ``resolve_spec`` as in ``read_config_dict``."""
    data = read_config_dict(path, resolve_spec)
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{dotted}: {p} is not a mapping")
        node[leaf] = value
    try:
        return config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def check_columns(cfg: Config, columns: typing.Iterable[str], where: str) -> None:
    """Raise ConfigError naming the first feature whose column is missing from ``where``."""
    have = set(columns)
    for name in cfg.group_features:
        for col in cfg.feature(name).source_columns:
            if col not in have:
                raise ConfigError(f"features.{name}: column {col!r} is not in {where}")
    if cfg.data.label not in have:
        raise ConfigError(f"data.label: column {cfg.data.label!r} is not in {where}")
    if cfg.data.sample_weight and cfg.data.sample_weight not in have:
        raise ConfigError(
            f"data.sample_weight: column {cfg.data.sample_weight!r} is not in {where}"
        )
