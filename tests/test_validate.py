"""Tests of step 1, validate (validation/, components/validate.py): the clean
sample passes, each kind of bad raw data it claims to catch fails with a message naming
the source, the column and the expectation, the suites follow the feature spec, and the
report is written either way."""

import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from kfp.dsl import HTML, Metrics
from test_datasets import DATASETS, make_repo

from components.validate import require_valid_data, validate
from feature_repo.sample_data import generate
from feature_repo.spec import DATA_DIR_ENV, REPO_DIR, SPEC_FILE, load_spec
from validation.report import self_contained
from validation.results import DataValidationError
from validation.suites import build_suites
from validation.validate import (
    as_spec_dtypes,
    read_sources,
    validate_frames,
    validate_sources,
    validate_window,
)

START, END = "2026-11-01T00:00:00Z", "2026-11-09T00:00:00Z"  # the sample's 8-day window
# Names come from the project's spec (the sample's); each is known here by its role.
SPEC = load_spec()
SOURCES = tuple(SPEC.sources)
EVENTS, LABEL = SPEC.entity_rows, SPEC.label.name
USER, AD_ENTITY = SPEC.entities  # the entity of the first view (profiles), of the second (ads)
USER_KEY = SPEC.entities[USER].join_key
(PROFILE_VIEW,) = (v.name for v in SPEC.feature_views.values() if v.entity == USER)
(AD_VIEW,) = (v.name for v in SPEC.feature_views.values() if v.entity == AD_ENTITY)
PROFILE, ADS = SPEC.feature_views[PROFILE_VIEW].source, SPEC.feature_views[AD_VIEW].source
TS = {name: source.timestamp_field for name, source in SPEC.sources.items()}
PROFILE_FEATURES = SPEC.view_features(PROFILE_VIEW)
(LIST_COL,) = (f for f in PROFILE_FEATURES if f.dtype.startswith("list"))
RANGED = next(f for f in PROFILE_FEATURES if f.valid and None not in (f.valid.min, f.valid.max))
IN_SET = next(f for f in PROFILE_FEATURES if f.dtype == "int64" and f.valid and f.valid.values)
(CONTEXT,) = (f.name for f in SPEC.context_features())
(PRICE,) = (f.name for f in SPEC.view_features(AD_VIEW) if f.dtype == "float64")
DROPPED = [f.name for f in PROFILE_FEATURES if f.dtype == "int64"][-1]


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    """The sample data set, generated once: every impression is in [START, END)."""
    out = tmp_path_factory.mktemp("sample")
    generate(5_000, seed=0, out_dir=out, start="2026-11-01", days=8)
    return out


@pytest.fixture
def repo(sample, tmp_path, monkeypatch) -> Path:
    """A feature repo of this test's own: the spec and a copy of the sample sources."""
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    shutil.copy(REPO_DIR / SPEC_FILE, repo / SPEC_FILE)
    for name in SOURCES:
        shutil.copy(sample / f"{name}.parquet", repo / "data" / f"{name}.parquet")
    return repo


def edit(repo: Path, source: str, change) -> None:
    """Rewrite ``source``'s file as ``change(dataframe)``."""
    path = repo / "data" / f"{source}.parquet"
    change(pd.read_parquet(path)).to_parquet(path, index=False)


def run(repo: Path, start: str = START, end: str = END, **kw):
    return validate_sources(repo, start, end, repo.parent / "docs", **kw)


def failure_line(error: DataValidationError, source: str, column: str, expectation: str) -> str:
    """The message's line for that failed expectation (one per line after the header)."""
    lines = str(error).splitlines()
    found = [
        line
        for line in lines[1:]
        if line.strip().startswith(f"{source}: ") and column in line and expectation in line
    ]
    assert found, f"no line names {source}, {column}, {expectation} in:\n{error}"
    return found[0]


def fails(repo: Path, source: str, column: str, expectation: str, **kw) -> str:
    with pytest.raises(DataValidationError) as info:
        run(repo, **kw)
    return failure_line(info.value, source, column, expectation)


# ----------------------------------------------------------------------- clean data


