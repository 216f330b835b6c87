"""Step 2, features: point-in-time-correct training data from Feast for the run's window,
split by time into ``train`` and ``eval`` (eval = the latest ``eval_fraction`` of the
events, so the model is judged on data newer than any it trained on), each written as a
shard folder (``feature_repo.shards``: day folders of parquet files and a manifest).
"""

import tempfile
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
    spec's feature service) as the shard folders ``train_path`` and ``eval_path`` (the rows
    ``model.train.time_split`` gives); returns the row counts, file counts and the window.

    The table is written as shards first (on the Spark profile by Spark's executors, never
    collected in this process), then split at the row the eval fraction falls on: whole
    files move, only the file of the cut is rewritten.
    """
    from feature_repo.shards import split_tail
    from feature_repo.store import write_training_shards

    start, end = resolve_window(window_end, window_days)
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval fraction must be in (0, 1), got {eval_fraction}")
    train_path, eval_path = Path(train_path), Path(eval_path)
    train_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".window.", dir=train_path.parent) as tmp:
        write_training_shards(start, end, Path(tmp) / "all", repo_path=feature_repo or None)
        train_m, eval_m = split_tail(
            Path(tmp) / "all", eval_fraction, train_path, eval_path, overwrite=True
        )
    return {
        "rows_train": train_m.rows,
        "rows_eval": eval_m.rows,
        "files_train": len(train_m.files),
        "files_eval": len(eval_m.files),
        "window_start": start.isoformat(),
        "window_end": end.isoformat(),
    }
