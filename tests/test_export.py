"""Tests of writing a model directory (model/export.py: save_model_dir, model_dir_state,
check_model_dir_target) and of run_training's check before training (training/run.py):
nothing that is not a model directory is ever replaced, a model directory only with
overwrite, the swap leaves no temporary folder, a failure leaves the target as it was,
and a run's checkpoints move into the model directory it saves."""

import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import model.export as export
from model.config import config_from_dict
from model.deepfm import DeepFM
from model.export import (
    check_model_dir_target,
    load,
    model_dir_state,
    save_model_dir,
    verify_model_dir,
)
from model.features import FeatureEncoder
from model.train import CHECKPOINT_DIR
from training.run import _prepare_model_dir


def _rows(n: int = 64) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {"a": rng.integers(0, 20, n), "x": rng.random(n), "y": rng.integers(0, 2, n)}
    )


@pytest.fixture(scope="module")
def parts():
    cfg = config_from_dict(
        {
            "features": [
                {"name": "a", "type": "id", "hash_bucket_size": 50, "embedding_dim": 4},
                {"name": "x", "type": "raw"},
            ],
            "feature_groups": {"wide": ["a"], "fm": ["a"], "deep": ["a", "x"]},
            "model": {"deep": {"hidden_units": [8]}},
            "data": {"label": "y"},
        }
    )
    encoder = FeatureEncoder(cfg).fit(_rows())
    return cfg, encoder


def network(parts, seed: int) -> DeepFM:
    cfg, encoder = parts
    torch.manual_seed(seed)
    return DeepFM(cfg.model, cfg.feature_groups, encoder.input_spec())


def save(parts, path: Path, seed: int = 0, **kw) -> Path:
    cfg, encoder = parts
    metrics = {"seed": seed}
    return save_model_dir(
        path, cfg, encoder, network(parts, seed), metrics, export_program=False, **kw
    )


def tree(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (relative path -> sha256 of a file, 'dir' for a folder)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def user_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("mine\n")
    (path / "sub").mkdir()
    (path / "sub" / "data.bin").write_bytes(os.urandom(256))
    return path


def saved_seed(path: Path) -> int:
    return json.loads((path / "metrics.json").read_text())["seed"]


# ------------------------------------------------------------------------ the target's state


def test_model_dir_state_of_each_kind(parts, tmp_path):
    assert model_dir_state(tmp_path / "nothing") == "absent"
    (tmp_path / "empty").mkdir()
    assert model_dir_state(tmp_path / "empty") == "absent"
    assert model_dir_state(save(parts, tmp_path / "m")) == "model"
    broken = save(parts, tmp_path / "broken")
    (broken / "weights.pt").write_bytes(b"x")  # fails verification, still a model directory
    assert model_dir_state(broken) == "model"
    (tmp_path / "run" / CHECKPOINT_DIR).mkdir(parents=True)
    (tmp_path / "run" / CHECKPOINT_DIR / "ckpt-000000005.pt").write_bytes(b"c")
    assert model_dir_state(tmp_path / "run") == "checkpoints"
    (tmp_path / "run" / CHECKPOINT_DIR / "mine.txt").write_text("x")
    assert model_dir_state(tmp_path / "run") == "other"
    assert model_dir_state(user_folder(tmp_path / "user")) == "other"
    (tmp_path / "file").write_text("x")
    assert model_dir_state(tmp_path / "file") == "other"
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    assert model_dir_state(tmp_path / "link") == "other"


def test_check_model_dir_target_messages(parts, tmp_path):
    user = user_folder(tmp_path / "user")
    with pytest.raises(FileExistsError) as e:
        check_model_dir_target(user, overwrite=True)
    assert str(e.value) == (
        f"{user} exists and is not a model directory; refusing to replace it "
        "(choose another --model-dir)"
    )
    m = save(parts, tmp_path / "m")
    with pytest.raises(FileExistsError, match="--overwrite") as e:
        check_model_dir_target(m)
    assert str(m) in str(e.value)
    assert check_model_dir_target(m, overwrite=True) == "model"


# ------------------------------------------------------------------------ save_model_dir


def test_a_folder_of_other_files_is_refused_untouched(parts, tmp_path):
    user = user_folder(tmp_path / "user")
    before = tree(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="is not a model directory"):
            save(parts, user, overwrite=overwrite)
    assert tree(tmp_path) == before  # byte-identical, and no temporary folder beside it


def test_a_file_is_refused_untouched(parts, tmp_path):
    (tmp_path / "model").write_text("not a folder")
    with pytest.raises(FileExistsError, match="is not a model directory"):
        save(parts, tmp_path / "model", overwrite=True)
    assert (tmp_path / "model").read_text() == "not a folder"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_model_directory_is_refused_without_overwrite(parts, tmp_path):
    m = save(parts, tmp_path / "m", seed=0)
    before = tree(tmp_path)
    with pytest.raises(FileExistsError, match="--overwrite"):
        save(parts, m, seed=1)
    assert tree(tmp_path) == before


def test_a_model_directory_is_replaced_with_overwrite(parts, tmp_path):
    m = save(parts, tmp_path / "m", seed=0)
    (m / "stale.txt").write_text("from the old directory")
    assert save(parts, m, seed=1, overwrite=True) == m
    verify_model_dir(m)
    assert saved_seed(m) == 1
    assert not (m / "stale.txt").exists()
    expected = network(parts, 1).state_dict()
    got = load(m).network.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # the old one and the temp are gone


def test_a_model_directory_that_fails_verification_is_replaced_with_overwrite(parts, tmp_path):
    m = save(parts, tmp_path / "m", seed=0)
    (m / "weights.pt").write_bytes(b"corrupt")
    with pytest.raises(FileExistsError, match="--overwrite"):
        save(parts, m, seed=1)
    save(parts, m, seed=1, overwrite=True)
    verify_model_dir(m)
    assert saved_seed(m) == 1


def test_an_empty_folder_is_filled(parts, tmp_path):
    (tmp_path / "m").mkdir()
    save(parts, tmp_path / "m")
    verify_model_dir(tmp_path / "m")
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_a_missing_parent_is_created_and_the_mode_is_a_plain_folders(parts, tmp_path):
    m = save(parts, tmp_path / "a" / "b" / "m")
    verify_model_dir(m)
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(m.stat().st_mode) == 0o777 & ~mask  # not mkdtemp's 0700


def test_a_sibling_named_like_the_old_temporary_folder_survives(parts, tmp_path):
    sibling = user_folder(tmp_path / "m.tmp")
    before = tree(sibling)
    save(parts, tmp_path / "m")
    save(parts, tmp_path / "m", seed=1, overwrite=True)
    assert tree(sibling) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "m.tmp"]


