"""The model registry: pushed model directories and the pointer to the blessed one.

```
<destination>/                   a local directory or gs://bucket/prefix
  <version>/                     a model directory (model/export.py), e.g. 20260514-093012-3f9a1c2e
    config.yaml ... weights.pt   copied first, each verified where it landed
    MANIFEST.json                copied last: a version folder without it is unfinished
  CURRENT.json                   the current (blessed) model, written last, in one atomic step:
                                 {"version", "uri", "manifest_sha256", "files": {name: sha256},
                                  "metrics", "pushed_at"}
```

TFX Pusher semantics: the model files go to a new version folder, the manifest after them and
the pointer after that, so a reader that follows CURRENT.json never sees a half-pushed model.
A push that fails leaves the pointer where it was; running it again completes it. Pushing an
existing version again with the same model is harmless (nothing is re-copied, and the pointer
is left byte-identical when it already names that version); a different model under an
existing version is refused before anything is written. Pushing an earlier version again
makes it current (a rollback).

GCS goes through google-cloud-storage with the client from the environment (ADC / workload
identity; STORAGE_EMULATOR_HOST for the emulator). Every transfer is retried on transient
errors, and the two commit points (MANIFEST.json, CURRENT.json) are conditional writes
(``if_generation_match``), so a concurrent push can neither be overwritten nor half-mixed in.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import google_crc32c
import requests
from google.api_core import exceptions as api_exceptions
from google.api_core import retry as api_retry
from google.auth import exceptions as auth_exceptions
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption
from google.cloud.storage.retry import DEFAULT_RETRY_IF_GENERATION_SPECIFIED

from model.export import MANIFEST, is_valid_file_name, sha256_file, verify_model_dir

POINTER = "CURRENT.json"
POINTER_KEYS = ("version", "uri", "manifest_sha256", "files", "metrics", "pushed_at")
VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
CHUNK_SIZE = 8 * 1024 * 1024
"""Bytes. Files larger than this go to GCS as resumable uploads in chunks of this size (a
multiple of 256 KiB), so a dropped connection costs one chunk, not the file."""


class RegistryError(RuntimeError):
    """A push or fetch failed; the message names the destination and the file."""


class VersionConflictError(RegistryError):
    """A different model already sits under this version; nothing was written."""


class PointerMovedError(RegistryError):
    """CURRENT.json changed while this push ran (a concurrent push); it was left as is."""


class _LandedWrong(RegistryError):
    """A copy does not match its source (size or checksum); worth another try."""


class _Changed(Exception):
    """A conditional write found the object changed since it was read."""


_TRANSIENT_ERRORS = (
    # what google.cloud.storage.retry.DEFAULT_RETRY retries, plus a corrupted transfer
    api_exceptions.TooManyRequests,
    api_exceptions.InternalServerError,
    api_exceptions.BadGateway,
    api_exceptions.ServiceUnavailable,
    api_exceptions.GatewayTimeout,
    ConnectionError,
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.Timeout,
    auth_exceptions.TransportError,
    DataCorruption,
    _LandedWrong,
)
TRANSFER_RETRY = api_retry.Retry(
    predicate=api_retry.if_exception_type(*_TRANSIENT_ERRORS),
    initial=1.0,
    maximum=30.0,
    multiplier=2.0,
    timeout=300.0,
)
"""One GCS transfer (a file: upload and check what landed; a download; a commit), retried as
a whole with exponential backoff for up to 300 s. The library's own per-request retry runs
inside it; this one also catches what that gives up on, such as a failed resumable session."""


@dataclass(frozen=True)
class _Digests:
    """A file's size (bytes) and checksums: sha256 (hex, as in MANIFEST.json), md5 and
    crc32c (base64, as GCS reports them)."""

    size: int
    sha256: str
    md5: str
    crc32c: str

    @classmethod
    def of_bytes(cls, data: bytes) -> _Digests:
        return cls(
            len(data),
            hashlib.sha256(data).hexdigest(),
            base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode(),
            base64.b64encode(google_crc32c.Checksum(data).digest()).decode(),
        )

    @classmethod
    def of_file(cls, path: Path) -> _Digests:
        sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
        crc32c = google_crc32c.Checksum()
        size = 0
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                size += len(chunk)
                sha256.update(chunk)
                md5.update(chunk)
                crc32c.update(chunk)
        return cls(
            size,
            sha256.hexdigest(),
            base64.b64encode(md5.digest()).decode(),
            base64.b64encode(crc32c.digest()).decode(),
        )


# --- stores: one destination, addressed by keys relative to it ("<version>/<file>") ------------


class _Store(Protocol):
    def uri(self, key: str) -> str:
        """``key``'s location, e.g. ``gs://bucket/models/deepfm/20260514-093012-3f9a1c2e``."""

    def read(self, key: str) -> tuple[bytes, Any] | None:
        """The object's bytes and a token for ``write_if_unchanged``; None when absent."""

    def holds(self, key: str, digests: _Digests) -> bool:
        """Whether the object at ``key`` has exactly the content ``digests`` describes."""

    def put(self, path: Path, key: str, digests: _Digests) -> None:
        """Copy the local file to ``key`` and check what landed against ``digests``."""

    def get(self, key: str, path: Path) -> None:
        """Copy the object at ``key`` to the local ``path``."""

    def write_if_unchanged(self, key: str, data: bytes, token: Any) -> None:
        """Replace the object atomically if it is still as read (``token``; None: absent),
        else raise ``_Changed``."""


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _LocalStore:
    """A directory. Files are written beside their target, fsynced and renamed into place.
    ``write_if_unchanged`` compares the content just before the rename: enough for pushes
    from one machine in turn (the embedded default), not a lock across machines."""

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()

    def uri(self, key: str) -> str:
        return str(self.root / key)

    def read(self, key: str) -> tuple[bytes, bytes] | None:
        try:
            data = (self.root / key).read_bytes()
        except FileNotFoundError:
            return None
        return data, data

    def holds(self, key: str, digests: _Digests) -> bool:
        p = self.root / key
        return p.is_file() and p.stat().st_size == digests.size and sha256_file(p) == digests.sha256

    def _replace(
        self, key: str, write: Callable[[Path], None], check: Callable[[], None] | None = None
    ) -> None:
        """Write beside ``key``, fsync, run ``check``, rename into place."""
        dst = self.root / key
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}.tmp")
        try:
            write(tmp)
            _fsync(tmp)
            if check is not None:
                check()
            os.replace(tmp, dst)
            _fsync(dst.parent)
        finally:
            tmp.unlink(missing_ok=True)

    def put(self, path: Path, key: str, digests: _Digests) -> None:
        self._replace(key, lambda tmp: shutil.copyfile(path, tmp))
        if not self.holds(key, digests):
            raise _LandedWrong(f"{self.uri(key)} does not match {path} after the copy")

    def get(self, key: str, path: Path) -> None:
        shutil.copyfile(self.root / key, path)

    def write_if_unchanged(self, key: str, data: bytes, token: bytes | None) -> None:
        def unchanged() -> None:
            now = self.read(key)
            if (None if now is None else now[1]) != token:
                raise _Changed(self.uri(key))

        self._replace(key, lambda tmp: tmp.write_bytes(data), unchanged)


