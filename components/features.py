"""Step 2, features: the thin face of ``training.data.retrieve_features`` (point-in-time
training data from Feast for the run's window, split by time into train and eval)."""

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
    train_shards: Output[Dataset],
    eval_shards: Output[Dataset],
    scheduled_at: str = "",
) -> int:
    """Retrieve the training data of the window (ending at ``window_end``, else at the
    run's ``scheduled_at``) from Feast; returns the number of training rows."""
    from components.settings import check_cluster_settings, window_end_of_run

    check_cluster_settings(needs_feast=True)  # before the heavy imports: a missing setting
    window_end = window_end_of_run(window_end, scheduled_at)  # fails in the first second

    from training.data import retrieve_features

    info = retrieve_features(
        feature_repo, window_end, window_days, eval_fraction, train_data.path, eval_data.path
    )
    for artifact, rows in ((train_data, info["rows_train"]), (eval_data, info["rows_eval"])):
        artifact.metadata.update(
            {"rows": rows, "window_start": info["window_start"], "window_end": info["window_end"]}
        )
    # each split also as shards (feature_repo.shards: day folders and a manifest)
    from feature_repo.shards import shard_split_files

    splits = {train_data.path: train_shards.path, eval_data.path: eval_shards.path}
    manifests = shard_split_files(feature_repo, splits)
    for artifact in (train_shards, eval_shards):
        m = manifests[artifact.path]
        artifact.metadata.update(
            {"rows": m.rows, "files": len(m.files), "min_time": m.min_time, "max_time": m.max_time}
        )
    print(info)
    return info["rows_train"]
