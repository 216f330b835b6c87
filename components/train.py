"""Step 3, train: the thin faces of ``training.run.run_training`` (in this pod) and
``training.trainjob.train_with_trainjob`` (on a Kubeflow Trainer TrainJob)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import component


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
    from components.train import log_training
    from training.run import TrainRequest, run_training

    result = run_training(
        TrainRequest(
            config=model_config,
            train_data=train_data.path,
            eval_data=eval_data.path,
            model_dir=model.path,
            epochs=epochs,
            batch_size=batch_size,
            # the output folder is this task's own: a retried attempt (a preempted node)
            # continues from the checkpoints an earlier attempt left there, or replaces
            # the model it saved
            resume=True,
        )
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
    from training.trainjob import train_with_trainjob

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
