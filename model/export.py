"""The self-contained model directory, and scoring from it.

```
<model_dir>/
  config.yaml        the full training config
  encoders.json      fitted feature encoders (vocabularies, hash sizes, boundaries, means)
  input_spec.json    the network's input contract (tensor columns, table sizes)
  weights.pt         the network's state_dict (tensors only; loaded with weights_only=True)
  program.pt2        the network as a torch.export program: (sparse, multi, dense) -> logits
  metrics.json       evaluation metrics and training history
  MANIFEST.json      every file above with its size and sha256, written last
  checkpoints/       (training with checkpoints only) the run's latest checkpoints, kept
                     for ``--resume``; outside the manifest, so never pushed
```

``save_model_dir`` never replaces what is not a model directory (``check_model_dir_target``).

``load(model_dir)`` needs nothing else; ``RankingModel.predict(raw rows)`` returns the same
probabilities the evaluation computed (same encoders, same weights, fp32, eval mode).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from model.config import Config, config_from_dict
from model.deepfm import DeepFM
from model.features import FeatureEncoder, InputSpec
from model.train import CHECKPOINT_DIR, score

MANIFEST = "MANIFEST.json"
PROGRAM = "program.pt2"
FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _export_program(model: DeepFM, spec: InputSpec, path: Path) -> None:
    """torch.export the network with a dynamic batch dimension (B >= 1)."""
    model = model.eval().cpu()
    b = 4
    example = (
        torch.zeros(b, len(spec.sparse), dtype=torch.long),
        torch.full((b, len(spec.multi), spec.max_length), -1, dtype=torch.long),
        torch.zeros(b, len(spec.dense)),
    )
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(
        model, example, dynamic_shapes=({0: batch}, {0: batch}, {0: batch}), strict=False
    )
    torch.export.save(program, str(path))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _is_checkpoints_only(d: Path) -> bool:
    """A folder whose only entry is ``checkpoints/`` holding only checkpoint files: what a
    training run writes into its model directory before the model is saved."""
    entries = list(d.iterdir())
    if [e.name for e in entries] != [CHECKPOINT_DIR] or not entries[0].is_dir():
        return False
    return all(re.fullmatch(r"ckpt-\d+\.(pt|tmp)", f.name) for f in entries[0].iterdir())


def model_dir_state(model_dir: str | Path) -> str:
    """What is at ``model_dir``, for writing a model directory there:

    ``"absent"``: nothing, or an empty folder (filled as it is);
    ``"model"``: a folder with ``MANIFEST.json`` (a model directory, verified or not);
    ``"checkpoints"``: a folder holding only a training run's ``checkpoints/``;
    ``"other"``: anything else (a file, a link, a folder of other files): never replaced.
    """
    d = Path(model_dir)
    if d.is_symlink() or (d.exists() and not d.is_dir()):
        return "other"
    if not d.exists() or not any(d.iterdir()):
        return "absent"
    if (d / MANIFEST).is_file():
        return "model"
    return "checkpoints" if _is_checkpoints_only(d) else "other"


def check_model_dir_target(model_dir: str | Path, overwrite: bool = False) -> str:
    """Raise ``FileExistsError`` unless a model directory may be written at ``model_dir``:
    it is absent or an empty folder, holds only a training run's checkpoints, or is a model
    directory and ``overwrite`` is set. Returns ``model_dir_state``."""
    state = model_dir_state(model_dir)
    if state == "other":
        raise FileExistsError(
            f"{model_dir} exists and is not a model directory; refusing to replace it "
            "(choose another --model-dir)"
        )
    if state == "model" and not overwrite:
        raise FileExistsError(
            f"{model_dir} already holds a model directory; pass --overwrite to replace it"
        )
    return state


def save_model_dir(
    model_dir: str | Path,
    cfg: Config,
    encoder: FeatureEncoder,
    model: DeepFM,
    metrics: dict | None = None,
    *,
    export_program: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write the model directory and return its path.

    The files are written into a fresh temporary folder beside ``model_dir``, then swapped
    in by renames: nothing is ever half-written at ``model_dir``. An existing model
    directory is replaced only with ``overwrite`` (renamed aside, the new one renamed in,
    then the old one deleted); an empty folder is filled; anything else raises
    ``FileExistsError`` (``check_model_dir_target``) before anything is written. A
    ``checkpoints/`` folder already at ``model_dir`` (the training run's) moves into the
    new directory, outside its manifest. On any failure the temporary folder is removed
    and ``model_dir`` is left as it was.
    """
    out = Path(model_dir)
    state = check_model_dir_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        tmp.chmod(0o777 & ~_umask())  # as a plain mkdir would (mkdtemp makes it 0700)
        _write_files(tmp, cfg, encoder, model, metrics, export_program)
        if state == "absent":
            os.replace(tmp, out)  # renaming onto an empty folder replaces it
        else:
            _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_files(
    folder: Path,
    cfg: Config,
    encoder: FeatureEncoder,
    model: DeepFM,
    metrics: dict | None,
    export_program: bool,
) -> None:
    spec = encoder.input_spec()
    model = model.eval()
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    (folder / "encoders.json").write_text(json.dumps(encoder.state()))
    (folder / "input_spec.json").write_text(json.dumps(spec.to_dict(), indent=1))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, folder / "weights.pt")
    if export_program:
        _export_program(model, spec, folder / PROGRAM)
    text = json.dumps(_finite(metrics or {}), indent=1, default=float, allow_nan=False)
    (folder / "metrics.json").write_text(text)
    files = {
        p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.iterdir())
    }
    (folder / MANIFEST).write_text(
        json.dumps({"format_version": FORMAT_VERSION, "files": files}, indent=1)
    )