def test_the_clean_sample_passes_every_source(repo):
    summary = run(repo)
    assert summary.success and summary.failures == []
    assert set(summary.sources) == set(SOURCES)
    for name, result in summary.sources.items():
        assert result.rows > 0, name
        assert result.evaluated == result.successful > 10, name
        assert result.failed == 0, name
    assert summary.sources[EVENTS].rows == 5_000
    assert summary.index.is_file()
    assert set(summary.pages) == {*SOURCES, f"{PROFILE}.{LIST_COL.name}"}
    assert all(page.is_file() for page in summary.pages.values())


# ------------------------------------------------------------ one test per bad input


def test_a_missing_column(repo):
    edit(repo, PROFILE, lambda df: df.drop(columns=DROPPED))
    line = fails(repo, PROFILE, DROPPED, "expect_table_columns_to_match_set")
    assert f"missing: {DROPPED}" in line


def test_an_extra_column(repo):
    edit(repo, ADS, lambda df: df.assign(discount=0.1))
    line = fails(repo, ADS, "discount", "expect_table_columns_to_match_set")
    assert "unexpected: discount" in line


def test_a_wrong_type(repo):
    edit(repo, ADS, lambda df: df.assign(**{PRICE: df[PRICE].astype(str)}))
    line = fails(repo, ADS, PRICE, "expect_column_values_to_be_of_type float")
    assert "values unexpected, e.g. '" in line  # the strings found


def test_a_timestamp_without_time_zone(repo):
    edit(
        repo,
        EVENTS,
        lambda df: df.assign(**{TS[EVENTS]: df[TS[EVENTS]].dt.tz_localize(None)}),
    )
    line = fails(repo, EVENTS, TS[EVENTS], "expect_column_values_to_be_of_type")
    assert "observed datetime64" in line


def test_a_null_in_a_non_nullable_column(repo):
    edit(repo, PROFILE, lambda df: df.assign(**{USER_KEY: df[USER_KEY].where(df.index != 7)}))
    line = fails(repo, PROFILE, USER_KEY, "expect_column_values_to_not_be_null")
    assert "1 of" in line


def test_a_null_timestamp(repo):
    edit(
        repo,
        ADS,
        lambda df: df.assign(**{TS[ADS]: df[TS[ADS]].where(df.index != 3)}),
    )
    fails(repo, ADS, TS[ADS], "expect_column_values_to_not_be_null")


def test_a_value_out_of_its_range(repo):
    low, high = RANGED.valid.min, RANGED.valid.max
    bad = high + 3
    edit(
        repo,
        PROFILE,
        lambda df: df.assign(**{RANGED.name: df[RANGED.name].where(df.index != 3, bad)}),
    )
    between = f"expect_column_values_to_be_between [{low}, {high}]"
    line = fails(repo, PROFILE, RANGED.name, between)
    assert "1 of" in line and line.endswith(f"e.g. {bad}")


@pytest.mark.parametrize(
    ("source", "column", "bad", "shown"),
    [
        (PROFILE, IN_SET.name, max(IN_SET.valid.values) + 1, str(max(IN_SET.valid.values) + 1)),
        (EVENTS, CONTEXT, "no_such_value", "'no_such_value'"),
    ],
)
def test_a_value_outside_its_set(repo, source, column, bad, shown):
    edit(repo, source, lambda df: df.assign(**{column: df[column].where(df.index != 0, bad)}))
    line = fails(repo, source, column, "expect_column_values_to_be_in_set")
    assert f"e.g. {shown}" in line


def test_a_bad_element_of_a_list(repo):
    def negative(df):
        df.at[2, LIST_COL.name] = np.array([5, -1])
        return df

    assert LIST_COL.valid.min > -1
    edit(repo, PROFILE, negative)
    between = f"expect_column_values_to_be_between [{LIST_COL.valid.min}, ]"
    line = fails(repo, PROFILE, LIST_COL.name, between)
    assert "(each element)" in line and "e.g. -1" in line


def test_a_label_that_is_not_0_or_1(repo):
    edit(repo, EVENTS, lambda df: df.assign(**{LABEL: df[LABEL].where(df.index != 0, 2)}))
    line = fails(repo, EVENTS, LABEL, "expect_column_values_to_be_in_set {0, 1}")
    assert "e.g. 2" in line


