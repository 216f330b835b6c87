"""``common.params``: the one KEY=VALUE parser of ``--set``, ``--param`` and
``--node-selector``."""

import pytest

from common.params import parse_assignments, parse_value


def test_values_are_read_as_yaml():
    assert parse_assignments(
        ["train.batch_size=4096", "model.deep.hidden_units=[32, 16]", "data.timestamp=null"],
        "--set",
    ) == {"train.batch_size": 4096, "model.deep.hidden_units": [32, 16], "data.timestamp": None}
    assert parse_value("1e-3") == 0.001  # YAML 1.1 alone reads a string
    assert parse_value("fast") == "fast"


def test_a_repeated_key_is_an_error_unless_the_last_wins():
    with pytest.raises(ValueError, match="--set 'a=2': a is given twice"):
        parse_assignments(["a=1", "a=2"], "--set")
    assert parse_assignments(["a=1", "b=3", "a=2"], "--set", last_wins=True) == {"a": 2, "b": 3}


def test_untyped_values_stay_strings():
    assert parse_assignments(
        ["lr=0.7", "table=a=b", " name =x", "empty="], "--param", typed=False
    ) == {
        "lr": "0.7",
        "table": "a=b",
        "name": "x",
        "empty": "",
    }


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["lr"], "--param 'lr': expected KEY=VALUE, e.g. --param lr=0.7"),
        (["=1"], "--param '=1': expected KEY=VALUE"),
        ([" =1"], "--param ' =1': expected KEY=VALUE"),
        (["lr=1", "lr=2"], "--param 'lr=2': lr is given twice"),
        (["lr=[1"], "--param 'lr=[1': '[1' is not a YAML value"),
    ],
)
def test_errors_name_the_flag_and_the_item(items, message):
    with pytest.raises(ValueError) as e:
        parse_assignments(items, "--param", example="lr=0.7")
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)
