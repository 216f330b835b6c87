"""Run the SAME pipeline locally with ``kfp.local`` (``SubprocessRunner(use_venv=False)``:
every component runs in this virtual environment), on the local Feast repo, pushing to a
local registry folder. This is what ``make run`` does after preparing the data.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TextIO

from pipelines.defaults import (
    LOCAL_FEATURE_REPO,
    LOCAL_PIPELINE_ROOT,
    LOCAL_REGISTRY,
    LOG_LEVEL_ENV,
    PIPELINE_NAME,
    STEPS,
)

# kfp, pandas and the pipeline's components load when a run starts: `deepfm --help` is fast.
DEFAULT_PIPELINE_ROOT = LOCAL_PIPELINE_ROOT
DEFAULT_REGISTRY = LOCAL_REGISTRY
DEFAULT_FEATURE_REPO = LOCAL_FEATURE_REPO
REPO_MODEL_CONFIG = "deepfm.yaml"  # a feature repo's own model config


def sample_window(feature_repo: str | Path) -> dict:
    """The window that covers every event row of the local data: ``window_end`` just
    after the last one, ``window_days`` back to (before) the first."""
    import pandas as pd

    from feature_repo.spec import load_spec

    repo = Path(feature_repo)
    spec = load_spec(repo / "features.yaml")
    path = spec.source_path(spec.entity_rows, repo)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: generate the sample first "
            f"(deepfm data generate --out {path.parent})"
        )
    ts = pd.read_parquet(path, columns=[spec.timestamp])[spec.timestamp]
    end = ts.max() + timedelta(seconds=1)
    days = math.ceil((end - ts.min()) / timedelta(days=1) * 1000) / 1000
    return {"window_end": end.isoformat(), "window_days": days}


def repo_model_config(feature_repo: Path) -> dict:
    """``{"model_config": <repo>/deepfm.yaml}`` for a feature repo that carries its own model
    config (as ``deepfm data generate --dataset`` and ``deepfm features init`` write one),
    else nothing (the pipeline's default config). ``--param model_config=...`` wins."""
    config = feature_repo / REPO_MODEL_CONFIG
    return {"model_config": str(config)} if config.is_file() else {}


def local_options():
    """The pipeline's options for a local run: no retries (kfp.local honours them, so a
    failing step would first wait out its backoff, minutes; a cluster's transient failures
    do not happen here), no cluster settings (the feature repo's own Feast config) and no
    scheduled-time placeholder (kfp.local cannot resolve it; the window is a parameter)."""
    from pipelines.pipeline import PipelineOptions

    return PipelineOptions(
        image="python:3.11",
        retries=dict.fromkeys(STEPS, 0),
        overlay="none",
        scheduled_window=False,
    )


def run_local(
    params: dict | None = None,
    *,
    pipeline_root: str | Path = DEFAULT_PIPELINE_ROOT,
    feature_repo: str | Path = DEFAULT_FEATURE_REPO,
    push_destination: str | Path = DEFAULT_REGISTRY,
) -> dict:
    """Run the pipeline with ``kfp.local``; returns a summary: the run folder, the
    evaluation (AUC, baseline AUC, blessed), where the model went and the report.

    ``params`` are checked against the pipeline's parameters and typed as declared
    (strings from ``--param`` too: ``"0.7"`` -> 0.7), as for a run on a cluster.

    Raises:
        ValueError: an unknown parameter, or a value that does not fit its type.
    """
    from google.protobuf import json_format
    from kfp import local

    from pipelines.kfp_client import check_params, pipeline_parameters
    from pipelines.pipeline import build_pipeline

    pipeline = build_pipeline(local_options())
    declared = pipeline_parameters(json_format.MessageToDict(pipeline.pipeline_spec))
    given = check_params(declared, params or {})  # before any work: a typo fails at once
    feature_repo = Path(feature_repo).resolve()
    run_params = {
        **sample_window(feature_repo),
        "feature_repo": str(feature_repo),
        "push_destination": str(push_destination),
        **repo_model_config(feature_repo),
        **given,
    }
    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    before = set(root.glob(f"{PIPELINE_NAME}-*"))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    with warnings.catch_warnings(), _kfp_output(os.environ.get(LOG_LEVEL_ENV) == "DEBUG"):
        # resources and accelerators have no effect locally; kfp says so for every task
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner")
        pipeline(**run_params)
    runs = sorted(set(root.glob(f"{PIPELINE_NAME}-*")) - before)
    if not runs:
        raise RuntimeError(f"the local run left no output under {root}")
    return summarize(runs[-1], run_params["push_destination"])


def _executor_output(task_dir: Path) -> dict:
    path = task_dir / "executor_output.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _outputs(task_dir: Path) -> dict:
    return _executor_output(task_dir).get("parameterValues", {})


def _artifact_path(task_dir: Path, name: str) -> str | None:
    """Where a task wrote its output artifact ``name``: the uri it recorded (a step may
    give its file an extension, e.g. ``report.html``)."""
    artifacts = _executor_output(task_dir).get("artifacts", {}).get(name, {}).get("artifacts")
    return artifacts[0]["uri"] if artifacts else None


def summarize(run_dir: Path, push_destination: str) -> dict:
    """What a local run did, read from its folder and the registry pointer."""
    from registry.model_registry import read_current

    evaluation = _outputs(run_dir / "evaluate")
    pushed = (run_dir / "push").is_dir()
    summary = {
        "run_dir": str(run_dir),
        "auc": evaluation.get("auc"),
        "baseline_auc": None
        if evaluation.get("baseline_auc", -1) < 0
        else evaluation["baseline_auc"],
        "blessed": evaluation.get("blessed"),
        "pushed": pushed,
        "report": _artifact_path(run_dir / "evaluate", "report"),
        "validation_report": _artifact_path(run_dir / "validate", "report"),
        "current_model": read_current(str(push_destination)),
    }
    return summary


# ------------------------------------------------------------------- concise output

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# kfp.local's own log lines (its handler on sys.stdout): "20:25:54.061 - INFO - message"
_KFP_RECORD = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} - (\w+) - (.*)$")
# a task's log records (the executor's logging format): "[KFP Executor <time> INFO]: message"
_TASK_RECORD = re.compile(r"^\[KFP Executor [^\]]* (\w+)\]: ?(.*)$")
# a Python warning as the warnings module prints it: "path.py:332: DeprecationWarning: msg"
_WARNING = re.compile(r"^\S.*:\d+: (\w+Warning): ")
_LIBRARY_WARNINGS = {"DeprecationWarning", "PendingDeprecationWarning", "FutureWarning"}


