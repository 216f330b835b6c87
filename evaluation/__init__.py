"""Evaluation: metrics of the candidate and the blessed model on the same rows, the gate,
the report."""
