"""Data validation: Great Expectations suites derived from the feature spec (``suites``),
run over a window's raw sources (``validate``), their outcome (``results``) and the
self-contained HTML report (``report``)."""
