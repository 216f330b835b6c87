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
```

``load(model_dir)`` needs nothing else; ``RankingModel.predict(raw rows)`` returns the same
probabilities the evaluation computed (same encoders, same weights, fp32, eval mode).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from model.config import Config, config_from_dict
from model.deepfm import DeepFM
from model.features import FeatureEncoder, InputSpec
from model.train import score

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


def save_model_dir(
    model_dir: str | Path,
    cfg: Config,
    encoder: FeatureEncoder,
    model: DeepFM,
    metrics: dict | None = None,
    *,
    export_program: bool = True,
) -> Path:
    """Write the model directory (replacing an earlier one atomically: written beside it,
    then renamed). Returns its path."""
    out = Path(model_dir)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    spec = encoder.input_spec()
    model = model.eval()
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    (tmp / "encoders.json").write_text(json.dumps(encoder.state()))
    (tmp / "input_spec.json").write_text(json.dumps(spec.to_dict(), indent=1))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, tmp / "weights.pt")
    if export_program:
        _export_program(model, spec, tmp / PROGRAM)
    (tmp / "metrics.json").write_text(json.dumps(metrics or {}, indent=1, default=float))
    files = {
        p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in sorted(tmp.iterdir())
    }
    (tmp / MANIFEST).write_text(
        json.dumps({"format_version": FORMAT_VERSION, "files": files}, indent=1)
    )
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def verify_model_dir(model_dir: str | Path) -> dict:
    """Check every file against MANIFEST.json; returns the manifest or raises ValueError."""
    d = Path(model_dir)
    manifest_path = d / MANIFEST
    if not manifest_path.is_file():
        raise ValueError(f"{d} is not a model directory (no {MANIFEST})")
    manifest = json.loads(manifest_path.read_text())
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


def load(model_dir: str | Path, device: str = "cpu", verify: bool = True) -> RankingModel:
    """Read a model directory written by ``save_model_dir`` (no pickled objects: JSON/YAML
    plus a tensors-only state_dict)."""
    d = Path(model_dir)
    if verify:
        verify_model_dir(d)
    cfg = config_from_dict(yaml.safe_load((d / "config.yaml").read_text()))
    encoder = FeatureEncoder(cfg, json.loads((d / "encoders.json").read_text()))
    spec = InputSpec.from_dict(json.loads((d / "input_spec.json").read_text()))
    if spec != encoder.input_spec():
        raise ValueError(f"{d}: input_spec.json does not match the encoders")
    network = DeepFM(cfg.model, cfg.feature_groups, spec)
    state = torch.load(d / "weights.pt", map_location=device, weights_only=True)
    network.load_state_dict(_without_field_indices(state))
    network.to(device).eval()
    metrics = json.loads((d / "metrics.json").read_text())
    return RankingModel(cfg, encoder, network, metrics, d)
