"""The run's time window: where it ends and how many days it covers."""

from datetime import UTC, datetime, timedelta


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
