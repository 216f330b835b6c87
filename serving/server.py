"""``deepfm serve``: online scoring over HTTP with the blessed model and the Feast online
store, on the ``kserve`` SDK's model server parts (KServe V1 and Open Inference Protocol V2,
Prometheus ``/metrics``; routes in serving/kserve_app.py).

    deepfm serve --model gs://BUCKET/deepfm [--feature-repo feature_repo/] [--port 8080]

    POST /v1/models/<name>:predict  {"instances": [{"shopper_id": "s000123",
                                                    "item_id": "i00042",
                                                    "channel": "web"}, ...]}
                                    -> {"predictions": [0.031, ...], "model_name": "deepfm",
                                        "model_version": "20261127-213217-4c97a2e5"}
    POST /v2/models/<name>/infer    {"inputs": [{"name": "shopper_id", "shape": [2],
                                                 "datatype": "BYTES", "data": [...]}, ...]}

**Candidates.** Each names one candidate by the spec's entity join keys (every one required)
and may carry request-context features (``spec.context_features()``) and any feature of the
spec, each checked against the spec (serving/checks.py: type, range, value set). Features a
candidate lacks are read from the online store (the views marked online): one
``get_online_features`` call per request, for all candidates that lack any. A value sent
wins over the store's (``null`` = missing, encoded as in training), so the predictions are
exactly ``RankingModel.predict`` of the same rows: probabilities in [0, 1], one per
candidate, in order.

**Models.** ``--model`` is a registry destination (a folder or ``gs://bucket/prefix`` with
CURRENT.json, see ``registry/model_registry.py``) or a plain model directory (with
MANIFEST.json; under KServe, the ``storageUri`` it downloaded to ``/mnt/models``). Every
``--reload-interval`` seconds the server checks which model is current (the pointer, or the
directory's manifest); a new one is copied to a private cache, checked against its
manifest, loaded, checked against the feature spec (the store can feed every column it
reads) and scored on a canary row, and only then replaces the serving model, in one
reference swap: a request scores with the model it started with, none is dropped. A model
that fails any step is not served; the old one stays, and the error shows in
``GET /v1/models/<name>`` until a later model loads. Under KServe, new models are rolled
out by patching the InferenceService instead (serving/rollout.py).

**Errors** are JSON ``{"error": "..."}`` naming the problem: 400 for any invalid input
(one rule, KServe's), 413 too large; the full list is in serving/kserve_app.py.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
import shutil
import signal
import socket
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving.checks import RequestChecks, RequestError

if TYPE_CHECKING:
    # numpy, pandas, pyarrow, kserve and uvicorn load when the server starts, torch,
    # Feast and google-cloud-storage on first use: `deepfm --help` imports none of them.
    import numpy as np
    import pandas as pd
    from fastapi import FastAPI

    from model.export import RankingModel
    from serving.checks import Batch

log = logging.getLogger("deepfm.serve")

_NAME = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ServeOptions:
    """The settings of ``deepfm serve``; the defaults are the command's."""

    model: str
    """A registry destination (folder or gs:// prefix with CURRENT.json) or a model directory."""
    feature_repo: str | None = None
    """The Feast repo folder; None: ``feature_repo/``."""
    name: str = "deepfm"
    reload_interval_s: float = 30.0
    """Seconds between checks for a new current model; 0: never."""
    max_candidates: int = 1000
    max_body_bytes: int = 1 << 20
    cache_dir: str | None = None
    """Where fetched models are kept while served; None: a temporary folder."""

    def check(self) -> None:
        """ValueError naming the flag of the first bad setting."""
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"--name {self.name!r}: use letters, digits and ._- only")
        if not self.reload_interval_s >= 0:
            raise ValueError(
                f"--reload-interval must be >= 0 seconds, got {self.reload_interval_s}"
            )
        if self.max_candidates < 1:
            raise ValueError(f"--max-candidates must be >= 1, got {self.max_candidates}")
        if self.max_body_bytes < 1:
            raise ValueError(f"--max-body-bytes must be >= 1, got {self.max_body_bytes}")


class FeatureStoreUnavailable(RuntimeError):
    """The online store failed to answer a read (HTTP 503)."""


# ---------------------------------------------------------------------- the online store


