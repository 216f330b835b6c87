"""Step 2, features: point-in-time-correct training data from Feast for the run's window,
split by time into ``train`` and ``eval`` (eval = the latest ``eval_fraction`` of the
events, so the model is judged on data newer than any it trained on).
"""

from pathlib import Path

from feature_repo.window import resolve_window


def retrieve_features(
    feature_repo: str,
    window_end: str,
    window_days: float,
    eval_fraction: float,
    train_path: str | Path,
    eval_path: str | Path,
) -> dict:
    """Write the window's training table (Feast ``get_historical_features`` through the
    spec's feature service) as ``train_path`` and ``eval_path`` parquet files;
    returns the row counts and the window."""
    from feature_repo.spec import load_spec
    from feature_repo.store import get_training_data
    from model.train import time_split

    start, end = resolve_window(window_end, window_days)
    table = get_training_data(start, end, repo_path=feature_repo or None)
    spec = load_spec(Path(feature_repo) / "features.yaml" if feature_repo else None)
    train_df, eval_df = time_split(table, spec.timestamp, eval_fraction)
    for df, path in ((train_df, Path(train_path)), (eval_df, Path(eval_path))):
        path.parent.mkdir(parents=True, exist_ok=True)
        df.to_parquet(path, index=False)
    return {
        "rows_train": len(train_df),
        "rows_eval": len(eval_df),
        "window_start": start.isoformat(),
        "window_end": end.isoformat(),
    }
