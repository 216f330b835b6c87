"""Step 3, train: DeepFM from the model library -> a self-contained model directory.

``train_model`` is the plain function (unit-tested without Kubeflow); ``train`` is its
``@component`` face. On a GPU node (the pipeline can request one at compile time) the
``auto`` device trains on the GPU.
"""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def resolve_config_path(path: str) -> Path:
    """A config path as given, else relative to the project (``configs/deepfm.yaml`` works
    from any working directory, in the image too)."""
    p = Path(path)
    if p.is_file():
        return p
    candidate = PROJECT_ROOT / path
    if candidate.is_file():
        return candidate
    raise FileNotFoundError(f"model config {path} does not exist (nor {candidate})")


def train_model(
    train_path: str,
    eval_path: str,
    config_path: str,
    model_dir: str,
    *,
    epochs: int = 0,
    batch_size: int = 0,
    device: str = "auto",
) -> dict:
    """Train on ``train_path`` (parquet), evaluate each epoch on ``eval_path``, write the
    model directory to ``model_dir``. ``epochs``/``batch_size`` of 0 keep the config's.
    Returns the evaluation metrics plus ``train_samples_per_s``, ``epochs_run`` and the
    per-epoch ``history``."""
    import pandas as pd

    from model.export import save_model_dir
    from model.train import train
    from training.config import load_config

    overrides: dict = {}
    if epochs > 0:
        overrides["train.num_epochs"] = epochs
    if batch_size > 0:
        overrides["train.batch_size"] = batch_size
    cfg = load_config(resolve_config_path(config_path), overrides)
    train_df = pd.read_parquet(train_path)
    eval_df = pd.read_parquet(eval_path)
    result = train(cfg, train_df, eval_df, model_dir=None, device=device)
    summary = {
        **result.metrics,
        "train_samples_per_s": result.samples_per_s,
        "epochs_run": len(result.history),
        "rows_train": len(train_df),
        "rows_eval": len(eval_df),
    }
    save_model_dir(
        model_dir, cfg, result.encoder, result.model, {**summary, "history": result.history}
    )
    return {**summary, "history": result.history}