class OnlineFeatures:
    """The feature spec's columns and the Feast online store of a feature repo.

    ``frame(instances, columns)`` turns request instances into the model's input rows,
    reading what they lack from the store in one ``get_online_features`` call.
    """

    def __init__(self, repo_path: str | Path | None = None) -> None:
        """Raises FeatureStoreError / SpecError (ValueErrors) naming the repo, spec or
        feature when the store cannot serve every feature the spec lists."""
        from feature_repo.spec import REPO_DIR, SPEC_FILE, load_spec
        from feature_repo.store import FeatureStoreError, get_store

        repo_dir = Path(repo_path or REPO_DIR).resolve()
        if not repo_dir.is_dir():
            raise FeatureStoreError(f"feature repo {repo_dir} is not a folder")
        self.repo_dir = repo_dir
        self.spec = load_spec(repo_dir / SPEC_FILE)
        self.store = get_store(repo_dir)
        self.join_keys = [e.join_key for e in self.spec.entities.values()]
        self.dtypes = {f.name: f.dtype for f in self.spec.features}
        """Every column an instance may carry -> its spec dtype."""
        online = [v for v in self.spec.feature_views.values() if v.online]
        self.served = [f.name for v in online for f in self.spec.view_features(v.name)]
        """Columns the online store serves (the online feature views' features)."""
        self._refs = [f"{v.name}:{f.name}" for v in online for f in self.spec.view_features(v.name)]
        self._read_keys = list(dict.fromkeys(self.spec.entities[v.entity].join_key for v in online))
        """The join keys the online views need."""
        # Feast's sqlite store shares one connection across threads and refreshes its
        # registry cache inside reads: one read at a time.
        self._lock = threading.Lock()
        try:
            self.store.get_feature_service(self.spec.feature_service)
            nobody = {k: 0 if self.dtypes[k] == "int64" else "" for k in self.join_keys}
            probe = self.read([nobody])
        except Exception as e:
            raise FeatureStoreError(
                f"the Feast online store of {repo_dir} cannot serve feature service "
                f"{self.spec.feature_service!r} ({type(e).__name__}: {e}); run `deepfm features "
                "apply` and `deepfm features materialize`"
            ) from None
        missing = [c for c in self.served if c not in probe]
        if missing:
            raise FeatureStoreError(
                f"feature service {self.spec.feature_service!r} in the Feast registry of "
                f"{repo_dir} does not serve {missing[0]!r}; run `deepfm features apply`"
            )

    def check_columns(self, columns: list[str], where: str) -> None:
        """ValueError naming the first model input column no instance or store can give."""
        for column in columns:
            if column not in self.dtypes:
                raise ValueError(
                    f"{where} reads column {column!r}, which {self.spec.path} does not list; "
                    "the online store cannot feed it"
                )

    def read(self, entity_rows: list[dict[str, Any]]) -> dict[str, list]:
        """The online features of ``[N]`` entity rows (``{"shopper_id": "s000123",
        "shop_id": 7}``, every join key): column -> ``[N]`` values in the same order, None
        where an entity has none."""
        if not self._refs:
            return {}
        rows = [{k: row[k] for k in self._read_keys} for row in entity_rows]
        with self._lock:
            response = self.store.get_online_features(features=self._refs, entity_rows=rows)
            return response.to_dict()

    def frame(self, batch: Batch, columns: list[str]) -> pd.DataFrame:
        """``[N]`` checked candidates -> ``[N]`` model input rows with ``columns`` (typed
        by ``_typed``). A value the request did not send: the online store's for a served
        column, else null."""
        import numpy as np
        import pandas as pd

        lookup = [c for c in columns if c in self.served]
        absent = {c: np.array(batch.absent(c), dtype=bool) for c in lookup}
        rows = np.flatnonzero(np.logical_or.reduce(list(absent.values()))) if lookup else []
        online: dict[str, np.ndarray] = {}
        if len(rows):
            keys = {k: _objects(batch.values(k))[rows] for k in self.join_keys}
            names = list(keys)
            entity_rows = [
                dict(zip(names, row, strict=True)) for row in zip(*keys.values(), strict=True)
            ]
            try:
                online_rows = self.read(entity_rows)
            except Exception as e:
                log.exception("online feature read failed")
                raise FeatureStoreUnavailable(
                    f"the online feature store failed ({type(e).__name__})"
                ) from None
            for c in lookup:
                full = np.full(batch.n, None, dtype=object)
                full[rows] = _objects(online_rows[c])
                online[c] = full
        data = {}
        for column in columns:
            values = batch.values(column)
            if column in online:
                merged = _objects(values)
                take = absent[column]
                merged[take] = online[column][take]
                values = merged.tolist()
            data[column] = _typed(values, self.dtypes[column])
        return pd.DataFrame(data)


