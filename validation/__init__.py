"""Data validation: Great Expectations suites derived from the feature spec, and their report."""
