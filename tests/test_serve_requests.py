"""Requests checked against the feature spec (serving/checks.py), on both example datasets'
specs, with no server: every field a candidate may send is checked for its type, its range
and value set (per element for lists) and, for entity keys, its presence; each refusal is
a 400 naming the candidate and the field (V1) or the tensor and the row (V2), and a valid
request passes unchanged. No column is named here: each comes from the spec.
"""

from __future__ import annotations

import re

import pytest

from feature_repo.spec import REPO_DIR, SPEC_FILE, Feature, FeatureSpec, load_spec
from serving.checks import ABSENT, BAD_REQUEST, TOO_LARGE, RequestChecks, RequestError

SPECS = {
    "sample": REPO_DIR / SPEC_FILE,
    "retail": REPO_DIR / "retail_features.yaml",
}
MAX = 20
V2_TYPES = {"int64": "INT64", "float64": "FP64", "string": "BYTES", "bool": "BOOL"}


@pytest.fixture(scope="module", params=list(SPECS))
def spec(request) -> FeatureSpec:
    return load_spec(SPECS[request.param])


@pytest.fixture(scope="module")
def checks(spec) -> RequestChecks:
    return RequestChecks(spec, max_candidates=MAX)


def scalar(f: Feature):
    """A valid scalar value of column ``f`` (of its elements, for a list)."""
    dtype = f.dtype.removeprefix("list<").removesuffix(">")
    valid = f.valid
    if valid and valid.values:
        return valid.values[-1]
    if dtype == "string":
        return "x"
    if dtype == "bool":
        return True
    low = valid.min if valid and valid.min is not None else 1
    return float(low) if dtype == "float64" else int(low)


def value(f: Feature):
    return [scalar(f)] if f.dtype.startswith("list<") else scalar(f)


def full(spec: FeatureSpec) -> dict:
    """A candidate that sends every column of the spec, valid."""
    return {f.name: value(f) for f in spec.features}


def keys_only(spec: FeatureSpec) -> dict:
    return {k: value(spec.feature(k)) for k in spec.join_keys()}


def refused(call, status: int = BAD_REQUEST) -> str:
    with pytest.raises(RequestError) as e:
        call()
    assert e.value.status == status, str(e.value)
    return str(e.value)


def test_valid_candidates_pass_with_absent_fields_kept_apart_from_nulls(spec, checks):
    nulls = {f.name: None for f in spec.features if f.name not in spec.join_keys()}
    rows = [full(spec), keys_only(spec), keys_only(spec) | nulls]
    batch = checks.v1({"instances": rows})
    assert batch.n == 3 and set(batch.columns) == {f.name for f in spec.features}
    some = next(f.name for f in spec.features if f.name not in spec.join_keys())
    assert batch.columns[some] == [rows[0][some], ABSENT, None]
    assert batch.values(some) == [rows[0][some], None, None]
    assert batch.absent(some) == [False, True, False]
    assert checks.v1(b'{"instances": [%s]}' % str(keys_only(spec)).replace("'", '"').encode()).n


def wrong_type(f: Feature):
    """A JSON value of another type than column ``f`` takes (bools are not numbers)."""
    if f.dtype.startswith("list<"):
        return [scalar(f), {"a": 1}] if f.dtype == "list<string>" else [scalar(f), "1"]
    return {"int64": "1", "float64": "1.5", "string": 7, "bool": 1}[f.dtype]


def out_of_range(f: Feature) -> list[tuple[object, str]]:
    """Values of the right type that the spec's ``valid`` refuses, with the words said."""
    valid, is_list = f.valid, f.dtype.startswith("list<")
    dtype = f.dtype.removeprefix("list<").removesuffix(">")
    out = []
    if valid is None:
        return out
    if valid.values:
        bad = {"string": "no-such-value", "bool": None}.get(dtype)
        if bad is None and dtype != "bool":
            bad = max(valid.values) + 1
        if bad is not None:
            out.append((bad, "is not one of the spec's values"))
    if valid.min is not None:
        low = valid.min - 1 if dtype == "int64" else valid.min - 0.5
        out.append((low, "is below the spec's minimum"))
    if valid.max is not None:
        high = valid.max + 1 if dtype == "int64" else valid.max + 0.5
        out.append((high, "is above the spec's maximum"))
    return [([scalar(f), v] if is_list else v, w) for v, w in out]


def test_every_field_is_checked_for_its_type(spec, checks):
    for f in spec.features:
        row = full(spec) | {f.name: wrong_type(f)}
        message = refused(lambda row=row: checks.v1({"instances": [full(spec), row]}))
        assert message.startswith(f"instances[1].{f.name}: expected "), message


def test_every_range_and_value_set_of_the_spec_is_enforced(spec, checks):
    checked = 0
    for f in spec.features:
        for bad, words in out_of_range(f):
            row = full(spec) | {f.name: bad}
            message = refused(lambda row=row: checks.v1({"instances": [row]}))
            assert message.startswith(f"instances[0].{f.name}: "), message
            assert words in message, message
            if f.dtype.startswith("list<"):
                assert "element 1, " in message
            checked += 1
    assert checked >= 5  # both specs have ranges and value sets