def _objects(values: list) -> np.ndarray:
    """A list of values (lists among them) as a 1-d object array."""
    import numpy as np

    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _typed(values: list, dtype: str) -> np.ndarray | pd.api.extensions.ExtensionArray:
    """A column of Python values (None = missing) as the encoders read the training table's:
    ints (nullable ``Int64`` where one is missing), bools (nullable ``boolean`` where one is
    missing), floats (NaN), objects for strings, and arrow lists, which keep their type when
    every value is missing."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    if dtype == "int64":
        if any(v is None for v in values):
            return pd.array(values, dtype="Int64")
        return np.array(values, dtype=np.int64)
    if dtype == "bool":
        if any(v is None for v in values):
            return pd.array(values, dtype="boolean")
        return np.array(values, dtype=bool)
    if dtype == "float64":
        return np.array(values, dtype=np.float64)  # None -> NaN
    if dtype.startswith("list<"):
        element = pa.string() if dtype == "list<string>" else pa.int64()
        return pd.arrays.ArrowExtensionArray(pa.array(values, type=pa.list_(element)))
    return np.array(values, dtype=object)


# -------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to score, and where it came from."""

    model: RankingModel
    version: str
    """The registry version, or the first 12 hex digits of the directory's manifest sha256."""
    uri: str
    manifest_sha256: str
    columns: list[str]
    """The raw columns the model reads (``cfg.input_columns()``)."""
    loaded_at: str

    @property
    def identity(self) -> tuple[str, str]:
        return self.version, self.manifest_sha256


class ModelSource:
    """Where ``--model`` points: a registry destination (CURRENT.json names the current
    version) or a model directory (its MANIFEST.json is the version)."""

    def __init__(self, location: str | Path) -> None:
        from model.export import MANIFEST
        from registry.model_registry import POINTER

        self.location = str(location)
        if self.location.startswith("gs://"):
            self.registry = True
            return
        path = Path(location)
        if not path.is_dir():
            raise ValueError(f"--model {path}: no such folder")
        self.registry = (path / POINTER).is_file()
        if not self.registry and not (path / MANIFEST).is_file():
            raise ValueError(
                f"--model {path}: neither a model registry (no {POINTER}) nor a model "
                f"directory (no {MANIFEST})"
            )

    def current(self) -> tuple[str, str, str]:
        """``(version, manifest_sha256, uri)`` of the model to serve now; RegistryError /
        ValueError when there is none."""
        from model.export import MANIFEST
        from registry.model_registry import POINTER, RegistryError, read_current

        if self.registry:
            pointer = read_current(self.location)
            if pointer is None:
                raise RegistryError(f"nothing was pushed to {self.location} ({POINTER} is missing)")
            return pointer["version"], pointer["manifest_sha256"], pointer["uri"]
        path = Path(self.location).resolve()
        try:
            sha256 = hashlib.sha256((path / MANIFEST).read_bytes()).hexdigest()
        except FileNotFoundError:
            raise ValueError(f"{path} has no {MANIFEST} (being rewritten?)") from None
        return sha256[:12], sha256, str(path)

    def fetch(self, version: str, manifest_sha256: str, into: Path) -> None:
        """Copy the model ``current()`` named to the absent folder ``into``; ValueError /
        RegistryError when what arrived is not that model."""
        from model.export import MANIFEST
        from registry.model_registry import fetch_model

        if self.registry:
            fetch_model(self.location, into, version=version)
        else:
            shutil.copytree(self.location, into)
        landed = hashlib.sha256((into / MANIFEST).read_bytes()).hexdigest()
        if landed != manifest_sha256:
            raise ValueError(f"{self.location}: version {version} changed while being fetched")


