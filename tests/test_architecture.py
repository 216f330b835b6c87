"""The layering of docs/ARCHITECTURE.md holds: the import contracts in pyproject.toml
(checked by import-linter, function-level imports included) are all kept, and a contract
that is broken is reported as broken (so the check itself can fail). Neither the library
nor the tests name the sample dataset's columns and objects: both read them from the spec."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_import_contracts_are_kept():
    done = _lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_a_lazy_import_across_a_layer_breaks_a_contract(tmp_path):
    """A copy of the project where the model library imports the feature spec inside a
    function (the old model/config.py did): the layering contract reports it."""
    copy = tmp_path / "project"
    shutil.copytree(
        ROOT,
        copy,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "data", "artifacts", "local_outputs", "*.egg-info"
        ),
    )
    config = copy / "model" / "config.py"
    config.write_text(
        config.read_text()
        + "\n\ndef _spec():\n    from feature_repo.spec import load_spec\n\n    return load_spec\n"
    )
    done = _lint_imports(copy)
    assert done.returncode != 0
    assert "model.config -> feature_repo.spec" in done.stdout


# The library code that must stay free of the sample dataset's names: everything but the
# example datasets' own generators and specs (and configs/, tests/, which are not library).
EXAMPLE_FILES = {
    "feature_repo/sample_data.py",
    "feature_repo/features.yaml",
    "feature_repo/retail_data.py",
    "feature_repo/retail_features.yaml",
}
LIBRARY_PARTS = (
    "common",
    "model",
    "feature_repo",
    "registry",
    "validation",
    "evaluation",
    "training",
    "serving",
    "components",
    "pipelines",
)


def spec_names(path: Path) -> set[str]:
    """Every object and column name of the feature spec at ``path``."""
    import yaml

    spec = yaml.safe_load(path.read_text())
    names = set(spec["entities"]) | set(spec["sources"]) | set(spec["feature_views"])
    names |= {e["join_key"] for e in spec["entities"].values()}
    names |= {spec["feature_service"], spec["label"]["name"]}
    names |= {s["timestamp_field"] for s in spec["sources"].values()}
    names |= {f["name"] for f in spec["features"]}
    names |= {
        m["name"] for f in spec["features"] for m in f.get("model_features") or [] if "name" in m
    }
    return names


def sample_names() -> set[str]:
    """Every object and column name of the sample's feature spec."""
    names = spec_names(ROOT / "feature_repo" / "features.yaml")
    # Feast's conventional timestamp name, and "user" (an entity of the sample, but also
    # the English word every CLI docstring needs) are not the sample's own.
    return names - {"event_timestamp", "user"}


def test_no_name_of_the_sample_in_library_code():
    """Bringing one's own data is an edit of the spec, never of the code: no library file
    names a column or object of the sample (a grep over code, docstrings and comments)."""
    from feature_repo.spec import load_spec

    names = sample_names()
    spec = load_spec()
    assert {spec.label.name, spec.entity_rows, spec.feature_service, *spec.join_keys()} <= names
    pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, names))) + r")\b")
    found = []
    for part in LIBRARY_PARTS:
        for path in sorted((ROOT / part).rglob("*")):
            rel = path.relative_to(ROOT).as_posix()
            if path.suffix not in (".py", ".yaml") or rel in EXAMPLE_FILES:
                continue
            if "/data/" in rel or "__pycache__" in rel:
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                for m in pattern.finditer(line):
                    found.append(f"{rel}:{number}: {m.group(1)}")
    assert not found, "\n".join(found[:60])


# ---------------------------------------------------------------- tests read the spec

# The tests of the example datasets' generators may name their columns; so may a test of
# what the sample's spec itself says, named test_the_sample_spec_* (tests/test_feature_spec.py).
GENERATOR_TESTS = {"test_sample_data.py", "test_retail_data.py"}
SPEC_CONTENT_TEST = "test_the_sample_spec_"


def distinctive_sample_names() -> set[str]:
    """The sample's names that the other example dataset (retail) does not use too: a test
    naming one of those assumes the sample (price or brand, say, are names of both)."""
    return sample_names() - spec_names(ROOT / "feature_repo" / "retail_features.yaml")


def sample_names_in_tests(folder: Path, names: set[str]) -> list[str]:
    """``file:line: name`` for each of ``names`` in the code of ``folder``'s test files: in
    a Python name or a string (docstrings and f-strings included), not in a comment."""
    import ast
    import io
    import tokenize

    pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, names))) + r")\b")
    found = []
    for path in sorted(folder.glob("*.py")):
        if path.name in GENERATOR_TESTS:
            continue
        text = path.read_text()
        exempt = set()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef) and node.name.startswith(SPEC_CONTENT_TEST):
                exempt.update(range(node.lineno, node.end_lineno + 1))
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type not in (tokenize.NAME, tokenize.STRING):
                continue
            for offset, line in enumerate(token.string.splitlines(), token.start[0]):
                if offset in exempt:
                    continue
                found += [f"tests/{path.name}:{offset}: {m[1]}" for m in pattern.finditer(line)]
    return found


def test_no_test_names_the_samples_columns():
    """The tests run against any spec: they take column and object names from it, never
    from the sample (issue 11), so editing features.yaml breaks no test that is not about
    the sample's own data."""
    from feature_repo.spec import load_spec

    names = distinctive_sample_names()
    spec = load_spec()
    assert {spec.label.name, spec.entity_rows, *spec.join_keys()} <= names
    found = sample_names_in_tests(ROOT / "tests", names)
    assert not found, "tests naming the sample's columns (read them from the spec):\n" + (
        "\n".join(found[:60])
    )


def test_the_test_grep_finds_names_in_code_not_in_comments_or_exempt_tests(tmp_path):
    names = {"clicked", "shopper"}
    (tmp_path / "test_x.py").write_text(
        '''"""Scores for each shopper."""  # line 1: a docstring counts

rows = frame["clicked"]  # line 3
# a shopper in a comment is no column


def test_the_sample_spec_label():
    assert label == "clicked"  # a test of the sample spec itself


def test_other(shopper_table):
    return f"{x}-clicked", shoppers  # line 12; "shoppers" is another word
'''
    )
    (tmp_path / "test_sample_data.py").write_text('column = "clicked"\n')
    assert sample_names_in_tests(tmp_path, names) == [
        "tests/test_x.py:1: shopper",
        "tests/test_x.py:3: clicked",
        "tests/test_x.py:12: clicked",
    ]