def test_context_features_are_checked_against_their_value_sets(spec, checks):
    context = [f for f in spec.context_features() if f.valid and f.valid.values]
    assert context, "both example specs have a context feature with a value set"
    for f in context:
        message = refused(
            lambda f=f: checks.v1({"instances": [keys_only(spec) | {f.name: "bogus"}]})
        )
        assert re.match(rf"instances\[0\]\.{f.name}: \"bogus\" is not one of", message)


def test_entity_keys_are_required_and_nothing_unknown_passes(spec, checks):
    for key in spec.join_keys():
        for row in ({k: v for k, v in keys_only(spec).items() if k != key},
                    keys_only(spec) | {key: None}):  # fmt: skip
            message = refused(lambda row=row: checks.v1({"instances": [keys_only(spec), row]}))
            assert message == f"instances[1].{key}: required (an entity key)"
    message = refused(lambda: checks.v1({"instances": [keys_only(spec) | {"zz_unknown": 1}]}))
    assert message.startswith("instances[0]: unknown field 'zz_unknown' (known: ")


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        ([1, 2], BAD_REQUEST, r'^expected a JSON object \{"instances"'),
        ({"inputs": []}, BAD_REQUEST, r'^expected a JSON object \{"instances"'),
        ("not json", BAD_REQUEST, r"^the body is not valid JSON"),
        (b"\xff", BAD_REQUEST, r"^the body is not valid JSON"),
        (b'{"instances": [NaN]}', BAD_REQUEST, r"^the body is not valid JSON"),
        (b"[" * 5000 + b"]" * 5000, BAD_REQUEST, r"^the body is not valid JSON"),
        ({"instances": {}}, BAD_REQUEST, r"^instances: expected a list, got an object"),
        ({"instances": []}, BAD_REQUEST, r"^instances: empty"),
        ({"instances": [{}, 7]}, BAD_REQUEST, r"^instances\[1\]: expected an object"),
        ({"instances": [{}] * (MAX + 1)}, TOO_LARGE, r"^instances: 21 candidates, more than"),
    ],
)
def test_malformed_v1_bodies(checks, payload, status, message):
    assert re.search(message, refused(lambda: checks.v1(payload), status))


def test_numbers_beyond_their_types_are_refused(spec, checks):
    ints = [f for f in spec.features if f.dtype == "int64"]
    floats = [f for f in spec.features if f.dtype == "float64"]
    assert ints and floats
    for f, bad in [(ints[0], 2**63), (ints[0], True), (floats[0], 10**400), (floats[0], False)]:
        message = refused(
            lambda f=f, bad=bad: checks.v1({"instances": [full(spec) | {f.name: bad}]})
        )
        assert message.startswith(f"instances[0].{f.name}: expected "), message


def v2(spec: FeatureSpec, rows: list[dict]) -> list[tuple]:
    names = [n for n in rows[0] if not spec.feature(n).dtype.startswith("list<")]
    return [(n, [len(rows)], V2_TYPES[spec.feature(n).dtype], [r[n] for r in rows]) for n in names]


def test_v2_tensors_get_the_same_checks_naming_tensor_and_row(spec, checks):
    rows = [full(spec), full(spec)]
    batch = checks.v2(v2(spec, rows))
    assert batch.n == 2
    scalars = [f for f in spec.features if not f.dtype.startswith("list<")]
    assert set(batch.columns) == {f.name for f in scalars}
    for j, f in enumerate(scalars):
        for bad, words in out_of_range(f):
            tensors = v2(spec, [rows[0], rows[1] | {f.name: bad}])
            message = refused(lambda t=tensors: checks.v2(t))
            assert message.startswith(f"inputs[{j}] ({f.name}).data[1]: "), message
            assert words in message
        tensors = v2(spec, rows)
        tensors[j] = (f.name, [2], tensors[j][2], [value(f), wrong_type(f)])
        message = refused(lambda t=tensors: checks.v2(t))
        assert message.startswith(f"inputs[{j}] ({f.name}).data[1]: expected "), message
    key = next(iter(spec.join_keys()))
    without_key = [t for t in v2(spec, rows) if t[0] != key]
    assert refused(lambda: checks.v2(without_key)) == f"inputs: no tensor {key!r} (an entity key)"
    many = v2(spec, [full(spec)] * (MAX + 1))
    assert "more than the limit" in refused(lambda: checks.v2(many), TOO_LARGE)


def test_v2_metadata_lists_the_scalar_columns(spec, checks):
    inputs = checks.v2_inputs()
    assert [i["name"] for i in inputs] == [
        f.name for f in spec.features if not f.dtype.startswith("list<")
    ]
    assert all(i["shape"] == [-1] and i["datatype"] in V2_TYPES.values() for i in inputs)
