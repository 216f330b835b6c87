"""Step 2, features: point-in-time-correct training data from Feast for the run's window,
split by time into ``train`` and ``eval`` (eval = the latest ``eval_fraction`` of the
impressions, so the model is judged on data newer than any it trained on).
"""

from datetime import UTC, datetime, timedelta
from pathlib import Path

from kfp.dsl import Dataset, Output

from components import component


def resolve_window(window_end: str, window_days: float) -> tuple[datetime, datetime]:
    """``window_end`` in ISO 8601 with a time zone (empty = now, UTC) and a length in days
    -> (start, end), both UTC. A time without a zone is an error, not a guess."""
    if window_days <= 0:
        raise ValueError(f"window_days must be > 0, got {window_days}")
    if window_end:
        try:
            end = datetime.fromisoformat(window_end)
        except ValueError:
            raise ValueError(f"window_end {window_end!r} is not an ISO 8601 time") from None
        if end.tzinfo is None:
            raise ValueError(f"window_end {window_end!r} has no time zone (e.g. add 'Z')")
        end = end.astimezone(UTC)
    else:
        end = datetime.now(UTC)
    return end - timedelta(days=window_days), end


def retrieve_features(
    feature_repo: str,
    window_end: str,
    window_days: float,
    eval_fraction: float,
    train_path: str | Path,
    eval_path: str | Path,
) -> dict:
    """Write the window's training table (Feast ``get_historical_features`` through the
    ``deepfm_ranking`` feature service) as ``train_path`` and ``eval_path`` parquet files;
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
    from components.features import retrieve_features

    info = retrieve_features(
        feature_repo, window_end, window_days, eval_fraction, train_data.path, eval_data.path
    )
    for artifact, rows in ((train_data, info["rows_train"]), (eval_data, info["rows_eval"])):
        artifact.metadata.update(
            {"rows": rows, "window_start": info["window_start"], "window_end": info["window_end"]}
        )
    print(info)
    return info["rows_train"]
