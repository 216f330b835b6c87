"""Feature encoding: raw columns -> index and float tensors, fitted once, vectorised.

A fitted ``FeatureEncoder`` turns a DataFrame into ``EncodedFeatures``:

- ``sparse [N, F_s] int64``: one local row id per single-valued embedded feature (ids and
  bucketised numbers), columns in ``InputSpec.sparse`` order;
- ``multi [N, F_m, L] int64``: the ids of each multi-valued feature, padded with -1;
- ``dense [N, F_d] float32``: normalised numbers, columns in ``InputSpec.dense`` order.

Row conventions (per feature): vocabulary ids use row 0 for a missing value and row 1 for
out-of-vocabulary ids (unseen, or seen fewer than ``min_count`` times); hashed ids use
``hash(value) % hash_bucket_size`` with a fixed-key SipHash (stable across processes and
machines); bucketised numbers use ``#boundaries <= value`` and a last row for missing values;
a match uses row 0 for unknown, else 1 + the number of key ids found in the list.
The fitted state is plain JSON (no pickle), saved beside the model.

Columns are read by value, not by dtype, so training (a DataFrame read from parquet, with
numpy, nullable or pyarrow dtypes) and serving (``pd.DataFrame.from_records`` of the online
store's Python values) encode the same rows alike: a nullable ``Int64`` id and the same
whole floats with NaN; bools (``bool``, ``boolean``, ``True``/``None``) as the ids 0 and 1;
string ids (``string`` or object); list cells as numpy arrays, lists or tuples of ints or
strings, where a null or empty list is all padding and a null element the missing row;
``None``, NaN and ``pd.NA`` alike as missing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from model.config import Config, ConfigError, FeatureConfig

# Rows reserved at the front of a vocabulary table.
MISSING_ROW = 0
OOV_ROW = 1
_VOCAB_OFFSET = 2
_HASH_KEY = "deepfm-pipeline!"  # 16 bytes; changing it changes every hashed id


@dataclass
class SparseInput:
    """One embedded input column: its feature name, table rows and embedding dim."""

    name: str
    num_embeddings: int
    embedding_dim: int
    pooling: str = "sum"
    init_fn: str | None = None


@dataclass
class InputSpec:
    """What the network receives, in tensor column order (the model's input contract)."""

    sparse: list[SparseInput]
    multi: list[SparseInput]
    dense: list[str]
    max_length: int

    def to_dict(self) -> dict:
        return {
            "sparse": [vars(s) for s in self.sparse],
            "multi": [vars(s) for s in self.multi],
            "dense": list(self.dense),
            "max_length": self.max_length,
        }

    @classmethod
    def from_dict(cls, d: dict) -> InputSpec:
        return cls(
            sparse=[SparseInput(**s) for s in d["sparse"]],
            multi=[SparseInput(**s) for s in d["multi"]],
            dense=list(d["dense"]),
            max_length=int(d["max_length"]),
        )


@dataclass
class EncodedFeatures:
    """Model-ready tensors for N rows (see the module docstring for shapes)."""

    sparse: torch.Tensor
    multi: torch.Tensor
    dense: torch.Tensor

    def __len__(self) -> int:
        return self.sparse.shape[0]

    def index(self, rows: torch.Tensor) -> EncodedFeatures:
        """The rows at ``rows`` (a [B] int64 tensor), as one gather per tensor."""
        return EncodedFeatures(
            self.sparse.index_select(0, rows),
            self.multi.index_select(0, rows),
            self.dense.index_select(0, rows),
        )

    def slice(self, start: int, stop: int) -> EncodedFeatures:
        return EncodedFeatures(
            self.sparse[start:stop], self.multi[start:stop], self.dense[start:stop]
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> EncodedFeatures:
        return EncodedFeatures(
            self.sparse.to(device, non_blocking=non_blocking),
            self.multi.to(device, non_blocking=non_blocking),
            self.dense.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> EncodedFeatures:
        return EncodedFeatures(
            self.sparse.pin_memory(), self.multi.pin_memory(), self.dense.pin_memory()
        )


# ------------------------------------------------------------------ column helpers


def _column(df: pd.DataFrame, feature: FeatureConfig, col: str | None = None) -> pd.Series:
    col = col or feature.source_column
    if col not in df.columns:
        raise ConfigError(f"features.{feature.name}: column {col!r} is missing from the data")
    return df[col]


def _id_values(
    values: pd.Series | np.ndarray, kind: str, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Split a 1-D id column into (non-null values as int64 or str objects, null mask).

    The same ids give the same values whatever the column's dtype: numpy, nullable
    (``Int64``, ``boolean``, ``string``), pyarrow-backed, or object columns of Python values
    (``None``, ``True``, ``7``, ``"c00012"``) as a server builds them. Bools are the ints 0
    and 1; an ``int`` id given as a whole float (a nullable int column read as float64) is
    that int."""
    s = pd.Series(values, copy=False)
    missing = s.isna().to_numpy(dtype=bool)
    if kind == "int":
        if pd.api.types.is_bool_dtype(s.dtype):
            s = s.astype("boolean")
        if pd.api.types.is_integer_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype):
            out = s.to_numpy(dtype="int64", na_value=0)
        else:
            nums = pd.to_numeric(s, errors="coerce")
            bad = nums.isna().to_numpy(dtype=bool) & ~missing
            if bad.any():
                raise ValueError(f"feature {name!r}: value {s[bad].iloc[0]!r} is not an integer id")
            nums = nums.to_numpy(dtype=np.float64, na_value=0.0)
            frac = nums % 1 != 0
            if frac.any():
                raise ValueError(
                    f"feature {name!r}: value {s[frac].iloc[0]!r} is not an integer id"
                )
            huge = np.abs(nums) >= 2.0**63  # past int64: the cast would wrap silently
            if huge.any():
                raise ValueError(
                    f"feature {name!r}: value {s[huge].iloc[0]!r} is out of the int64 range"
                )
            out = nums.astype("int64")
        return out, missing
    out = s.astype(object).where(~missing, "").astype(str).to_numpy(dtype=object)
    return out, missing


def _id_kind(values: pd.Series | np.ndarray) -> str:
    """``int`` for integer ids (ints, bools, whole floats, of any dtype), else ``str``. A
    column with no value at all is ``int`` when its dtype is numeric or bool."""
    s = pd.Series(values, copy=False)
    inferred = pd.api.types.infer_dtype(s, skipna=True)
    if inferred in ("integer", "boolean"):
        return "int"
    if inferred in ("floating", "mixed-integer-float"):
        nums = pd.to_numeric(s).to_numpy(dtype=np.float64, na_value=0.0)
        return "int" if bool((nums % 1 == 0).all()) else "str"
    if inferred == "empty":
        numeric = pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype)
        return "int" if numeric else "str"
    return "str"


def _flatten_lists(series: pd.Series, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A list column -> (flat values [total], per-row lengths [N]); null lists have length 0."""
    try:
        arr = pa.array(series, from_pandas=True)
        if pa.types.is_null(arr.type):  # every value null: nothing to infer a type from
            arr = pa.array(series, from_pandas=True, type=pa.list_(pa.int64()))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise ValueError(f"feature {name!r}: expected a list column ({e})") from None
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not pa.types.is_list(arr.type) and not pa.types.is_large_list(arr.type):
        raise ValueError(f"feature {name!r}: expected a list column, got {arr.type}")
    lengths = arr.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = arr.flatten().to_pandas()
    return flat, lengths


# ----------------------------------------------------------------------- encoders


class IdEncoder:
    """Categorical ids (single- or multi-valued) -> local table rows."""

    def __init__(self, feature: FeatureConfig, state: dict | None = None) -> None:
        self.feature = feature
        self.kind: str = "int"
        self.vocab: list = []
        self._index: pd.Index | None = None
        if state is not None:
            self.kind = state["kind"]
            self.vocab = state.get("vocab", [])

    @property
    def num_embeddings(self) -> int:
        f = self.feature
        if f.vocab is not None:
            return len(self.vocab) + _VOCAB_OFFSET
        return int(f.hash_bucket_size or f.num_buckets)

    def state(self) -> dict:
        out: dict = {"kind": self.kind}
        if self.feature.vocab is not None:
            out["vocab"] = self.vocab
        return out

    def _raw(self, df: pd.DataFrame) -> pd.Series:
        col = _column(df, self.feature)
        if self.feature.type == "multi_id":
            flat, _ = _flatten_lists(col, self.feature.name)
            return flat
        return col

    def fit(self, df: pd.DataFrame) -> IdEncoder:
        f = self.feature
        raw = self._raw(df)
        self.kind = _id_kind(raw)
        if f.vocab is not None:
            values, missing = _id_values(raw, self.kind, f.name)
            self.set_vocab(pd.Series(values[~missing]).value_counts(sort=False))
        elif f.num_buckets is not None:
            self.encode_values(raw)  # fails early on out-of-range ids
        self._index = None
        return self

    def set_vocab(self, counts: pd.Series) -> None:
        """The vocabulary from each id's count (index: ids of ``self.kind``, values:
        counts): ids seen ``min_count`` times or more, most frequent first, ties by value
        (a refit on the same data is identical), at most ``max_size``. ``fit`` and the
        streamed fit (``model.stream``, counts summed over batches) both end here."""
        f = self.feature
        counts = counts[counts >= f.vocab.min_count]
        order = pd.DataFrame({"v": counts.index, "c": counts.to_numpy()}).sort_values(
            ["c", "v"], ascending=[False, True], kind="stable"
        )
        if f.vocab.max_size is not None:
            order = order.head(f.vocab.max_size)
        self.vocab = [v.item() if hasattr(v, "item") else v for v in order["v"].to_numpy()]
        self._index = None

    def encode_values(self, raw: pd.Series | np.ndarray) -> np.ndarray:
        """1-D raw ids -> local rows [n] int64."""
        f = self.feature
        values, missing = _id_values(raw, self.kind, f.name)
        if f.vocab is not None:
            if self._index is None:
                self._index = pd.Index(self.vocab, dtype="int64" if self.kind == "int" else object)
            rows = self._index.get_indexer(values).astype(np.int64)
            rows = np.where(rows < 0, OOV_ROW, rows + _VOCAB_OFFSET)
            rows[missing] = MISSING_ROW
            return rows
        if f.hash_bucket_size is not None:
            hashed = pd.util.hash_array(values, hash_key=_HASH_KEY, categorize=False)
            rows = (hashed % np.uint64(f.hash_bucket_size)).astype(np.int64)
            rows[missing] = 0
            return rows
        bad = missing | (values < 0) | (values >= f.num_buckets)
        if bad.any():
            shown = "null" if missing[bad].any() else values[bad][0]
            raise ValueError(
                f"feature {f.name!r}: id {shown} is outside num_buckets [0, {f.num_buckets})"
            )
        return values.astype(np.int64)

    def transform_single(self, df: pd.DataFrame) -> np.ndarray:
        return self.encode_values(_column(df, self.feature))

    def transform_multi(self, df: pd.DataFrame, max_length: int) -> np.ndarray:
        """-> [N, max_length] int64 rows, -1 = padding; lists longer than the feature's
        ``max_length`` keep their first values."""
        flat, lengths = _flatten_lists(_column(df, self.feature), self.feature.name)
        rows = self.encode_values(flat)
        n = len(lengths)
        out = np.full((n, max_length), -1, dtype=np.int64)
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        pos = np.arange(len(rows)) - starts
        keep = pos < min(self.feature.max_length, max_length)
        out[np.repeat(np.arange(n), lengths)[keep], pos[keep]] = rows[keep]
        return out


class RawEncoder:
    """Numbers -> bucket rows (with boundaries) or normalised floats (without)."""

    def __init__(self, feature: FeatureConfig, state: dict | None = None) -> None:
        self.feature = feature
        self.mean = 0.0
        self.std = 1.0
        if state is not None:
            self.mean, self.std = float(state["mean"]), float(state["std"])

    @property
    def num_embeddings(self) -> int:
        return len(self.feature.boundaries or []) + 2  # buckets 0..len(b), then missing

    def state(self) -> dict:
        return {"mean": self.mean, "std": self.std}

    def _values(self, df: pd.DataFrame) -> np.ndarray:
        col = _column(df, self.feature)
        try:
            values = pd.to_numeric(col, errors="raise").to_numpy(dtype=np.float64, na_value=np.nan)
        except (ValueError, TypeError):
            raise ValueError(f"feature {self.feature.name!r}: column is not numeric") from None
        infinite = np.isinf(values)
        if infinite.any():
            raise ValueError(
                f"features.{self.feature.name}: column {self.feature.source_column!r} has "
                f"{int(infinite.sum()):,} infinite values (e.g. {values[infinite][0]}); give a "
                "finite number, or null for a missing one"
            )
        if self.feature.normalizer == "log1p_standard" and self.feature.boundaries is None:
            values = np.log1p(np.maximum(values, 0.0))
        return values

    def fit(self, df: pd.DataFrame) -> RawEncoder:
        if self.feature.boundaries is None and self.feature.normalizer != "none":
            values = self._values(df)
            finite = values[~np.isnan(values)]
            if len(finite):
                self.mean = float(finite.mean())
                std = float(finite.std())
                self.std = std if std > 0 else 1.0
        return self

    def transform_bucket(self, df: pd.DataFrame) -> np.ndarray:
        values = self._values(df)
        rows = np.searchsorted(np.asarray(self.feature.boundaries), values, side="right")
        rows[np.isnan(values)] = len(self.feature.boundaries) + 1
        return rows.astype(np.int64)

    def transform_dense(self, df: pd.DataFrame) -> np.ndarray:
        values = (self._values(df) - self.mean) / self.std
        return np.nan_to_num(values, nan=0.0).astype(np.float32)


class MatchEncoder:
    """A ``match`` feature: how many of the row's ``key`` ids are among the ids of its list
    ``column`` -> rows ``[n]`` int64: 0 unknown (null or empty key or list), else 1 + the
    number of distinct key ids found, at most ``max_length`` (a single key: 1 no, 2 yes).
    Stateless: ids compare by value, as ints when both columns hold integer ids (whatever
    their dtypes, as ``IdEncoder`` reads them), else as strings."""

    def __init__(self, feature: FeatureConfig, state: dict | None = None) -> None:
        self.feature = feature

    @property
    def num_embeddings(self) -> int:
        return self.feature.max_length + 2

    def state(self) -> dict:
        return {}

    def fit(self, df: pd.DataFrame) -> MatchEncoder:
        self.transform_single(df.head(1000))  # fails early on columns of the wrong shape
        return self

    def transform_single(self, df: pd.DataFrame) -> np.ndarray:
        f = self.feature
        flat, lengths = _flatten_lists(_column(df, f), f.name)
        key = pd.Series(_column(df, f, f.key), copy=False)
        n = len(lengths)
        if _is_list_column(key):
            key, key_lengths = _flatten_lists(key, f"{f.name} (key {f.key})")
        else:
            key_lengths = np.ones(n, dtype=np.int64)
        kind = "int" if _id_kind(flat) == "int" and _id_kind(key) == "int" else "str"
        values, missing = _id_values(flat, kind, f.name)
        keys, key_missing = _id_values(key, kind, f"{f.name} (key {f.key})")
        owner = np.repeat(np.arange(n), lengths)
        key_owner = np.repeat(np.arange(n), key_lengths)
        if len(key) == n and (key_lengths == 1).all():  # one key id a row: compare in place
            found = np.zeros(n, dtype=np.int64)
            found[owner[(values == keys[owner]) & ~missing & ~key_missing[owner]]] = 1
            known = ~key_missing
        else:  # distinct (row, id) pairs of the key found among the list's, as int64 codes
            given, wanted = values[~missing], keys[~key_missing]
            codes, uniques = pd.factorize(np.concatenate([given, wanted]))
            span = max(len(uniques), 1)
            pairs = _distinct(owner[~missing] * span + codes[: len(given)])
            asked = _distinct(key_owner[~key_missing] * span + codes[len(given) :])
            at = np.minimum(np.searchsorted(asked, pairs), max(len(asked) - 1, 0))
            hits = pairs[asked[at] == pairs] // span if len(asked) else pairs[:0]
            found = np.bincount(hits, minlength=n)
            known = np.bincount(key_owner[~key_missing], minlength=n) > 0
        rows = 1 + np.minimum(found, f.max_length)
        rows[~known | (lengths == 0)] = 0
        return rows.astype(np.int64)


def _distinct(x: np.ndarray) -> np.ndarray:
    """The distinct values of an int64 array, sorted (a sort and a mask: numpy 2.4's
    ``np.unique`` takes 2 s on 3M values here, this 0.03 s)."""
    x = np.sort(x)
    return x[np.r_[True, x[1:] != x[:-1]]] if len(x) else x


def _is_list_column(values: pd.Series) -> bool:
    """Whether a column holds lists (an Arrow list dtype, or list-like Python values)."""
    dtype = values.dtype
    if isinstance(dtype, pd.ArrowDtype):
        return pa.types.is_list(dtype.pyarrow_dtype) or pa.types.is_large_list(dtype.pyarrow_dtype)
    if not pd.api.types.is_object_dtype(dtype):
        return False
    given = values[values.notna().to_numpy(dtype=bool)]
    return bool(len(given)) and isinstance(given.iloc[0], list | tuple | np.ndarray)


class FeatureEncoder:
    """All features of a config: ``fit`` on training rows, ``transform`` any rows."""

    def __init__(self, cfg: Config, state: dict | None = None) -> None:
        self.cfg = cfg
        used = [cfg.feature(n) for n in cfg.group_features]
        self.encoders: dict[str, IdEncoder | RawEncoder | MatchEncoder] = {}
        kinds = {"raw": RawEncoder, "match": MatchEncoder}
        for f in used:
            s = None if state is None else state.get(f.name)
            if state is not None and s is None:
                raise ValueError(f"fitted encoder state has no entry for feature {f.name!r}")
            self.encoders[f.name] = kinds.get(f.type, IdEncoder)(f, s)
        self.single = [f for f in used if f.is_sparse and f.type != "multi_id"]
        self.multi = [f for f in used if f.type == "multi_id"]
        self.dense = [f for f in used if not f.is_sparse]
        self.max_length = max((f.max_length for f in self.multi), default=1)
        self.fitted = state is not None

    def fit(self, df: pd.DataFrame) -> FeatureEncoder:
        if len(df) == 0:
            raise ValueError("cannot fit feature encoders on an empty training set")
        for enc in self.encoders.values():
            enc.fit(df)
        self.fitted = True
        return self

    def state(self) -> dict:
        return {name: enc.state() for name, enc in self.encoders.items()}

    def input_spec(self) -> InputSpec:
        def spec(f: FeatureConfig) -> SparseInput:
            return SparseInput(
                f.name,
                self.encoders[f.name].num_embeddings,
                f.embedding_dim,
                f.pooling,
                f.init_fn,
            )

        return InputSpec(
            sparse=[spec(f) for f in self.single],
            multi=[spec(f) for f in self.multi],
            dense=[f.name for f in self.dense],
            max_length=self.max_length,
        )

    def transform(self, df: pd.DataFrame) -> EncodedFeatures:
        """Rows -> tensors. Unseen ids map to the OOV row; missing values to their row."""
        if not self.fitted:
            raise RuntimeError("FeatureEncoder.transform called before fit")
        n = len(df)
        sparse = np.empty((n, len(self.single)), dtype=np.int64)
        for j, f in enumerate(self.single):
            enc = self.encoders[f.name]
            sparse[:, j] = (
                enc.transform_bucket(df)
                if isinstance(enc, RawEncoder)
                else enc.transform_single(df)
            )
        multi = np.full((n, len(self.multi), self.max_length), -1, dtype=np.int64)
        for j, f in enumerate(self.multi):
            multi[:, j, :] = self.encoders[f.name].transform_multi(df, self.max_length)
        dense = np.empty((n, len(self.dense)), dtype=np.float32)
        for j, f in enumerate(self.dense):
            dense[:, j] = self.encoders[f.name].transform_dense(df)
        return EncodedFeatures(
            torch.from_numpy(sparse), torch.from_numpy(multi), torch.from_numpy(dense)
        )
