"""The layering of docs/ARCHITECTURE.md holds: the import contracts in pyproject.toml
(checked by import-linter, function-level imports included) are all kept, and a contract
that is broken is reported as broken (so the check itself can fail)."""

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


def sample_names() -> set[str]:
    """Every object and column name of the sample's feature spec."""
    import yaml

    spec = yaml.safe_load((ROOT / "feature_repo" / "features.yaml").read_text())
    names = set(spec["entities"]) | set(spec["sources"]) | set(spec["feature_views"])
    names |= {e["join_key"] for e in spec["entities"].values()}
    names |= {spec["feature_service"], spec["label"]["name"]}
    names |= {s["timestamp_field"] for s in spec["sources"].values()}
    names |= {f["name"] for f in spec["features"]}
    names |= {
        m["name"] for f in spec["features"] for m in f.get("model_features") or [] if "name" in m
    }
    # Feast's conventional timestamp name, and "user" (an entity of the sample, but also
    # the English word every CLI docstring needs) are not the sample's own.
    return names - {"event_timestamp", "user"}


def test_no_name_of_the_sample_in_library_code():
    """Bringing one's own data is an edit of the spec, never of the code: no library file
    names a column or object of the sample (a grep over code, docstrings and comments)."""
    import re

    names = sample_names()
    assert {"user_id", "adgroup_id", "clk", "impressions"} <= names
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