@pytest.mark.parametrize("existing", ["none", "model"])
def test_a_failure_while_writing_leaves_the_target_and_no_temporary_folder(
    parts, tmp_path, monkeypatch, existing
):
    if existing == "model":
        save(parts, tmp_path / "m", seed=0)
    before = tree(tmp_path)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export.torch, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        save(parts, tmp_path / "m", seed=1, overwrite=True)
    assert tree(tmp_path) == before


def test_a_failure_of_the_swap_puts_the_old_directory_and_checkpoints_back(
    parts, tmp_path, monkeypatch
):
    m = save(parts, tmp_path / "m", seed=0)
    (m / CHECKPOINT_DIR).mkdir()
    (m / CHECKPOINT_DIR / "ckpt-000000010.pt").write_bytes(b"state")
    before = tree(tmp_path)
    real = Path.rename

    def rename(self, target):
        if Path(target) == m and self.name.startswith(".m."):  # the new folder moving in
            raise OSError("rename failed")
        return real(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError, match="rename failed"):
        save(parts, m, seed=1, overwrite=True)
    assert tree(tmp_path) == before


# ------------------------------------------------------------------------ checkpoints


def test_a_runs_checkpoints_move_into_the_model_directory_it_saves(parts, tmp_path):
    """What training with checkpoints leaves: ``model_dir/checkpoints`` and nothing else;
    the save fills the folder without --overwrite and keeps them for --resume."""
    run = tmp_path / "m"
    (run / CHECKPOINT_DIR).mkdir(parents=True)
    (run / CHECKPOINT_DIR / "ckpt-000000064.pt").write_bytes(b"state")
    save(parts, run)
    manifest = verify_model_dir(run)
    assert CHECKPOINT_DIR not in manifest["files"]  # outside the manifest: never pushed
    assert (run / CHECKPOINT_DIR / "ckpt-000000064.pt").read_bytes() == b"state"
    # resuming into it again (overwrite implied) keeps them once more
    (run / CHECKPOINT_DIR / "ckpt-000000096.pt").write_bytes(b"later")
    save(parts, run, seed=1, overwrite=True)
    assert sorted(p.name for p in (run / CHECKPOINT_DIR).iterdir()) == [
        "ckpt-000000064.pt",
        "ckpt-000000096.pt",
    ]
    assert saved_seed(run) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_prepare_refuses_an_earlier_runs_checkpoints_unless_resuming_or_overwriting(tmp_path):
    run = tmp_path / "m"
    (run / CHECKPOINT_DIR).mkdir(parents=True)
    (run / CHECKPOINT_DIR / "ckpt-000000005.pt").write_bytes(b"state")
    before = tree(tmp_path)
    with pytest.raises(FileExistsError, match="--resume .* --overwrite"):
        _prepare_model_dir(run, overwrite=False, resume=False)
    assert tree(tmp_path) == before
    _prepare_model_dir(run, overwrite=True, resume=True)  # resume implies overwrite
    assert tree(tmp_path) == before
    _prepare_model_dir(run, overwrite=True, resume=False)  # starting afresh: old ones go
    assert not (run / CHECKPOINT_DIR).exists()


def test_prepare_with_overwrite_keeps_the_model_and_drops_its_checkpoints(parts, tmp_path):
    m = save(parts, tmp_path / "m")
    (m / CHECKPOINT_DIR).mkdir()
    (m / CHECKPOINT_DIR / "ckpt-000000005.pt").write_bytes(b"state")
    with pytest.raises(FileExistsError, match="--overwrite"):
        _prepare_model_dir(m, overwrite=False, resume=False)
    assert (m / CHECKPOINT_DIR / "ckpt-000000005.pt").exists()
    _prepare_model_dir(m, overwrite=True, resume=False)
    assert not (m / CHECKPOINT_DIR).exists()
    verify_model_dir(m)  # the old model itself is untouched until the new one is saved
    user = user_folder(tmp_path / "user")
    with pytest.raises(FileExistsError, match="is not a model directory"):
        _prepare_model_dir(user, overwrite=True, resume=True)