class ModelServer:
    """The serving state: the feature store, the current model and its reloading.

    ``refresh()`` loads the current model if it is not the one serving; ``start_polling()``
    calls it every ``reload_interval_s`` seconds in a thread; ``predict(body)`` scores a
    request body with the model serving when it starts.
    """

    def __init__(self, options: ServeOptions) -> None:
        """ValueError naming the setting, feature repo or model location at fault."""
        options.check()
        self.options = options
        self.source = ModelSource(options.model)
        self.features = OnlineFeatures(options.feature_repo)
        self.checks = RequestChecks(self.features.spec, options.max_candidates)
        """What a request may send, checked against the feature spec."""
        self._own_cache = options.cache_dir is None
        self.cache_dir = Path(options.cache_dir or tempfile.mkdtemp(prefix="deepfm-serve-"))
        self._loaded: LoadedModel | None = None
        self.last_reload_error: str | None = None
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    @property
    def loaded(self) -> LoadedModel | None:
        """The model serving now (None before the first ``refresh``)."""
        return self._loaded

    def refresh(self) -> bool:
        """Load the current model unless it is serving already; True when it was swapped
        in. On any failure the serving model stays, the error is kept in
        ``last_reload_error`` and raised."""
        from serving import metrics

        with self._refresh_lock:
            try:
                version, manifest_sha256, uri = self.source.current()
                old = self._loaded
                if old is not None and old.identity == (version, manifest_sha256):
                    self.last_reload_error = None
                    return False
                new = self._load(version, manifest_sha256, uri)
            except Exception as e:
                self.last_reload_error = f"{type(e).__name__}: {e}"
                metrics.RELOAD_FAILURES.labels(self.options.name).inc()
                raise
            self._loaded = new  # the swap: requests read this reference once each
            self.last_reload_error = None
            metrics.model_swapped(self.options.name, version, old.version if old else None)
        if old is not None:
            shutil.rmtree(old.model.path, ignore_errors=True)  # in memory: nothing reads it
        log.info(
            "serving model %s version %s (%s)",
            self.options.name,
            version,
            "first model" if old is None else f"was {old.version}",
        )
        return True

    def _load(self, version: str, manifest_sha256: str, uri: str) -> LoadedModel:
        import numpy as np

        from model.export import load
        from serving.checks import Batch

        into = self.cache_dir / f"{version}.{uuid.uuid4().hex[:8]}"
        try:
            self.source.fetch(version, manifest_sha256, into)
            model = load(into)  # checks every file against the manifest
            columns = model.cfg.input_columns()
            self.features.check_columns(columns, f"model {uri}")
            canary = self.features.frame(Batch(1, {c: [None] for c in columns}), columns)
            scores = model.predict(canary)
            if not np.isfinite(scores).all():
                raise ValueError(f"model {uri} scores a row of missing values as {scores[0]}")
        except BaseException:
            shutil.rmtree(into, ignore_errors=True)
            raise
        loaded_at = datetime.now(UTC).isoformat(timespec="seconds")
        return LoadedModel(model, version, uri, manifest_sha256, columns, loaded_at)

    def start_polling(self) -> None:
        """Check for a new current model every ``reload_interval_s`` seconds (0: never)."""
        interval = self.options.reload_interval_s
        if interval <= 0 or self._poller is not None:
            return

        def poll() -> None:
            while not self._stop.wait(interval):
                try:
                    self.refresh()
                except Exception:
                    serving = self._loaded.version if self._loaded else "nothing"
                    log.warning(
                        "reload failed, still serving %s: %s", serving, self.last_reload_error
                    )

        self._poller = threading.Thread(target=poll, name="deepfm-serve-reload", daemon=True)
        self._poller.start()

    def close(self) -> None:
        """Stop polling and remove the cached models."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join()
        if self._own_cache:
            shutil.rmtree(self.cache_dir, ignore_errors=True)
        elif self._loaded is not None:
            shutil.rmtree(self._loaded.model.path, ignore_errors=True)

    def score(self, batch: Batch) -> tuple[np.ndarray, LoadedModel]:
        """Checked candidates -> their ``[N]`` scores and the model that gave them (the one
        serving when scoring starts). RequestError (503) when no model is loaded;
        FeatureStoreUnavailable when the online store fails."""
        from serving import metrics

        loaded = self._loaded
        if loaded is None:
            raise RequestError(503, "no model is loaded yet")
        try:
            rows = self.features.frame(batch, loaded.columns)
        except FeatureStoreUnavailable:
            metrics.FEATURE_STORE_ERRORS.labels(self.options.name).inc()
            raise
        scores = loaded.model.predict(rows)
        metrics.CANDIDATES.labels(self.options.name).inc(batch.n)
        return scores, loaded

    def predict(self, body: bytes) -> dict[str, Any]:
        """A KServe V1 request body -> the response ``{"predictions": [N], "model_name",
        "model_version"}``, as ``POST /v1/models/<name>:predict`` answers it. RequestError
        for a bad request or when no model is loaded; FeatureStoreUnavailable when the
        online store fails."""
        if self._loaded is None:
            raise RequestError(503, "no model is loaded yet")
        scores, loaded = self.score(self.checks.v1(body))
        return {
            "predictions": scores.tolist(),
            "model_name": self.options.name,
            "model_version": loaded.version,
        }

    def metadata(self) -> dict[str, Any]:
        """KServe V1 model readiness (``name``, ``ready``) plus what is serving."""
        loaded = self._loaded
        out: dict[str, Any] = {"name": self.options.name, "ready": loaded is not None}
        if loaded is not None:
            out |= {
                "model_version": loaded.version,
                "model_uri": loaded.uri,
                "manifest_sha256": loaded.manifest_sha256,
                "loaded_at": loaded.loaded_at,
                "inputs": loaded.columns,
            }
        return out | {
            "source": self.source.location,
            "feature_repo": str(self.features.repo_dir),
            "reload_interval_s": self.options.reload_interval_s,
            "max_candidates": self.options.max_candidates,
            "max_body_bytes": self.options.max_body_bytes,
            "last_reload_error": self.last_reload_error,
        }


# ------------------------------------------------------------------------------ the app


def create_app(server: ModelServer) -> FastAPI:
    """The ASGI app of ``server``: KServe's V1 and V2 endpoints and ``/metrics`` over a
    ``kserve.Model`` (serving/kserve_app.py)."""
    from serving.kserve_app import create_app as create

    return create(server)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0: a free port); ValueError when the address
    is taken or not local."""
    sock = None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        if sock is not None:
            sock.close()
        raise ValueError(
            f"--host {host} --port {port}: cannot listen ({e.strerror or e})"
        ) from None
    return sock