def _finite(value):
    """``value`` with every float that is not finite (an AUC undefined on one class) as
    None: metrics.json stays strict JSON, with no ``NaN``."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float | np.floating) and not np.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def _swap_in(new: Path, out: Path) -> None:
    """Replace the folder ``out`` (ours: a model directory or a run's checkpoints) by
    ``new``, carrying ``out/checkpoints`` over; undone if a rename fails."""
    ckpt_old, ckpt_new = out / CHECKPOINT_DIR, new / CHECKPOINT_DIR
    carried = ckpt_old.is_dir()
    if carried:
        ckpt_old.rename(ckpt_new)
    aside = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old."))
    try:
        out.rename(aside / out.name)
    except BaseException:
        aside.rmdir()
        if carried:
            ckpt_new.rename(ckpt_old)
        raise
    try:
        new.rename(out)
    except BaseException:
        (aside / out.name).rename(out)
        aside.rmdir()
        if carried:
            ckpt_new.rename(ckpt_old)
        raise
    shutil.rmtree(aside, ignore_errors=True)  # a leftover hidden folder loses nothing


def is_valid_file_name(name: object) -> bool:
    """A file name a manifest may list: a plain name inside the model directory (no
    folder, no ``..``, not the manifest itself). The registry applies the same rule."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..", MANIFEST)
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
    )


def read_manifest(model_dir: str | Path) -> dict:
    """``MANIFEST.json`` of ``model_dir``, its shape checked: ``{"files": {name: {"sha256":
    hex, ...}}}`` with every name a plain file name (``is_valid_file_name``). ValueError
    naming the manifest (and the entry) otherwise."""
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{model_dir} is not a model directory (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); the file is damaged") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        raise ValueError(f"{path}: expected {{'files': {{name: {{'sha256': ...}}}}}}")
    for name, meta in files.items():
        if not is_valid_file_name(name):
            raise ValueError(f"{path}: lists an invalid file name {name!r} (not a plain name)")
        digest = meta.get("sha256") if isinstance(meta, dict) else None
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"{path}: entry {name!r} has no valid sha256")
    return manifest


def verify_model_dir(model_dir: str | Path) -> dict:
    """Check every file against MANIFEST.json; returns the manifest or raises ValueError."""
    d = Path(model_dir)
    manifest = read_manifest(d)
    for name, meta in manifest["files"].items():
        p = d / name
        if not p.is_file():
            raise ValueError(f"{d}: {name} is listed in {MANIFEST} but missing")
        if sha256_file(p) != meta["sha256"]:
            raise ValueError(f"{d}: {name} does not match its sha256 in {MANIFEST}")
    return manifest


