"""Step 3, train: DeepFM from the model library -> a self-contained model directory.

``train_model`` is the plain function (unit-tested without Kubeflow); ``train`` is its
``@component`` face. On a GPU node (the pipeline can request one at compile time) the
``auto`` device trains on the GPU.
"""

from pathlib import Path

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import component

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

    from model.config import load_config
    from model.export import save_model_dir
    from model.train import train

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


def log_training(result: dict, model, metrics) -> float:
    """Training figures into the KFP ``Metrics`` and ``Model`` artifacts; returns the AUC."""
    import json

    for name, value in result.items():
        if isinstance(value, int | float):
            metrics.log_metric(name, float(value))
    for record in result["history"]:
        for name, value in record.items():
            if name != "epoch":
                metrics.log_metric(f"epoch{record['epoch']}_{name}", float(value))
    model.metadata["framework"] = "pytorch"
    model.metadata["model"] = "DeepFM"
    model.metadata["eval_auc"] = float(result.get("auc", 0.0))
    model.metadata["history"] = json.dumps(result["history"])
    return float(result.get("auc", 0.0))


@component
def train(
    train_data: Input[Dataset],
    eval_data: Input[Dataset],
    model_config: str,
    epochs: int,
    batch_size: int,
    model: Output[Model],
    metrics: Output[Metrics],
) -> float:
    """Train DeepFM in this pod; returns the eval AUC seen during training."""
    from components.train import log_training, train_model

    result = train_model(
        train_data.path,
        eval_data.path,
        model_config,
        model.path,
        epochs=epochs,
        batch_size=batch_size,
    )
    return log_training(result, model, metrics)


@component(trainjob=True)
def train_trainjob(
    train_data: Input[Dataset],
    eval_data: Input[Dataset],
    model_config: str,
    epochs: int,
    batch_size: int,
    image: str,
    num_nodes: int,
    workspace_path: str,
    model: Output[Model],
    metrics: Output[Metrics],
    task_config: dsl.TaskConfig,
) -> float:
    """Train DeepFM on a Kubeflow Trainer TrainJob (``num_nodes`` nodes, the task's GPUs on
    each), wait for it and collect the model directory; returns the eval AUC. Data move
    through gs:// (a GCS pipeline root) or ``workspace_path`` (a ReadWriteMany volume)."""
    import dataclasses

    from components.train import log_training
    from pipelines.trainjob import train_with_trainjob

    gcs = train_data.uri.startswith("gs://")
    result = train_with_trainjob(
        train_data.uri if gcs else train_data.path,
        eval_data.uri if gcs else eval_data.path,
        model.path,
        model_uri=model.uri if gcs else None,
        workspace=None if gcs else workspace_path,
        image=image,
        model_config=model_config,
        num_nodes=num_nodes,
        epochs=epochs,
        batch_size=batch_size,
        **dataclasses.asdict(task_config),
    )
    return log_training(result, model, metrics)