def with_copies(df: pd.DataFrame, rows: int, stamp) -> pd.DataFrame:
    """``df`` plus copies of its first ``rows`` rows, their timestamp moved by ``stamp`` (a
    Timedelta) or replaced by it (a Timestamp, or NaT)."""
    copies = df.head(rows).copy()
    column = next(c for c in TS.values() if c in df.columns)
    ts = copies[column]
    moved = isinstance(stamp, pd.Timedelta)
    copies[column] = ts + stamp if moved else pd.Series(stamp, ts.index, ts.dtype)
    return pd.concat([df, copies], ignore_index=True)


def test_the_reader_keeps_what_the_run_can_use(repo):
    # events outside the window are other runs' data; feature versions after the window
    # end cannot be joined to its events; null timestamps are kept (their suites fail)
    edit(repo, EVENTS, lambda df: with_copies(df, 10, pd.Timedelta(days=9)))
    edit(repo, PROFILE, lambda df: with_copies(df, 1, pd.Timedelta(days=60)))
    edit(repo, ADS, lambda df: with_copies(df, 1, pd.NaT))
    frames = read_sources(load_spec(repo / SPEC_FILE), repo, START, END)
    dropped = {EVENTS: 10, PROFILE: 1, ADS: 0}
    for name in SOURCES:
        original = pd.read_parquet(repo / "data" / f"{name}.parquet")
        assert list(frames[name].columns) == list(original.columns)
        assert len(frames[name]) == len(original) - dropped[name]
    assert frames[EVENTS][TS[EVENTS]].between(START, END, inclusive="left").all()
    assert (frames[PROFILE][TS[PROFILE]] <= pd.Timestamp(END)).all()
    assert frames[ADS][TS[ADS]].isna().sum() == 1


def unread(repo: Path, source: str, change) -> DataValidationError:
    """Validate the window's frames with ``source`` replaced by ``change(its whole file)``,
    as if a reader had ignored the window; returns the error."""
    spec = load_spec(repo / SPEC_FILE)
    frames = read_sources(spec, repo, START, END)
    frames[source] = change(pd.read_parquet(repo / "data" / f"{source}.parquet"))
    with pytest.raises(DataValidationError) as info:
        validate_frames(spec, frames, START, END, repo.parent / "docs")
    return info.value


def test_events_outside_the_window(repo):
    error = unread(repo, EVENTS, lambda df: with_copies(df, 10, pd.Timedelta(days=9)))
    line = failure_line(error, EVENTS, TS[EVENTS], "_to_be_between [2026-11-01")
    assert "10 of 5010 values unexpected" in line and "2026-11-1" in line


def test_a_feature_row_after_the_window_end(repo):
    error = unread(
        repo,
        PROFILE,
        lambda df: with_copies(df, 1, pd.Timestamp("2026-11-10", tz="UTC")),
    )
    line = failure_line(error, PROFILE, TS[PROFILE], "_to_be_between [, 2026-11-09")
    assert "1 of" in line and "e.g. 2026-11-10" in line


@pytest.mark.parametrize(
    ("window", "min_rows", "observed"),
    [(("2026-12-01T00:00:00Z", "2026-12-09T00:00:00Z"), 1, 0), ((START, END), 6_000, 5_000)],
    ids=["an empty window", "fewer than min_rows"],
)
def test_too_few_rows(repo, window, min_rows, observed):
    line = fails(
        repo,
        EVENTS,
        "(table)",
        "expect_table_row_count_to_be_between",
        start=window[0],
        end=window[1],
        min_rows=min_rows,
    )
    assert line.endswith(f"observed {observed}")


def test_duplicate_profile_versions(repo):
    edit(repo, PROFILE, lambda df: pd.concat([df, df.iloc[[4]]], ignore_index=True))
    line = fails(
        repo, PROFILE, f"{USER_KEY}, {TS[PROFILE]}", "expect_compound_columns_to_be_unique"
    )
    assert "2 of" in line