@dataclass
class RankingModel:
    """A loaded model directory: config, encoders and network, ready to score raw rows."""

    cfg: Config
    encoder: FeatureEncoder
    network: DeepFM
    metrics: dict
    path: Path

    def predict(self, df: pd.DataFrame, batch_size: int | None = None) -> np.ndarray:
        """Raw feature rows -> scores ``[N]`` (click probabilities for a binary model).
        Unseen ids go to the OOV rows; missing values to their defaults."""
        features = self.encoder.transform(df)
        return score(self.network, features, batch_size or self.cfg.train.eval_batch_size)

    def load_program(self):
        """The exported network (``torch.export``): call ``.module()(sparse, multi, dense)``."""
        return torch.export.load(str(self.path / PROGRAM))


# Directories written before the model's field selections became non-persistent buffers
# carry those column indices in weights.pt; they are derived from the config, not learnt,
# so dropping them on load is exact.
_FIELD_INDICES = re.compile(r"(wide_cols_\d+|deep_cols_\d+|fm_cols|dense_cols)")


def _without_field_indices(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not _FIELD_INDICES.fullmatch(k)}


def _read(path: Path, parse):
    """``parse(text)`` of a model directory's file; ValueError naming the file when it is
    missing, unreadable or does not parse."""
    try:
        return parse(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: missing from the model directory") from None
    except (ValueError, UnicodeDecodeError, yaml.YAMLError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: cannot be read ({first})") from None


def _load_weights(path: Path, network: DeepFM, device: str) -> None:
    """The tensors-only state_dict at ``path`` into ``network``; ValueError naming the
    file when it is not one (a damaged or tampered file, a pickle of other objects) or
    does not fit the network the config describes."""
    import pickle

    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{path}: missing from the model directory") from None
    except pickle.UnpicklingError:  # objects other than tensors: refused, never run
        raise ValueError(
            f"{path}: holds pickled objects other than tensors (tampered or not written by "
            "deepfm); refusing to load it"
        ) from None
    except (RuntimeError, EOFError, ValueError, TypeError, OSError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        reason = reason[:200]
        raise ValueError(f"{path}: damaged, not a tensors-only state_dict ({reason})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state_dict (a {type(state).__name__})")
    try:
        network.load_state_dict(_without_field_indices(state))
    except RuntimeError as e:
        reason = " ".join(str(e).split())[:300]
        raise ValueError(f"{path}: does not fit the network of config.yaml: {reason}") from None
    except (TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a state_dict of tensors ({e})") from None


def load(
    model_dir: str | Path, device: str = "cpu", verify: bool = True, what: str = ""
) -> RankingModel:
    """Read a model directory written by ``save_model_dir`` (no pickled objects: JSON/YAML
    plus a tensors-only state_dict). Every fault (no such folder, a damaged, tampered or
    mismatched file) raises ValueError naming the file; ``what`` (a flag such as
    ``--model``) prefixes the message when the folder itself is wrong."""
    d = Path(model_dir)
    prefix = f"{what} " if what else ""
    if not d.exists():
        raise ValueError(f"{prefix}{d}: no such model directory")
    if not d.is_dir():
        raise ValueError(f"{prefix}{d}: is a file; expected a model directory")
    if verify:
        verify_model_dir(d)
    else:
        read_manifest(d)
    raw = _read(d / "config.yaml", yaml.safe_load)
    try:
        cfg = config_from_dict(raw)
    except ValueError as e:
        raise ValueError(f"{d / 'config.yaml'}: {e}") from None
    try:
        encoder = FeatureEncoder(cfg, _read(d / "encoders.json", json.loads))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{d / 'encoders.json'}: does not fit config.yaml ({e})") from None
    try:
        spec = InputSpec.from_dict(_read(d / "input_spec.json", json.loads))
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{d / 'input_spec.json'}: not an input spec ({e})") from None
    if spec != encoder.input_spec():
        raise ValueError(f"{d}: input_spec.json does not match the encoders")
    network = DeepFM(cfg.model, cfg.feature_groups, spec)
    _load_weights(d / "weights.pt", network, device)
    network.to(device).eval()
    metrics = _read(d / "metrics.json", json.loads)
    return RankingModel(cfg, encoder, network, metrics, d)
