"""The training config: features, feature groups, model, losses, metrics, training.

A YAML file maps onto these dataclasses. ``load_config`` validates on load: unknown keys,
wrong types, impossible values and references to features that do not exist fail with a
``ConfigError`` naming the key, e.g. ``model.deep.hidden_units[1]: must be > 0, got -3``.

Example (see ``configs/deepfm.yaml``)::

    data: {label: clk, group_key: user_id}
    features:
      - {name: user_id, type: id, vocab: {min_count: 2}, embedding_dim: 16}
      - {name: price, type: raw, boundaries: [10, 50, 200], embedding_dim: 16}
      - {name: interest_cates, type: multi_id, hash_bucket_size: 1000, pooling: mean}
    feature_groups: {wide: [user_id], fm: [user_id, price], deep: [user_id, price]}
    model: {deep: {hidden_units: [256, 128, 64]}}
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config value is wrong; the message starts with the dotted key at fault."""


# --------------------------------------------------------------------------- features


@dataclass
class VocabConfig:
    """Fit a vocabulary on the training data: ids seen fewer than ``min_count`` times share
    the OOV row; ``max_size`` keeps only the most frequent ids."""

    min_count: int = 1
    max_size: int | None = None


@dataclass
class FeatureConfig:
    """One input feature.

    - ``type: id``: a categorical id, encoded by exactly one of ``vocab`` (fitted; row 0 =
      missing, row 1 = OOV), ``hash_bucket_size`` (stable hash into N rows) or
      ``num_buckets`` (the column already holds ids in ``[0, N)``).
    - ``type: multi_id``: a list of ids per row (same encodings), pooled by ``pooling``
      (sum or mean) over at most ``max_length`` values.
    - ``type: raw``: a number. With ``boundaries`` it is bucketised (bucket = how many
      boundaries are <= the value; missing values get their own bucket) and embedded;
      without, it is a dense input normalised by ``normalizer`` (missing -> the training mean).
    """

    name: str
    type: Literal["id", "multi_id", "raw"]
    column: str | None = None
    embedding_dim: int = 16
    vocab: VocabConfig | None = None
    hash_bucket_size: int | None = None
    num_buckets: int | None = None
    boundaries: list[float] | None = None
    normalizer: Literal["standard", "log1p_standard", "none"] = "standard"
    pooling: Literal["sum", "mean"] = "sum"
    max_length: int = 16
    # Initialiser of the embedding, e.g. "nn.init.normal_,std=0.0001"; default torchrec's
    # uniform(-sqrt(1/rows), sqrt(1/rows)), as TorchEasyRec.
    init_fn: str | None = None

    @property
    def source_column(self) -> str:
        return self.column or self.name

    @property
    def is_sparse(self) -> bool:
        """Embedded through a table (ids, multi-valued ids, bucketised numbers)."""
        return self.type != "raw" or self.boundaries is not None


@dataclass
class FeatureGroups:
    """Feature names per DeepFM group. ``fm`` is optional: without it the deep group's
    embeddings feed the FM."""

    wide: list[str]
    deep: list[str]
    fm: list[str] | None = None


# ----------------------------------------------------------------------------- model


@dataclass
class MLPConfig:
    """Options of ``model.modules.MLP``."""

    hidden_units: list[int]
    dropout_ratio: float | list[float] | None = None
    activation: str | None = "nn.ReLU"
    use_bn: bool = False
    use_ln: bool = False
    bias: bool = True


@dataclass
class BinaryCrossEntropy:
    label_smoothing: float = 0.0


@dataclass
class SoftmaxCrossEntropy:
    label_smoothing: float = 0.0


@dataclass
class L2Loss:
    pass


@dataclass
class LossConfig:
    """Exactly one of the losses (TorchEasyRec's ``LossConfig`` oneof)."""

    binary_cross_entropy: BinaryCrossEntropy | None = None
    softmax_cross_entropy: SoftmaxCrossEntropy | None = None
    l2_loss: L2Loss | None = None

    @property
    def kind(self) -> str:
        return next(f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None)


