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
) -> int:
    """Retrieve the training data from Feast; returns the number of training rows."""
    from training.data import retrieve_features

    info = retrieve_features(
        feature_repo, window_end, window_days, eval_fraction, train_data.path, eval_data.path
    )
    for artifact, rows in ((train_data, info["rows_train"]), (eval_data, info["rows_eval"])):
        artifact.metadata.update(
            {"rows": rows, "window_start": info["window_start"], "window_end": info["window_end"]}
        )
    print(info)
    return info["rows_train"]
