"""``deepfm --help`` starts at once: building the parser imports no heavy library, and the
local run's concise output (pipelines/local_run.py) keeps what a user needs to read."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.local_run import ConciseKfpOutput

ROOT = Path(__file__).resolve().parents[1]

HEAVY = (
    "kfp",
    "pandas",
    "torch",
    "feast",
    "great_expectations",
    "numpy",
    "google.cloud",
    "starlette",
    "uvicorn",
    "matplotlib",
    "pyarrow",
    "pydantic",
)

# Every command with a help of its own (a group's --help lists its commands).
COMMANDS = [
    [],
    ["data"],
    ["data", "generate"],
    ["train"],
    ["evaluate"],
    ["predict"],
    ["features"],
    ["features", "apply"],
    ["features", "materialize"],
    ["features", "online"],
    ["features", "training-data"],
    ["pipeline"],
    ["pipeline", "compile"],
    ["pipeline", "run-local"],
    ["pipeline", "upload"],
    ["pipeline", "run"],
    ["pipeline", "schedule"],
    ["serve"],
]

# In a fresh interpreter: parse ``argv`` (``--help`` exits), then report what the parser
# imported (not what the interpreter loaded before it: an installed namespace package's .pth
# file may import ``google.cloud`` at start-up, for every Python program alike).
_PROBE = """
import json, sys
before = set(sys.modules)
from pipelines.cli import build_parser
parser = build_parser()
try:
    parser.parse_args(sys.argv[1:])
except SystemExit:
    pass
heavy = [m for m in {heavy!r} if m in sys.modules and m not in before]
print(json.dumps(heavy))
"""


def _imported_after_help(argv: list[str]) -> list[str]:
    probe = _PROBE.format(heavy=HEAVY)
    result = subprocess.run(
        [sys.executable, "-c", probe, *argv, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout.startswith("usage: deepfm"), result.stdout[:200]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(["deepfm", *a, "--help"]))
def test_help_imports_no_heavy_library(argv):
    assert _imported_after_help(argv) == []


def test_the_deepfm_script_prints_help():
    script = Path(sys.executable).with_name("deepfm")
    if not script.exists():
        pytest.skip("the deepfm console script is not installed next to this python")
    result = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.startswith("usage: deepfm")
    assert "--verbose" in result.stdout


def test_the_pipeline_defaults_are_the_pipeline_s():
    from pipelines import defaults
    from pipelines.cli import build_parser
    from pipelines.pipeline import PipelineOptions

    options = PipelineOptions()
    args = build_parser().parse_args(["pipeline", "compile"])
    assert args.image == options.image == defaults.DEFAULT_IMAGE
    assert args.push_destination == options.push_destination
    assert args.feature_repo == options.feature_repo
    assert (args.accelerator_type, args.train_cpu, args.train_memory) == (
        options.accelerator_type,
        options.train_cpu,
        options.train_memory,
    )
    assert (args.trainer, args.num_nodes) == (options.trainer, options.num_nodes)


# ------------------------------------------------------------------ concise kfp output

# What kfp.local writes on stdout for a task (shortened from a real run).
KFP_TASK = """\
20:25:54.055 - INFO - Running pipeline: \x1b[95m'deepfm-ctr'\x1b[0m
--------------------------------------------------------------------------------
20:25:54.061 - INFO - Executing task \x1b[96m'features'\x1b[0m
20:25:54.061 - INFO - Streamed logs:

    [KFP Executor 2026-12-02 20:25:54,151 INFO]: Looking for component `features`
    [KFP Executor 2026-12-02 20:25:54,152 INFO]: Got executor_input:
    {
        "inputs": {
            "parameterValues": {"window_days": 8.0}
        }
    }
    [KFP Executor 2026-12-02 20:25:55,445 INFO]: Skipping registering function get_context
    [KFP Executor 2026-12-02 20:25:55,500 WARNING]: the registry is old
    [KFP Executor 2026-12-02 20:25:55,510 WARNING]: /x/site-packages/great_expectations/d.py:6: \
DeprecationWarning: module 'sre_constants' is deprecated
      import sre_constants
    /x/site-packages/ibis/backends/duckdb/__init__.py:332: DeprecationWarning: fetch_arrow_table
      meta = result.fetch_arrow_table()
    [train] encoded 27,000 training rows
    [KFP Executor 2026-12-02 20:26:12,919 INFO]: Wrote executor output file to /x.json
    \n\n\
20:26:14.079 - INFO - Task \x1b[96m'features'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m
20:26:14.080 - INFO - Task \x1b[96m'features'\x1b[0m outputs:
    Output: 27000
    auc: 0.6713515609850689
    eval_data: Dataset( name='eval_data',
                        uri='/x/features/eval_data',
                        metadata={} )
--------------------------------------------------------------------------------
20:26:26.443 - INFO - Pipeline \x1b[95m'deepfm-ctr'\x1b[0m finished with status \
\x1b[92mSUCCESS\x1b[0m
"""


def _concise(text: str, failed: bool = False) -> list[str]:
    out = io.StringIO()
    concise = ConciseKfpOutput(out)
    for part in text.split("\n"):  # written in pieces, as print and logging do
        concise.write(part + "\n")
    concise.close_task(failed)
    return out.getvalue().splitlines()


def test_a_task_is_reduced_to_its_own_lines_warnings_and_outputs():
    lines = _concise(KFP_TASK)
    assert lines[0] == "running pipeline deepfm-ctr with kfp.local"
    assert lines[1] == "features: running"
    assert lines[2] == "  WARNING: the registry is old"
    assert lines[3] == "  [train] encoded 27,000 training rows"
    assert lines[4].startswith("features: SUCCESS in ")
    assert lines[4].endswith(" (Output=27000, auc=0.6714)")
    assert lines[5].startswith("pipeline deepfm-ctr: SUCCESS in ")
    assert len(lines) == 6


def test_a_failed_task_shows_its_whole_log():
    failing = KFP_TASK.split("20:26:14.079")[0] + (
        "    Traceback (most recent call last):\n"
        '      File "x.py", line 1, in <module>\n'
        "    ValueError: no events in the window\n"
        "20:26:14.079 - ERROR - Task 'features' finished with status FAILURE\n"
    )
    lines = _concise(failing)
    text = "\n".join(lines)
    assert "---- the full log of task features ----" in text
    assert "Skipping registering function" in text  # the full log, INFO records included
    assert "ValueError: no events in the window" in text
    assert lines[-1].startswith("features: FAILURE in ")


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ("bogus=1", "unknown pipeline parameter 'bogus'; valid: batch_size (int)"),
        ("window_days=abc", "pipeline parameter window_days='abc': expected a number"),
        ("min_auc", "--param 'min_auc': expected KEY=VALUE"),
    ],
)
def test_run_local_checks_its_params_first_in_one_line_with_exit_2(tmp_path, param, message):
    """`--param` of run-local is typed like `run`'s and checked before anything runs (here
    the feature repo does not even exist)."""
    script = Path(sys.executable).with_name("deepfm")
    done = subprocess.run(
        [str(script), "pipeline", "run-local", "--param", param]
        + ["--feature-repo", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