def serve(
    options: ServeOptions,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    access_log: bool = True,
) -> None:
    """Load the current model, then serve on ``host:port`` until SIGINT or SIGTERM (which
    let in-flight requests finish, then return). Errors before serving (a bad setting,
    model, feature repo or address) are raised: ValueError, or RegistryError from the
    registry."""
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {port}")
    import uvicorn

    with _returning_on_signals():
        server = ModelServer(options)
        try:
            server.refresh()
            app = create_app(server)  # before listening: importing kserve takes seconds
            sock = bind(host, port)
            server.start_polling()
            config = uvicorn.Config(
                app,
                lifespan="off",
                access_log=access_log,
                timeout_graceful_shutdown=30,
            )
            log.info(
                "model %s version %s from %s; checking for new ones every %ss",
                options.name,
                server.loaded.version,
                options.model,
                options.reload_interval_s,
            )
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            server.close()


class _Stopped(Exception):
    """SIGINT or SIGTERM arrived."""


@contextmanager
def _returning_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM end the block through its cleanup. While serving, uvicorn takes
    them (and finishes the requests in flight); afterwards it raises them again, which
    would kill the process before the cleanup, so here they raise ``_Stopped``."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals only reach the main thread
        return

    def stop(signum: int, frame: Any) -> None:
        raise _Stopped(signal.Signals(signum).name)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except _Stopped as e:
        log.info("stopped by %s", e)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# ------------------------------------------------------------------------------ the CLI


def add_serve_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``serve`` on ``subparsers`` (the ``deepfm`` command's); it sets ``func``,
    which raises ValueError naming the flag, file or column at fault."""
    defaults = ServeOptions(model="")
    serve_parser = subparsers.add_parser(
        "serve", help="score candidates over HTTP (KServe V1 and V2) with the current model"
    )
    serve_parser.add_argument(
        "--model",
        required=True,
        help="registry destination (folder or gs://bucket/prefix with CURRENT.json) "
        "or a model directory",
    )
    serve_parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve_parser.add_argument("--port", type=int, default=8080, help="0: any free port")
    serve_parser.add_argument(
        "--feature-repo", help="Feast feature repo folder (default: feature_repo/)"
    )
    serve_parser.add_argument(
        "--reload-interval",
        type=float,
        default=defaults.reload_interval_s,
        metavar="SECONDS",
        help="how often to check for a newly pushed model (0: never)",
    )
    serve_parser.add_argument(
        "--max-candidates",
        type=int,
        default=defaults.max_candidates,
        help="most instances per request (more: 413)",
    )
    serve_parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=defaults.max_body_bytes,
        help="largest request body (larger: 413)",
    )
    serve_parser.add_argument("--name", default=defaults.name, help="the model's name in URLs")
    serve_parser.add_argument(
        "--cache-dir", help="where fetched models are kept (default: a temporary folder)"
    )
    serve_parser.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(name)s: %(message)s")
    options = ServeOptions(
        model=args.model,
        feature_repo=args.feature_repo,
        name=args.name,
        reload_interval_s=args.reload_interval,
        max_candidates=args.max_candidates,
        max_body_bytes=args.max_body_bytes,
        cache_dir=args.cache_dir,
    )
    serve(options, args.host, args.port)