def test_a_missing_source_file(repo, tmp_path):
    (repo / "data" / f"{ADS}.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=f"source '{ADS}'.*{ADS}.parquet"):
        run(repo)
    # the component's report says why, too
    report = tmp_path / "report.html"
    with pytest.raises(FileNotFoundError):
        validate_window(str(repo), END, 8.0, report)
    assert f"{ADS}.parquet does not exist" in report.read_text()


# ------------------------------------------------------------- report and the spec


def test_data_docs_are_written_on_failure(repo):
    bad = max(IN_SET.valid.values) + 1
    edit(
        repo,
        PROFILE,
        lambda df: df.assign(**{IN_SET.name: df[IN_SET.name].where(df.index != 0, bad)}),
    )
    with pytest.raises(DataValidationError) as info:
        run(repo)
    summary = info.value.summary
    assert not summary.success and summary.sources[PROFILE].failed == 1
    assert summary.index.is_file()
    page = summary.pages[PROFILE].read_text()
    assert IN_SET.name in page and "Failed" in page


def test_the_suites_follow_the_spec(tmp_path):
    spec = load_spec()
    suites = build_suites(spec, pd.Timestamp(START), pd.Timestamp(END))
    for source in SOURCES:
        checked = {
            (e.expectation_type, e.configuration.kwargs.get("column"))
            for e in suites[source].expectations
        }
        columns = {*spec.source_columns(source), spec.sources[source].timestamp_field}
        assert {c for t, c in checked if t == "expect_column_values_to_be_of_type"} == columns
        assert {c for t, c in checked if t == "expect_column_values_to_not_be_null"} == columns
    # one feature with a range added to the spec -> its expectations appear, nothing else changes
    data = yaml.safe_load((REPO_DIR / SPEC_FILE).read_text())
    data["features"].append(
        {"name": "rating", "view": AD_VIEW, "dtype": "float64", "valid": {"min": 0, "max": 5}}
    )
    (tmp_path / SPEC_FILE).write_text(yaml.safe_dump(data))
    wider = build_suites(load_spec(tmp_path / SPEC_FILE), pd.Timestamp(START), pd.Timestamp(END))

    def described(suite) -> set:
        return {(e.expectation_type, repr(e.configuration.kwargs)) for e in suite.expectations}

    added = described(wider[ADS]) - described(suites[ADS])
    assert {t for t, _ in added} == {
        "expect_column_values_to_be_of_type",
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_between",
        "expect_table_columns_to_match_set",
    }
    (between,) = (
        e
        for e in wider[ADS].expectations
        if "rating" in repr(e.configuration.kwargs) and e.expectation_type.endswith("between")
    )
    assert (between.min_value, between.max_value) == (0, 5)
    for source in (EVENTS, PROFILE):
        assert described(wider[source]) == described(suites[source])


# ------------------------------------------------------------- a report without network


class _References(HTMLParser):
    """The URLs a page would fetch or lead to, the pages in its ``iframe srcdoc`` included:
    src=/href=/... values and CSS url()/@import of http(s) or protocol-relative URLs."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self.iframes = 0

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            value = value or ""
            if key == "srcdoc":
                self.iframes += 1
                inner = _References()
                inner.feed(value)
                self.urls += inner.urls
            elif key in ("src", "href", "srcset", "xlink:href", "data", "action", "poster"):
                if re.match(r"\s*(https?:)?//", value, re.I):
                    self.urls.append(value)
            elif key == "style":
                self.handle_data(value)

    def handle_data(self, data):
        css = r"(?:url\(\s*['\"]?|@import\s+['\"]?)\s*((?:https?:)?//[^'\")\s;]+)"
        self.urls += re.findall(css, data, re.I)


def external_references(page: str) -> list[str]:
    parser = _References()
    parser.feed(page)
    return parser.urls


DATA_DOCS_LIKE = """<!DOCTYPE html><html><head><title>t</title>
<link rel="stylesheet" href="https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css"/>
<link rel="shortcut icon" href="../static/images/favicon.ico" type="image/x-icon"/>
<style>.brand a{background:url('https://assets.example/logo.png') 0 0 no-repeat}
@import url("//fonts.example/f.css");</style>
<script src="https://code.jquery.com/jquery-3.7.1.min.js"></script>
<script>if (a < b && c) { $(".x").modal(); }</script>
</head><body><nav><a href="../index.html"><img src="https://assets.example/logo-long.png"
alt="GX"/></a></nav><div style="background-image:url(https://x.example/b.png)">
<a href="#section-1">Overview</a> <a href="https://greatexpectations.io/news">news</a>
<label onclick="hide()">Failed Only</label>
<table><tr><td><i class="fas fa-check-circle text-success"></i></td><td>label &amp; 1 &#8805; 0</td>
</tr></table></div></body></html>"""


def test_the_reference_check_finds_what_a_data_docs_page_loads():
    refs = external_references(DATA_DOCS_LIKE)
    # the stylesheet, the script, the logo, the news link, 3 CSS url()s (@import's too);
    # the favicon's relative path is no network reference
    assert len(refs) == 7
    quoted = DATA_DOCS_LIKE.replace('"', "&quot;")
    assert len(external_references(f'<iframe srcdoc="{quoted}"></iframe>')) == 7


def test_a_data_docs_page_made_self_contained():
    page = self_contained(DATA_DOCS_LIKE)
    assert external_references(page) == []
    assert "<script" not in page and "<link" not in page and "onclick" not in page
    assert "logo" not in page and "../" not in page  # relative paths do not resolve either
    # the content, entities and in-page links stay; an inline stylesheet replaces bootstrap
    assert '<a href="#section-1">Overview</a>' in page and ">news</a>" in page
    assert "label &amp; 1 &#8805; 0" in page and "Failed Only" in page
    assert re.search(r"<style>[^<]*fa-check-circle::before[^<]*</style></head>", page)


# ------------------------------------------------------------------ the KFP component


def test_the_component_passes_a_clean_sample(repo, tmp_path):
    metrics, report = Metrics(uri=str(tmp_path / "metrics")), HTML(uri=str(tmp_path / "report"))
    out = validate.python_func(
        feature_repo=str(repo), window_end=END, window_days=8.0, metrics=metrics, report=report
    )
    assert out.passed is True and out.failures == ""
    require_valid_data.python_func(passed=out.passed, failures=out.failures)  # no error
    assert metrics.metadata["passed"] == 1.0
    assert metrics.metadata[f"{EVENTS}_rows"] == 5_000
    assert metrics.metadata[f"{PROFILE}_failed"] == 0
    # written as report.html, the URI KFP records
    assert report.uri == str(tmp_path / "report.html") and report.path == report.uri
    assert not (tmp_path / "report").exists()
    page = Path(report.path).read_text()
    assert "Data validation passed" in page
    assert page.count("<iframe") == 4  # the three sources and the list column's elements
    # the Data Docs pages inlined load nothing from the network (they did: bootstrap, ...)
    parser = _References()
    parser.feed(page)
    assert parser.iframes == 4 and parser.urls == []
    assert "values must belong to this set" in page  # the expectations are still there


def test_a_failed_validation_keeps_its_report_and_stops_the_run(repo, tmp_path):
    edit(repo, EVENTS, lambda df: df.assign(**{LABEL: df[LABEL].where(df.index != 0, 2)}))
    metrics, report = Metrics(uri=str(tmp_path / "metrics")), HTML(uri=str(tmp_path / "report"))
    out = validate.python_func(
        feature_repo=str(repo), window_end=END, window_days=8.0, metrics=metrics, report=report
    )
    assert report.uri.endswith("/report.html")
    # the validate step itself succeeds, so Kubeflow uploads its report and metrics ...
    assert out.passed is False
    assert f"{EVENTS}: {LABEL}: expect_column_values_to_be_in_set" in out.failures
    page = Path(report.path).read_text()
    assert "Data validation FAILED" in page and external_references(page) == []
    assert f"{EVENTS}: {LABEL}: expect_column_values_to_be_in_set {{0, 1}}" in page
    assert metrics.metadata["passed"] == 0.0 and metrics.metadata[f"{EVENTS}_failed"] == 1
    # ... and the next step fails the run, listing each failed expectation
    with pytest.raises(RuntimeError, match=f"(?s)data validation failed.*{EVENTS}: {LABEL}"):
        require_valid_data.python_func(passed=out.passed, failures=out.failures)


# ------------------------------------------------------------- types as users have them

TYPED_SPEC = """
label: {name: bought, dtype: int64, valid: {values: [0, 1]}}
entities:
  shopper: {join_key: shopper_id}
sources:
  visits: {path: visits.parquet, timestamp_field: ts}
  shoppers: {path: shoppers.parquet, timestamp_field: ts}
entity_rows: visits
feature_views:
  profile: {source: shoppers, entity: shopper, ttl_days: 30}
feature_service: ranking
features:
  - {name: shopper_id, source: visits, dtype: string}
  - {name: channel, source: visits, dtype: string, valid: {values: [web, app]}}
  - {name: age, view: profile, dtype: int64, nullable: true, valid: {min: 0, max: 120}}
  - {name: member, view: profile, dtype: bool, nullable: true}
  - {name: score, view: profile, dtype: float64, nullable: true, valid: {min: 0}}
  - {name: tags, view: profile, dtype: list<string>, nullable: true, valid: {values: [a, b, c]}}
  - {name: codes, view: profile, dtype: list<int64>, valid: {min: 1}}
"""


def typed_frames() -> dict[str, pd.DataFrame]:
    """Clean data of TYPED_SPEC as a user's pandas code would write it: nullable ints and
    bools, string ids, NaN floats, list cells with None and empty lists, zoned timestamps."""
    ts = pd.to_datetime(["2026-11-02", "2026-11-03", "2026-11-04", "2026-11-05"], utc=True)
    visits = pd.DataFrame(
        {
            "shopper_id": ["c001", "c002", "c003", "c001"],
            "channel": ["web", "app", "web", "app"],
            "ts": ts,
            "bought": [0, 1, 0, 1],
        }
    )
    shoppers = pd.DataFrame(
        {
            "shopper_id": ["c001", "c002", "c003"],
            "age": pd.array([31, None, 45], dtype="Int64"),
            "member": pd.array([True, None, False], dtype="boolean"),
            "score": [0.5, np.nan, None],
            "tags": [["a", "b"], None, []],
            "codes": [[1, 2], [3], []],
            "ts": ts[:3] - pd.Timedelta(days=1),
        }
    )
    return {"visits": visits, "shoppers": shoppers}


@pytest.fixture
def typed(tmp_path, monkeypatch) -> Path:
    """A feature repo of TYPED_SPEC with typed_frames() as its parquet sources."""
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    repo = tmp_path / "typed"
    (repo / "data").mkdir(parents=True)
    (repo / SPEC_FILE).write_text(TYPED_SPEC)
    for name, frame in typed_frames().items():
        frame.to_parquet(repo / "data" / f"{name}.parquet", index=False)
    return repo


def test_typed_sources_are_read_as_one_pandas_dtype_per_spec_dtype_and_pass(typed):
    spec = load_spec(typed / SPEC_FILE)
    frames = read_sources(spec, typed, START, END)
    shoppers = frames["shoppers"]
    assert str(shoppers["age"].dtype) == "Int64" and shoppers["age"].isna().sum() == 1
    assert str(shoppers["member"].dtype) == "boolean"
    assert str(shoppers["score"].dtype) == "float64" and shoppers["score"].isna().sum() == 2
    assert str(frames["visits"]["shopper_id"].dtype) == "string"
    assert shoppers["tags"].tolist() == [["a", "b"], None, []]
    summary = run(typed)
    assert summary.success and summary.failures == []
    assert set(summary.pages) == {"visits", "shoppers", "shoppers.tags", "shoppers.codes"}


@pytest.mark.parametrize(
    "as_read",
    [
        lambda s: s.astype("float64"),  # pandas' default read of a parquet int with nulls
        lambda s: s.astype("Int64"),  # dtype_backend="numpy_nullable"
        lambda s: s.astype(object),  # Python ints and None
        lambda s: s.astype("int64[pyarrow]"),  # dtype_backend="pyarrow"
    ],
    ids=["float64", "Int64", "object", "pyarrow"],
)
def test_a_nullable_int_column_passes_however_it_was_read(typed, as_read):
    spec = load_spec(typed / SPEC_FILE)
    frames = typed_frames()
    frames["shoppers"]["age"] = as_read(frames["shoppers"]["age"])
    assert validate_frames(spec, frames, START, END, typed.parent / "docs").success


def test_a_null_int_fails_when_the_column_is_not_nullable(typed):
    spec = (
        (typed / SPEC_FILE)
        .read_text()
        .replace("nullable: true, valid: {min: 0, max", "valid: {min: 0, max")
    )
    (typed / SPEC_FILE).write_text(spec)
    line = fails(typed, "shoppers", "age", "expect_column_values_to_not_be_null")
    assert "1 of 3" in line


def test_an_int_column_with_a_fraction_or_a_string_names_the_value(typed):
    spec = load_spec(typed / SPEC_FILE)
    frames = typed_frames()
    frames["shoppers"]["age"] = [31.0, 2.5, np.nan]
    with pytest.raises(DataValidationError) as info:
        validate_frames(spec, frames, START, END, typed.parent / "docs")
    line = failure_line(info.value, "shoppers", "age", "expect_column_values_to_be_of_type int")
    assert "1 of 3 values unexpected, e.g. 2.5" in line  # 31.0 passes as 31, NaN as null
    frames["shoppers"]["age"] = pd.Series([31, "abc", None], dtype=object)
    with pytest.raises(DataValidationError) as info:
        validate_frames(spec, frames, START, END, typed.parent / "docs")
    line = failure_line(info.value, "shoppers", "age", "expect_column_values_to_be_of_type int")
    assert "1 of 3 values unexpected, e.g. 'abc'" in line


@pytest.mark.parametrize(
    "member",
    [
        pd.Series([True, None, False], dtype=object),  # Python bools from records
        pd.Series([True, False, True]),  # numpy bool
        pd.Series([True, None, False], dtype="bool[pyarrow]"),
    ],
    ids=["object", "numpy", "pyarrow"],
)
def test_a_bool_column_passes_as_bools(typed, member):
    spec = load_spec(typed / SPEC_FILE)
    frames = typed_frames()
    frames["shoppers"]["member"] = member
    assert validate_frames(spec, frames, START, END, typed.parent / "docs").success


def test_a_bool_column_of_other_values_fails_naming_it(typed):
    edit(typed, "shoppers", lambda df: df.assign(member=["yes", "no", None]))
    line = fails(typed, "shoppers", "member", "expect_column_values_to_be_of_type bool")
    assert "e.g. 'yes', 'no'" in line
    edit(typed, "shoppers", lambda df: df.assign(member=[1, 0, 1]))
    fails(typed, "shoppers", "member", "expect_column_values_to_be_of_type bool")


def test_a_string_id_column(typed):
    # object or string dtype alike; numbers are no string ids, nor is a null key
    spec = load_spec(typed / SPEC_FILE)
    frames = typed_frames()
    frames["visits"]["shopper_id"] = frames["visits"]["shopper_id"].astype("string")
    assert validate_frames(spec, frames, START, END, typed.parent / "docs").success
    edit(typed, "visits", lambda df: df.assign(shopper_id=[1, 2, 3, 1]))
    line = fails(typed, "visits", "shopper_id", "expect_column_values_to_be_of_type str")
    assert "4 of 4 values unexpected, e.g. 1, 2, 3" in line
    edit(typed, "visits", lambda df: df.assign(shopper_id=["c001", None, "c003", "c001"]))
    fails(typed, "visits", "shopper_id", "expect_column_values_to_not_be_null")


def test_a_float_with_missing_values(typed):
    # NaN and None are both missing: allowed when nullable, named when not
    assert run(typed).success
    spec = (
        (typed / SPEC_FILE)
        .read_text()
        .replace("nullable: true, valid: {min: 0}", "valid: {min: 0}")
    )
    (typed / SPEC_FILE).write_text(spec)
    line = fails(typed, "shoppers", "score", "expect_column_values_to_not_be_null")
    assert "2 of 3" in line


def test_a_list_of_strings(typed):
    spec = load_spec(typed / SPEC_FILE)
    frames = typed_frames()
    frames["shoppers"]["tags"] = [np.array(["a", "z"], dtype=object), ["b", None], [7]]
    with pytest.raises(DataValidationError) as info:
        validate_frames(spec, frames, START, END, typed.parent / "docs")
    for expectation, example in [
        ("expect_column_values_to_be_in_set {'a', 'b', 'c'}", "e.g. 'z'"),
        ("expect_column_values_to_not_be_null", "1 of 5"),
        ("expect_column_values_to_be_of_type str", "1 of 5 values unexpected, e.g. 7"),
    ]:
        line = failure_line(info.value, "shoppers", "tags", expectation)
        assert "(each element)" in line and example in line


def test_a_list_column_given_a_scalar_fails_its_type(typed):
    spec = load_spec(typed / SPEC_FILE)
    frames = typed_frames()
    frames["shoppers"]["codes"] = pd.Series([[1, 2], 5, [3]], dtype=object)
    with pytest.raises(DataValidationError) as info:
        validate_frames(spec, frames, START, END, typed.parent / "docs")
    line = failure_line(info.value, "shoppers", "codes", "expect_column_values_to_be_of_type list")
    assert "1 of 3 values unexpected, e.g. 5" in line


def test_a_timezone_naive_timestamp_fails_naming_it(typed):
    edit(typed, "visits", lambda df: df.assign(ts=df["ts"].dt.tz_localize(None)))
    line = fails(typed, "visits", "ts", "expect_column_values_to_be_of_type Timestamp")
    assert "observed datetime64" in line


def test_as_spec_dtypes_leaves_what_does_not_fit_as_python_values():
    frame = pd.DataFrame(
        {
            "i": [1.0, np.nan, 3.0],
            "f": pd.array([1.5, None, 2.0], dtype="Float64"),
            "b": pd.Series([True, None, False], dtype=object),
            "s": pd.Series(["x", None, "y"], dtype=object),
            "l": [np.array([1, 2]), None, np.array([], dtype=np.int64)],
            "bad": [1.0, 1.5, np.nan],
            "t": pd.to_datetime(["2026-01-01"] * 3),
        }
    )
    columns = {"i": "int64", "f": "float64", "b": "bool", "s": "string", "l": "list<int64>"}
    out = as_spec_dtypes(frame, {**columns, "bad": "int64"})
    assert [str(out[c].dtype) for c in columns] == [
        "Int64",
        "float64",
        "boolean",
        "string",
        "object",
    ]
    assert out["l"].tolist() == [[1, 2], None, []]
    assert out["bad"].tolist() == [1, 1.5, None]  # an object column: GX names 1.5
    assert out["t"] is frame["t"] or out["t"].equals(frame["t"])  # not named: left as it is
    assert str(frame["i"].dtype) == "float64"  # the input is not changed


# ------------------------------------------------------------- either example dataset


@pytest.fixture(scope="module", params=DATASETS)
def example(request, tmp_path_factory) -> Path:
    """A feature repo of each example dataset, as `deepfm data generate` writes it."""
    return make_repo(request.param, tmp_path_factory.mktemp(request.param), rows=3_000)


def test_each_kind_of_bad_data_is_named_on_either_dataset(example, tmp_path, monkeypatch):
    """The same bad inputs, chosen by their role in the dataset's own spec: a label outside
    its values, a string outside its set, a number out of its range, a null join key, a
    missing column; one run names every one."""
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    repo = shutil.copytree(example, tmp_path / "repo")
    spec = load_spec(repo / SPEC_FILE)
    events, label = spec.entity_rows, spec.label.name
    first_view, *_, last_view = spec.feature_views.values()
    profiles, last = first_view.source, last_view.source
    key = spec.entities[first_view.entity].join_key
    valued = next(f for f in spec.features if f.dtype == "string" and f.valid and f.valid.values)
    ranged = next(
        f for f in spec.view_features(first_view.name) if f.dtype == "int64" and f.valid.max
    )
    dropped = spec.view_features(last_view.name)[-1].name
    assert valued.name not in (key, label, dropped) and ranged.name != key

    def change(source: str, column: str, bad):
        def edit_rows(df: pd.DataFrame) -> pd.DataFrame:
            return df.assign(**{column: df[column].where(df.index != 3, bad)})

        edit(repo, source, edit_rows)

    change(events, label, 2)
    change(valued.source, valued.name, "no_such_value")
    change(profiles, ranged.name, ranged.valid.max + 3)
    change(profiles, key, None)
    edit(repo, last, lambda df: df.drop(columns=dropped))
    ts = pd.read_parquet(spec.source_path(events, repo))[spec.timestamp]
    with pytest.raises(DataValidationError) as info:
        validate_sources(repo, ts.min(), ts.max() + pd.Timedelta(seconds=1), tmp_path / "docs")

    def line(source, column, expectation):
        return failure_line(info.value, source, column, expectation)

    assert line(events, label, "expect_column_values_to_be_in_set {0, 1}").endswith("e.g. 2")
    in_set = line(valued.source, valued.name, "expect_column_values_to_be_in_set")
    assert "e.g. 'no_such_value'" in in_set
    bounds = f"[{ranged.valid.min}, {ranged.valid.max}]"
    between = line(profiles, ranged.name, f"expect_column_values_to_be_between {bounds}")
    assert between.endswith(f"e.g. {ranged.valid.max + 3}")
    assert "1 of" in line(profiles, key, "expect_column_values_to_not_be_null")
    assert f"missing: {dropped}" in line(last, dropped, "expect_table_columns_to_match_set")
