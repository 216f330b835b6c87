"""The blessing rule (TFX Evaluator semantics)::

    blessed = auc >= min_auc and (no baseline or auc >= baseline_auc - max_auc_drop)

With no blessed model yet only the threshold applies (TFX's "rubber stamp")."""

import math


def gate(
    auc: float, baseline_auc: float | None, min_auc: float, max_auc_drop: float
) -> tuple[bool, str]:
    """The blessing rule; returns (blessed, a one-line reason). A candidate or blessed AUC
    that is not a finite number is never blessed; a threshold that is not one is a
    ValueError naming it (a NaN threshold would bless anything)."""
    for name, value in (("min_auc", min_auc), ("max_auc_drop", max_auc_drop)):
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if auc is None or not math.isfinite(auc):
        return False, "the candidate's AUC is undefined (one class in the eval data)"
    if baseline_auc is not None and not math.isfinite(baseline_auc):
        return False, "the blessed model's AUC is undefined on the eval data; not comparable"
    if auc < min_auc:
        return False, f"AUC {auc:.4f} is below min_auc {min_auc:.4f}"
    if baseline_auc is None:
        return True, f"AUC {auc:.4f} >= min_auc {min_auc:.4f}; no blessed model to compare"
    if auc < baseline_auc - max_auc_drop:
        return False, (
            f"AUC {auc:.4f} is worse than the blessed model's {baseline_auc:.4f} by more "
            f"than max_auc_drop {max_auc_drop:.4f}"
        )
    return True, (
        f"AUC {auc:.4f} >= min_auc {min_auc:.4f} and within {max_auc_drop:.4f} of the "
        f"blessed model's {baseline_auc:.4f}"
    )