@dataclass
class ModelConfig:
    """DeepFM: ``deep`` MLP, optional ``final`` MLP, the wide part's embedding size and
    initialiser (e.g. ``"nn.init.uniform_,a=-0.01,b=0.01"``), classes and losses."""

    deep: MLPConfig
    final: MLPConfig | None = None
    wide_embedding_dim: int = 4
    wide_init_fn: str | None = None
    num_class: int = 1
    losses: list[LossConfig] = field(
        default_factory=lambda: [LossConfig(binary_cross_entropy=BinaryCrossEntropy())]
    )
    metrics: list[Literal["auc", "logloss", "grouped_auc", "normalized_entropy", "calibration"]] = (
        field(default_factory=lambda: ["auc", "logloss", "grouped_auc", "calibration"])
    )


# -------------------------------------------------------------------------- training


@dataclass
class SparseOptimizerConfig:
    """Optimizer of the embedding tables (sparse row updates)."""

    type: Literal["adagrad", "rowwise_adagrad", "sparse_adam", "sgd"] = "adagrad"
    lr: float = 0.02
    initial_accumulator_value: float = 0.0
    eps: float = 1e-8


@dataclass
class DenseOptimizerConfig:
    """Optimizer of the MLPs and output layer."""

    type: Literal["adam", "adamw", "adagrad", "sgd"] = "adam"
    lr: float = 0.001
    weight_decay: float = 0.0


@dataclass
class TrainConfig:
    """How to train. ``num_epochs`` defaults to 1 (CTR models overfit after the first
    epoch); with more epochs training stops once the eval AUC stops improving for
    ``early_stop_patience`` epochs."""

    batch_size: int = 1024
    eval_batch_size: int = 65536
    num_epochs: int = 1
    early_stop_patience: int = 1
    seed: int = 42
    sparse_optimizer: SparseOptimizerConfig = field(default_factory=SparseOptimizerConfig)
    dense_optimizer: DenseOptimizerConfig = field(default_factory=DenseOptimizerConfig)
    mixed_precision: Literal["bf16", "fp16"] | None = None
    # Sparse embedding gradients (true), dense (false), or auto: sparse on CPU, dense on a
    # GPU when all tables together hold at most 2**27 values.
    sparse_gradients: bool | None = None
    # torch.compile the network after the embedding lookups (a few seconds of compiling).
    # With the CPU kernels (model/kernels.py) only the MLPs and output are left to compile,
    # which gains little on CPU; off by default.
    compile: bool = False
    num_threads: int | None = None
    save_checkpoints_steps: int = 0
    log_steps: int = 200


@dataclass
class DataConfig:
    """Which columns hold the label, the optional sample weight, the event time (for a
    time split) and the grouping key of grouped AUC."""

    label: str = "clk"
    sample_weight: str | None = None
    timestamp: str | None = "event_timestamp"
    group_key: str | None = "user_id"


@dataclass
class Config:
    features: list[FeatureConfig]
    feature_groups: FeatureGroups
    model: ModelConfig
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def feature(self, name: str) -> FeatureConfig:
        return self._by_name()[name]

    def _by_name(self) -> dict[str, FeatureConfig]:
        return {f.name: f for f in self.features}

    @property
    def group_features(self) -> list[str]:
        """Every feature some group uses, in first-use order (wide, fm, deep)."""
        seen: dict[str, None] = {}
        for name in [
            *self.feature_groups.wide,
            *(self.feature_groups.fm or []),
            *self.feature_groups.deep,
        ]:
            seen.setdefault(name, None)
        return list(seen)

    def to_dict(self) -> dict[str, Any]:
        """Plain data that ``config_from_dict`` turns back into an equal Config (explicit
        nulls kept: ``activation: null`` is not the default)."""
        return dataclasses.asdict(self)

    def input_columns(self) -> list[str]:
        """The raw columns the features read (what scoring needs)."""
        return sorted({self.feature(n).source_column for n in self.group_features})


# ------------------------------------------------------------------------ validation


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and build nested dataclasses."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: expected one of {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} at {key}")