def _library_warning(text: str) -> bool:
    """Whether ``text`` is an installed library's deprecation-like warning (noise here)."""
    warning = _WARNING.match(text)
    return bool(warning) and warning.group(1) in _LIBRARY_WARNINGS and "site-packages" in text


_QUIET_LEVELS = {"DEBUG", "INFO"}


class ConciseKfpOutput(io.TextIOBase):
    """What kfp.local writes on stdout (its log records, each task's streamed output and
    outputs), reduced to a few lines per task on ``out``::

        validate: running
          data validation passed for [2026-10-31 23:59:57+00:00, 2026-11-08 ...)
        validate: SUCCESS in 6.9s (passed=True, failures='')

    Kept: what a task prints itself, and every warning and error of kfp.local and the
    tasks. Dropped: INFO/DEBUG log records (kfp's executor, Great Expectations, Feast, ...),
    each task's executor input JSON, library deprecation warnings, kfp's separators and
    artifact URIs (they are under the run folder). A task that fails has its whole log
    written, so the traceback is there with its context.
    """

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._pending = ""
        self._state = "outside"  # outside | streamed | outputs
        self._task: str | None = None
        self._task_t0 = 0.0
        self._task_log: list[str] = []
        self._outputs: list[str] = []
        self._finished = ""
        self._dropping = False  # inside a dropped record's continuation lines
        self._pipeline_t0 = time.perf_counter()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._line(_ANSI.sub("", line).rstrip())
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def close_task(self, failed: bool) -> None:
        """Report the task in progress (at the end of a run, or when it raised)."""
        if self._pending:
            self.write("\n")
        if self._task is not None and failed:
            self._dump_task_log()
        self._task = None

    # -- one line of kfp.local's stdout
    def _line(self, line: str) -> None:
        record = _KFP_RECORD.match(line)
        if record:
            self._kfp_record(record.group(1), record.group(2))
        elif line.startswith("-----") and not line.strip("-"):
            self._finish_outputs()
            self._state = "outside"
        elif self._state == "streamed":
            self._task_line(line[4:] if line.startswith("    ") else line)
        elif self._state == "outputs":
            self._output_line(line)
        elif line.strip():
            self._emit(line)

    def _kfp_record(self, level: str, message: str) -> None:
        self._finish_outputs()
        task = re.match(r"Executing task '(.+)'$", message)
        finished = re.match(r"Task '(.+)' finished with status (\w+)$", message)
        pipeline_done = re.match(r"Pipeline '(.+)' finished with status (\w+)$", message)
        if task:
            self._task, self._task_t0, self._task_log = task.group(1), time.perf_counter(), []
            self._state = "outside"
            self._emit(f"{self._task}: running")
        elif message.startswith("Streamed logs:"):
            self._state = "streamed"
            self._dropping = False
        elif finished:
            self._state = "outside"
            seconds = time.perf_counter() - self._task_t0
            self._finished = f"{finished.group(1)}: {finished.group(2)} in {seconds:.1f}s"
            if finished.group(2) != "SUCCESS":
                self._dump_task_log()
                self._emit(self._finished)
                self._task = None
        elif re.match(r"Task '(.+)' outputs:$", message):
            self._state, self._outputs = "outputs", []
        elif re.match(r"Task '(.+)' has no outputs$", message):
            self._emit(self._finished)
            self._task = None
        elif message.startswith("Running pipeline:"):
            self._pipeline_t0 = time.perf_counter()
            name = message.partition(":")[2].strip().strip("'")
            self._emit(f"running pipeline {name} with kfp.local")
        elif pipeline_done:
            seconds = time.perf_counter() - self._pipeline_t0
            self._emit(f"pipeline {pipeline_done[1]}: {pipeline_done[2]} in {seconds:.1f}s")
        elif level not in _QUIET_LEVELS:
            self._emit(f"{level}: {message}")

    def _task_line(self, line: str) -> None:
        """A line a task's process wrote (stdout and stderr together)."""
        self._task_log.append(line)
        record = _TASK_RECORD.match(line)
        if record:
            level, message = record.groups()
            # a library's warning may come through logging (py.warnings) as well
            self._dropping = level in _QUIET_LEVELS or _library_warning(message)
            if not self._dropping:
                self._emit(f"  {level}: {message}")
            return
        if _WARNING.match(line):
            self._dropping = _library_warning(line)
            if not self._dropping:
                self._emit(f"  {line}")
            return
        if self._dropping and (line[:1].isspace() or line in ("{", "}", "[", "]")):
            return  # a continuation line of a dropped record (e.g. the executor input)
        self._dropping = False
        if line.strip():
            self._emit(f"  {line}")

    def _output_line(self, line: str) -> None:
        output = re.match(r"^    (\w+): (.*)$", line)
        if output and not re.match(r"\w+\( name=", output.group(2)):
            name, value = output.groups()
            with contextlib.suppress(ValueError):
                value = f"{float(value):.4g}" if "." in value else value
            self._outputs.append(f"{name}={value}")

    def _finish_outputs(self) -> None:
        if self._state == "outputs":
            shown = f" ({', '.join(self._outputs)})" if self._outputs else ""
            self._emit(self._finished + shown)
            self._task = None
            self._state = "outside"

    def _dump_task_log(self) -> None:
        self._emit(f"---- the full log of task {self._task} ----")
        for line in self._task_log:
            self._emit(f"  {line}")
        self._emit("----")
        self._task_log = []

    def _emit(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()


@contextlib.contextmanager
def _task_environment(verbose: bool) -> Iterator[None]:
    """Environment of kfp.local's task processes (they inherit this one's): the log level
    and no Great Expectations usage analytics. Restored afterwards."""
    changes = {LOG_LEVEL_ENV: "DEBUG" if verbose else "INFO", "GX_ANALYTICS_ENABLED": "false"}
    saved = {name: os.environ.get(name) for name in changes}
    for name, value in changes.items():
        os.environ.setdefault(name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _kfp_output(verbose: bool) -> Iterator[None]:
    """kfp.local's output as it is (``verbose``) or reduced by ``ConciseKfpOutput`` to
    stderr."""
    with _task_environment(verbose):
        if verbose:
            yield
            return
        concise = ConciseKfpOutput(sys.stderr)
        failed = True
        try:
            with contextlib.redirect_stdout(concise):
                yield
            failed = False
        finally:
            concise.close_task(failed)
