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