class _GcsStore:
    """``gs://bucket/prefix``. Tokens are object generations (0: absent), so the commits are
    ``if_generation_match`` uploads: atomic, and safe to retry."""

    def __init__(self, bucket: str, prefix: str) -> None:
        self.bucket = storage.Client().bucket(bucket)
        self.prefix = prefix

    def _name(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"gs://{self.bucket.name}/{self._name(key)}"

    def read(self, key: str) -> tuple[bytes, int] | None:
        for _ in range(3):
            blob = self.bucket.get_blob(self._name(key))
            if blob is None:
                return None
            generation = blob.generation  # the download pins it (and may reset the attribute)
            try:
                return blob.download_as_bytes(), generation
            except api_exceptions.NotFound:
                continue  # replaced between the two calls: read the new generation
        raise RegistryError(f"{self.uri(key)} kept changing while being read")

    def holds(self, key: str, digests: _Digests) -> bool:
        blob = self.bucket.get_blob(self._name(key))
        return (
            blob is not None
            and blob.size == digests.size
            and blob.crc32c == digests.crc32c
            and blob.md5_hash in (None, digests.md5)  # composite objects have no md5
        )

    def put(self, path: Path, key: str, digests: _Digests) -> None:
        def attempt() -> None:
            chunk_size = CHUNK_SIZE if digests.size > CHUNK_SIZE else None
            blob = self.bucket.blob(self._name(key), chunk_size=chunk_size)
            blob.upload_from_filename(str(path), crc32c_checksum_value=digests.crc32c)
            if not self.holds(key, digests):
                raise _LandedWrong(f"{self.uri(key)} does not match {path} after the upload")

        TRANSFER_RETRY(attempt)()

    def get(self, key: str, path: Path) -> None:
        # the library checks the download's crc32c/md5; the caller checks sha256
        TRANSFER_RETRY(self.bucket.blob(self._name(key)).download_to_filename)(str(path))

    def write_if_unchanged(self, key: str, data: bytes, token: int | None) -> None:
        blob = self.bucket.blob(self._name(key))
        blob.cache_control = "no-cache"  # readers must not be served a stale pointer

        def attempt() -> None:
            blob.upload_from_string(
                data,
                content_type="application/json",
                if_generation_match=token or 0,
                retry=DEFAULT_RETRY_IF_GENERATION_SPECIFIED,
            )

        try:
            TRANSFER_RETRY(attempt)()
        except api_exceptions.PreconditionFailed as exc:
            raise _Changed(self.uri(key)) from exc


def split_gcs_uri(uri: str) -> tuple[str, str]:
    """``gs://bucket/some/prefix/`` -> ``("bucket", "some/prefix")``; ValueError without a
    bucket."""
    bucket, _, prefix = uri.removeprefix("gs://").partition("/")
    if not bucket:
        raise ValueError(f"{uri}: no bucket; expected gs://bucket/prefix")
    return bucket, prefix.strip("/")


_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")


def check_destination(destination: str | Path, flag: str = "--push-destination") -> str:
    """Refuse, before any work, a destination a push could never write: another scheme
    than ``gs://`` (``s3://...``), a ``gs://`` URI without a valid bucket name, or a local
    path under a file or an unwritable folder. ValueError naming ``flag``; nothing is
    contacted or created. Returns the destination as a string."""
    from common.paths import check_output_dir

    d = str(destination)
    if not d:
        raise ValueError(f"{flag}: empty; expected a local folder or gs://bucket/prefix")
    if d.startswith("gs://"):
        bucket = d.removeprefix("gs://").partition("/")[0]
        if not _BUCKET.fullmatch(bucket):
            raise ValueError(f"{flag} {d}: {bucket!r} is not a valid bucket name")
        return d
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", d):
        raise ValueError(
            f"{flag} {d}: unsupported scheme; use a local folder or gs://bucket/prefix"
        )
    check_output_dir(d, flag)
    return d


def _open(destination: str | Path) -> _Store:
    d = str(destination)
    if d.startswith("gs://"):
        return _GcsStore(*split_gcs_uri(d))
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", d):
        raise ValueError(f"{d}: unsupported destination; use a local path or gs://bucket/prefix")
    return _LocalStore(Path(d))


# --- the registry ---------------------------------------------------------------------------------


def _dumps(obj: dict) -> bytes:
    return (json.dumps(obj, indent=1, allow_nan=False) + "\n").encode()


def _file_names(manifest: dict, where: str) -> list[str]:
    """The manifest's file names, refusing any that could leave the version folder."""
    names = sorted(manifest["files"])
    for name in names:
        if not is_valid_file_name(name):  # the model loader's rule
            raise RegistryError(f"{where}: {MANIFEST} lists an invalid file name {name!r}")
    return names


def _parse_pointer(data: bytes, where: str) -> dict:
    try:
        pointer = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryError(f"{where} is corrupt ({exc}); fix or remove it") from exc
    if not (
        isinstance(pointer, dict)
        and all(k in pointer for k in POINTER_KEYS)
        and isinstance(pointer["version"], str)
        and VERSION.fullmatch(pointer["version"])
        and isinstance(pointer["files"], dict)
    ):
        raise RegistryError(
            f"{where} is corrupt (expected a JSON object with {', '.join(POINTER_KEYS)}); "
            "fix or remove it"
        )
    return pointer


def _transfer(what: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run one store call; errors other than the registry's own name ``what``."""
    try:
        return fn(*args)
    except (RegistryError, _Changed):
        raise
    except Exception as exc:
        raise RegistryError(f"{what}: {type(exc).__name__}: {exc}") from exc


def _commit(store: _Store, key: str, data: bytes, token: Any) -> bool:
    """Write ``data`` to ``key`` if it is unchanged since read as ``token``. True when it now
    holds ``data`` (written here, or by an identical write, e.g. an attempt whose response was
    lost); False when someone else's content is there."""
    try:
        _transfer(f"writing {store.uri(key)}", store.write_if_unchanged, key, data, token)
    except _Changed:
        now = _transfer(f"reading {store.uri(key)}", store.read, key)
        return now is not None and now[0] == data
    return True


def _current(store: _Store) -> tuple[dict | None, Any]:
    """The pointer (None when nothing was pushed yet) and its token for ``_commit``."""
    where = store.uri(POINTER)
    current = _transfer(f"reading {where}", store.read, POINTER)
    if current is None:
        return None, None
    return _parse_pointer(current[0], where), current[1]


def push_model(
    model_dir: str | Path,
    destination: str | Path,
    version: str | None = None,
    *,
    metrics: dict[str, float] | None = None,
) -> dict:
    """Copy a model directory to ``<destination>/<version>/`` and make it the current model.

    ``destination``: a local directory or ``gs://bucket/prefix``. ``version``: the folder name
    (letters, digits, ``._-``); None gives the UTC time plus the manifest's hash, e.g.
    ``20260514-093012-3f9a1c2e``. ``metrics`` (e.g. ``{"auc": 0.71}``) go into the pointer.

    Order: verify the model directory against its manifest; copy each file (skipping those
    already there with the same content) and check what landed; write MANIFEST.json; write
    CURRENT.json. Returns the pointer now in CURRENT.json. Raises ValueError for a model
    directory that fails its manifest, VersionConflictError when the version holds a different
    model, PointerMovedError when a concurrent push moved the pointer meanwhile, RegistryError
    when a transfer fails; in every case the pointer is where it was.
    """
    model_dir = Path(model_dir)
    manifest = verify_model_dir(model_dir)
    manifest_bytes = (model_dir / MANIFEST).read_bytes()
    manifest_digests = _Digests.of_bytes(manifest_bytes)
    now = datetime.now(UTC)
    version = version or f"{now:%Y%m%d-%H%M%S}-{manifest_digests.sha256[:8]}"
    if not VERSION.fullmatch(version) or version == POINTER:
        raise ValueError(f"invalid version {version!r}: letters, digits and ._- only")
    names = _file_names(manifest, str(model_dir))

    metrics = {name: float(value) for name, value in (metrics or {}).items()}
    for name, value in metrics.items():
        if not math.isfinite(value):
            raise ValueError(f"metrics[{name!r}] = {value} is not a finite number")

    store = _open(destination)
    pointer_uri, folder = store.uri(POINTER), store.uri(version)
    pointer = {
        "version": version,
        "uri": folder,
        "manifest_sha256": manifest_digests.sha256,
        "files": {name: manifest["files"][name]["sha256"] for name in names},
        "metrics": metrics,
        "pushed_at": now.isoformat(timespec="seconds"),
    }
    live, token = _current(store)  # a corrupt pointer stops the push here
    manifest_key = f"{version}/{MANIFEST}"
    landed = _transfer(f"reading {store.uri(manifest_key)}", store.read, manifest_key)
    if landed is not None and landed[0] != manifest_bytes:
        raise VersionConflictError(
            f"{folder} already holds a different model ({MANIFEST} differs from "
            f"{model_dir / MANIFEST}); push it under another version"
        )

    for name in names:
        key, digests = f"{version}/{name}", _Digests.of_file(model_dir / name)
        what = f"pushing {model_dir / name} to {store.uri(key)}"
        if not _transfer(what, store.holds, key, digests):
            _transfer(what, store.put, model_dir / name, key, digests)
    if landed is None and not _commit(store, manifest_key, manifest_bytes, None):
        raise VersionConflictError(
            f"{folder}: a different model was pushed under this version meanwhile"
        )
    where = store.uri(manifest_key)
    if not _transfer(f"checking {where}", store.holds, manifest_key, manifest_digests):
        raise RegistryError(f"{where} does not match {model_dir / MANIFEST}")

    already_current = (
        live is not None
        and live["version"] == version
        and live["manifest_sha256"] == manifest_digests.sha256
    )
    if already_current:
        return live  # leave the pointer byte-identical
    if not _commit(store, POINTER, _dumps(pointer), token):
        raise PointerMovedError(
            f"{pointer_uri} changed during this push (a concurrent push?); it was left as is. "
            f"{folder} is complete: push again to make it current"
        )
    return pointer


def read_current(destination: str | Path) -> dict | None:
    """The pointer in ``<destination>/CURRENT.json`` (keys: version, uri, manifest_sha256,
    files, metrics, pushed_at); None when nothing was pushed yet. RegistryError naming the
    file when it is corrupt."""
    return _current(_open(destination))[0]


def fetch_model(destination: str | Path, local_dir: str | Path, version: str | None = None) -> Path:
    """Download the current model (or ``version``) to ``local_dir`` (absent or empty) and
    check every file: against the pointer (for the current version) and the manifest. The
    result is complete or absent: files land in a sibling folder that is renamed at the end.
    Returns ``local_dir``, ready for ``model.export.load``."""
    store = _open(destination)
    pointer = _current(store)[0]
    if version is None:
        if pointer is None:
            raise RegistryError(f"nothing was pushed to {destination} yet ({POINTER} is missing)")
        version = pointer["version"]
    if not VERSION.fullmatch(version):
        raise ValueError(f"invalid version {version!r}")
    expected = pointer if pointer is not None and pointer["version"] == version else None

    out = Path(local_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        manifest_key = f"{version}/{MANIFEST}"
        where = store.uri(manifest_key)
        landed = _transfer(f"reading {where}", store.read, manifest_key)
        if landed is None:
            raise RegistryError(f"{where} is missing: version {version} was never fully pushed")
        if expected and hashlib.sha256(landed[0]).hexdigest() != expected["manifest_sha256"]:
            raise RegistryError(f"{where} does not match manifest_sha256 in {POINTER}")
        try:
            sha256 = {n: m["sha256"] for n, m in json.loads(landed[0])["files"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RegistryError(f"{where} is corrupt ({exc!r})") from exc
        if expected and sha256 != expected["files"]:
            raise RegistryError(f"{where} does not list the files in {POINTER}")
        for name in _file_names({"files": sha256}, where):
            key = f"{version}/{name}"
            _transfer(f"fetching {store.uri(key)}", store.get, key, tmp / name)
            if sha256_file(tmp / name) != sha256[name]:
                raise RegistryError(f"{store.uri(key)} does not match its sha256 in {MANIFEST}")
        (tmp / MANIFEST).write_bytes(landed[0])
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