def _build(cls: type, data: Any, key: str) -> Any:
    if data is None and all(
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        for f in dataclasses.fields(cls)
    ):
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{key or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{key}." if key else ""
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{prefix}{unknown[0]}: unknown key (allowed: {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], prefix + name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{name}: required key is missing")
    return cls(**kwargs)


def _check_positive(key: str, value: float | None, strict: bool = True) -> None:
    if value is not None and (value <= 0 if strict else value < 0):
        raise ConfigError(f"{key}: must be {'>' if strict else '>='} 0, got {value}")


def _validate_mlp(mlp: MLPConfig, key: str) -> None:
    if not mlp.hidden_units:
        raise ConfigError(f"{key}.hidden_units: must list at least one layer")
    for i, h in enumerate(mlp.hidden_units):
        _check_positive(f"{key}.hidden_units[{i}]", h)
    if mlp.use_bn and mlp.use_ln:
        raise ConfigError(f"{key}: use_bn and use_ln cannot both be true")
    ratios = mlp.dropout_ratio
    if isinstance(ratios, list) and len(ratios) not in (0, 1, len(mlp.hidden_units)):
        raise ConfigError(
            f"{key}.dropout_ratio: {len(ratios)} values for {len(mlp.hidden_units)} layers"
        )
    for r in ratios if isinstance(ratios, list) else [ratios]:
        if r is not None and not 0.0 <= r < 1.0:
            raise ConfigError(f"{key}.dropout_ratio: {r} is outside [0, 1)")
    from model.modules.mlp import create_activation

    try:
        create_activation(mlp.activation)
    except (ValueError, SyntaxError) as e:
        raise ConfigError(f"{key}.activation: {e}") from None


def _validate_feature(i: int, f: FeatureConfig) -> None:
    key = f"features[{i}]"
    if not f.name:
        raise ConfigError(f"{key}.name: must not be empty")
    key = f"features[{i}] ({f.name})"
    _check_positive(f"{key}.embedding_dim", f.embedding_dim)
    if f.init_fn:
        from model.modules.init import parse_init_fn

        try:
            parse_init_fn(f.init_fn)
        except ValueError as e:
            raise ConfigError(f"{key}.init_fn: {e}") from None
    _check_positive(f"{key}.max_length", f.max_length)
    if f.type in ("id", "multi_id"):
        chosen = [
            n for n in ("vocab", "hash_bucket_size", "num_buckets") if getattr(f, n) is not None
        ]
        if len(chosen) != 1:
            raise ConfigError(
                f"{key}: an {f.type} feature needs exactly one of vocab, hash_bucket_size, "
                f"num_buckets (got {', '.join(chosen) or 'none'})"
            )
        _check_positive(f"{key}.hash_bucket_size", f.hash_bucket_size)
        _check_positive(f"{key}.num_buckets", f.num_buckets)
        if f.vocab is not None:
            _check_positive(f"{key}.vocab.min_count", f.vocab.min_count)
            _check_positive(f"{key}.vocab.max_size", f.vocab.max_size)
        if f.boundaries is not None:
            raise ConfigError(f"{key}.boundaries: only raw features take boundaries")
    else:
        for n in ("vocab", "hash_bucket_size", "num_buckets"):
            if getattr(f, n) is not None:
                raise ConfigError(f"{key}.{n}: raw features take boundaries or a normalizer")
        if f.boundaries is not None:
            b = f.boundaries
            if not b:
                raise ConfigError(f"{key}.boundaries: must not be empty")
            if any(b[j] >= b[j + 1] for j in range(len(b) - 1)):
                raise ConfigError(f"{key}.boundaries: must be strictly increasing, got {b}")


def validate(cfg: Config) -> Config:
    """Cross-field checks; returns ``cfg`` unchanged or raises ConfigError."""
    names = [f.name for f in cfg.features]
    if not names:
        raise ConfigError("features: must list at least one feature")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"features: duplicate feature name {dup[0]!r}")
    for i, f in enumerate(cfg.features):
        _validate_feature(i, f)

    by_name = cfg._by_name()
    groups = cfg.feature_groups
    for gname in ("wide", "fm", "deep"):
        members = getattr(groups, gname)
        if members is None:
            continue
        if not members and gname != "fm":
            raise ConfigError(f"feature_groups.{gname}: must list at least one feature")
        for j, n in enumerate(members):
            if n not in by_name:
                raise ConfigError(f"feature_groups.{gname}[{j}]: unknown feature {n!r}")
        if len(set(members)) != len(members):
            raise ConfigError(f"feature_groups.{gname}: a feature is listed twice")
    for j, n in enumerate(groups.wide):
        if not by_name[n].is_sparse:
            raise ConfigError(
                f"feature_groups.wide[{j}]: dense feature {n!r} is not allowed in the wide group "
                "(give it boundaries to bucketise it)"
            )
    fm_names = groups.fm if groups.fm else groups.deep
    fm_key = "feature_groups.fm" if groups.fm else "feature_groups.deep (used as the fm group)"
    for n in fm_names:
        if not by_name[n].is_sparse:
            raise ConfigError(
                f"{fm_key}: dense feature {n!r} cannot enter the FM; add an fm group of "
                "embedded features"
            )
    dims = {by_name[n].embedding_dim for n in fm_names}
    if len(dims) > 1:
        detail = ", ".join(f"{n}={by_name[n].embedding_dim}" for n in fm_names)
        raise ConfigError(f"{fm_key}: all FM features need the same embedding_dim ({detail})")

    m = cfg.model
    _validate_mlp(m.deep, "model.deep")
    if m.final is not None:
        _validate_mlp(m.final, "model.final")
    _check_positive("model.wide_embedding_dim", m.wide_embedding_dim)
    _check_positive("model.num_class", m.num_class)
    if m.wide_init_fn:
        from model.modules.init import parse_init_fn

        try:
            parse_init_fn(m.wide_init_fn)
        except ValueError as e:
            raise ConfigError(f"model.wide_init_fn: {e}") from None
    if not m.losses:
        raise ConfigError("model.losses: must list one loss")
    if len(m.losses) > 1:
        raise ConfigError("model.losses: DeepFM trains one loss; list exactly one")
    for i, loss in enumerate(m.losses):
        set_ = [f.name for f in dataclasses.fields(loss) if getattr(loss, f.name) is not None]
        if len(set_) != 1:
            raise ConfigError(f"model.losses[{i}]: exactly one loss type, got {set_ or 'none'}")
        kind = set_[0]
        if kind == "binary_cross_entropy" and m.num_class != 1:
            raise ConfigError(f"model.losses[{i}]: binary_cross_entropy needs num_class 1")
        if kind == "softmax_cross_entropy" and m.num_class < 2:
            raise ConfigError(f"model.losses[{i}]: softmax_cross_entropy needs num_class > 1")
        if kind == "l2_loss" and m.num_class != 1:
            raise ConfigError(f"model.losses[{i}]: l2_loss needs num_class 1")
        smoothing = getattr(getattr(loss, kind), "label_smoothing", 0.0)
        if not 0.0 <= smoothing < 1.0:
            raise ConfigError(f"model.losses[{i}].{kind}.label_smoothing: must be in [0, 1)")
    if "grouped_auc" in m.metrics and not cfg.data.group_key:
        raise ConfigError("model.metrics: grouped_auc needs data.group_key")

    t = cfg.train
    for k in ("batch_size", "eval_batch_size", "num_epochs", "early_stop_patience", "log_steps"):
        _check_positive(f"train.{k}", getattr(t, k))
    _check_positive("train.save_checkpoints_steps", t.save_checkpoints_steps, strict=False)
    _check_positive("train.num_threads", t.num_threads)
    _check_positive("train.sparse_optimizer.lr", t.sparse_optimizer.lr)
    _check_positive("train.dense_optimizer.lr", t.dense_optimizer.lr)
    _check_positive("train.dense_optimizer.weight_decay", t.dense_optimizer.weight_decay, False)
    return cfg


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a Config from plain data (e.g. parsed YAML)."""
    return validate(_build(Config, data, ""))


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
        col = cfg.feature(name).source_column
        if col not in have:
            raise ConfigError(f"features.{name}: column {col!r} is not in {where}")
    if cfg.data.label not in have:
        raise ConfigError(f"data.label: column {cfg.data.label!r} is not in {where}")
    if cfg.data.sample_weight and cfg.data.sample_weight not in have:
        raise ConfigError(
            f"data.sample_weight: column {cfg.data.sample_weight!r} is not in {where}"
        )
