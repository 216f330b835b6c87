"""Step 2, features: the thin face of ``training.data.retrieve_features`` (point-in-time
training data from Feast for the run's window, split by time into train and eval, each a
shard folder: ``feature_repo.shards``)."""

from kfp.dsl import Dataset, Output

from components import component


@component
def features(
    feature_repo: str,
    window_end: str,
    window_days: float,
    eval_fraction: float,
    train_data: Output[Dataset],
    eval_data: Output[Dataset],
    scheduled_at: str = "",
) -> int:
    """Retrieve the training data of the window (ending at ``window_end``, else at the
    run's ``scheduled_at``) from Feast as two shard folders; returns the number of training
    rows."""
    from components.settings import check_cluster_settings, window_end_of_run

    check_cluster_settings(needs_feast=True)  # before the heavy imports: a missing setting
    window_end = window_end_of_run(window_end, scheduled_at)  # fails in the first second

    from training.data import retrieve_features

    info = retrieve_features(
        feature_repo, window_end, window_days, eval_fraction, train_data.path, eval_data.path
    )
    for artifact, split in ((train_data, "train"), (eval_data, "eval")):
        artifact.metadata.update(
            {
                "rows": info[f"rows_{split}"],
                "files": info[f"files_{split}"],
                "window_start": info["window_start"],
                "window_end": info["window_end"],
            }
        )
    print(info)
    return info["rows_train"]
