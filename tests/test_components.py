"""The pipeline steps' plain functions and their KFP faces, without Kubeflow."""

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Metrics, Model

from components.evaluate import evaluate
from evaluation.curves import calibration_table, confusion_at_base_rate, roc_curve
from evaluation.evaluate import Evaluation, evaluate_model, read_history
from evaluation.gate import gate
from evaluation.report import render_report
from feature_repo import store
from feature_repo.sample_data import generate
from feature_repo.spec import REPO_DIR, load_spec
from feature_repo.window import resolve_window
from model.export import load, sha256_file
from model.metrics import auc
from registry.model_registry import push_model, read_current
from training.data import retrieve_features
from training.run import TrainRequest, resolve_config_path, run_training

ROWS = 12_000
SPEC = load_spec()  # the sample's: names come from it
LABEL, TS = SPEC.label.name, SPEC.timestamp


# ------------------------------------------------------------------------- gate


@pytest.mark.parametrize(
    ("candidate", "baseline", "blessed", "why"),
    [
        (0.71, None, True, "no blessed model"),  # rubber stamp: the threshold alone
        (0.69, None, False, "below min_auc"),
        (0.74, 0.75, True, "within"),  # worse by 0.01 <= max_auc_drop 0.02
        (0.72, 0.75, False, "worse than the blessed model"),  # worse by 0.03
        (0.80, 0.75, True, "within"),
        (0.69, 0.60, False, "below min_auc"),  # better than baseline, still below the floor
        (float("nan"), None, False, "undefined"),
    ],
)
def test_gate_is_tfx_style(candidate, baseline, blessed, why):
    ok, reason = gate(candidate, baseline, min_auc=0.70, max_auc_drop=0.02)
    assert ok is blessed
    assert why in reason


def test_gate_boundaries_are_inclusive():
    assert gate(0.70, None, 0.70, 0.0)[0]
    assert gate(0.73, 0.75, 0.70, 0.02)[0]


# ------------------------------------------------------------------ curves/tables


def test_roc_curve_area_equals_the_exact_auc():
    rng = np.random.default_rng(0)
    y = (rng.random(3000) < 0.2).astype(float)
    s = np.round(rng.random(3000) + 0.3 * y, 2)  # ties
    pts = roc_curve(y, s, points=10_000)
    fpr, tpr = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(auc(y, s), abs=1e-12)
    assert pts[0][:2] == (0.0, 0.0) and pts[-1][:2] == (1.0, 1.0)
    assert len(roc_curve(y, s, points=50)) <= 50


def test_confusion_matrix_predicts_as_many_positives_as_there_are():
    y = np.array([0, 0, 1, 1, 0, 1, 0, 0])
    s = np.array([0.1, 0.2, 0.9, 0.3, 0.8, 0.7, 0.05, 0.15])
    threshold, ((tn, fp), (fn, tp)) = confusion_at_base_rate(y, s)
    assert threshold == pytest.approx(0.7)
    assert (tn, fp, fn, tp) == (4, 1, 1, 2)
    assert tp + fp == y.sum()


def test_calibration_table_by_score_decile():
    s = np.linspace(0, 1, 100)
    y = (s > 0.5).astype(float)
    table = calibration_table(y, s, bins=4)
    assert [rows for _, _, rows in table] == [25, 25, 25, 25]
    assert [rate for _, rate, _ in table] == [0.0, 0.0, 1.0, 1.0]


# ------------------------------------------------------------------------ report


class _References(HTMLParser):
    """Every src=/href= value of a page, its inline CSS and its SVG (each ``<svg>`` by the
    id of the ``<figure>`` around it)."""

    def __init__(self):
        super().__init__()
        self.references, self.css, self.figure = [], [], None
        self.svgs: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        self.references += [v or "" for k, v in attrs if k in ("src", "href", "xlink:href")]
        self.figure = dict(attrs).get("id", self.figure) if tag == "figure" else self.figure

    def handle_data(self, data):
        if self.lasttag == "style":
            self.css.append(data)


def external_references(page: str) -> list[str]:
    """The URLs ``page`` would fetch: src=/href= to http(s) or protocol-relative, CSS url()
    and @import of one."""
    parser = _References()
    parser.feed(page)
    urls = [r for r in parser.references if re.match(r"\s*(https?:)?//", r, re.I)]
    for css in parser.css:
        urls += re.findall(r"(?:url\(\s*['\"]?|@import\s+['\"])\s*((?:https?:)?//[^'\")]+)", css)
    return urls


def figures(page: str) -> dict[str, str]:
    """Each ``<figure id=...>``'s markup."""
    return dict(re.findall(r'<figure id="([^"]+)">(.*?)</figure>', page, re.S))


def svg_text(svg: str) -> list[str]:
    """The text elements of an SVG (matplotlib writes labels as text, not paths)."""
    return [t.strip() for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)]


def an_evaluation(baseline: bool, history: list[dict]) -> Evaluation:
    """A hand-built evaluation: a candidate with AUC 0.71, a blessed model v3 with 0.69."""
    rng = np.random.default_rng(1)
    y = (rng.random(2000) < 0.1).astype(float)
    s, b = rng.random(2000) * 0.2 + 0.05 * y, rng.random(2000) * 0.2 + 0.03 * y
    return Evaluation(
        blessed=True,
        reason="ok",
        auc=0.71,
        baseline_auc=0.69 if baseline else None,
        metrics={"auc": 0.71, "logloss": 0.3},
        baseline_metrics={"auc": 0.69, "logloss": 0.31} if baseline else None,
        baseline_version="v3" if baseline else None,
        min_auc=0.5,
        max_auc_drop=0.02,
        roc=roc_curve(y, s),
        confusion_matrix=confusion_at_base_rate(y, s)[1],
        calibration=calibration_table(y, s),
        baseline_roc=roc_curve(y, b) if baseline else [],
        baseline_calibration=calibration_table(y, b) if baseline else [],
        history=history,
    )


HISTORY = [
    {"epoch": 1, "train_loss": 0.41, "eval_auc": 0.66, "eval_logloss": 0.33},
    {"epoch": 2, "train_loss": 0.36, "eval_auc": 0.70, "eval_logloss": 0.31},
]


def test_the_report_draws_both_rocs_calibration_and_training():
    page = render_report(an_evaluation(baseline=True, history=HISTORY))
    plots = figures(page)
    assert set(plots) == {"roc", "calibration", "training"}
    assert all(plot.count("<svg") == 1 for plot in plots.values())
    roc = svg_text(plots["roc"])
    assert "candidate (AUC 0.7100)" in roc and "blessed model v3 (AUC 0.6900)" in roc
    assert {"false positive rate", "true positive rate"} <= set(roc)
    calibration = svg_text(plots["calibration"])
    assert {"mean prediction", "observed click rate", "perfectly calibrated"} <= set(calibration)
    assert "blessed model v3 (AUC 0.6900)" in calibration
    ticks = [t for t in calibration if re.fullmatch(r"[0-9.]+", t)]
    assert len(ticks) >= 6 and "0.00" in ticks  # both axes labelled, from 0
    training = svg_text(plots["training"])
    assert {"train_loss", "eval_logloss", "eval_auc", "epoch"} <= set(training)
    assert external_references(page) == []
    assert "<?xml" not in page and "<!DOCTYPE svg" not in page


def test_the_report_without_a_blessed_model_or_train_loss():
    # no baseline: the candidate's ROC alone; a history without train loss: what is there
    page = render_report(an_evaluation(baseline=False, history=[{"epoch": 1, "eval_auc": 0.7}]))
    plots = figures(page)
    roc = svg_text(plots["roc"])
    assert "candidate (AUC 0.7100)" in roc and not any(t.startswith("blessed") for t in roc)
    training = svg_text(plots["training"])
    assert "eval_auc" in training and "train_loss" not in training
    assert external_references(page) == []
    # no history at all: no training plot, a line saying so
    page = render_report(an_evaluation(baseline=False, history=[]))
    assert "training" not in figures(page) and "No per-epoch training history" in page


def test_the_reference_check_finds_external_resources():
    page = (
        '<link href="https://cdn.example/b.css"><script src="//cdn.example/j.js"></script>'
        "<style>div{background:url('http://x.example/l.png')}</style><a href='#top'>top</a>"
    )
    assert len(external_references(page)) == 3


def test_read_history(tmp_path):
    assert read_history(tmp_path) == []  # no metrics.json
    (tmp_path / "metrics.json").write_text(json.dumps({"auc": 0.7, "history": HISTORY}))
    assert read_history(tmp_path) == HISTORY


# -------------------------------------------------------------- data and models


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("components") / "feature_repo"
    (root / "data").mkdir(parents=True)
    for name in ("features.yaml", "feature_store.yaml", ".feastignore"):
        shutil.copy(REPO_DIR / name, root / name)
    generate(ROWS, seed=11, out_dir=root / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("DEEPFM_DATA_DIR", raising=False)
        store.apply(root)
    return root


@pytest.fixture(scope="module")
def datasets(repo, tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("datasets")
    info = retrieve_features(
        str(repo), "2026-11-09T00:00:00+00:00", 8.0, 0.2, out / "train", out / "eval"
    )
    assert info["rows_train"] + info["rows_eval"] == ROWS
    return out / "train", out / "eval"


@pytest.fixture(scope="module")
def small_config(tmp_path_factory) -> str:
    raw = yaml.safe_load((REPO_DIR.parent / "configs" / "deepfm.yaml").read_text())
    raw["feature_spec"] = str(REPO_DIR / "features.yaml")
    raw["model"]["deep"]["hidden_units"] = [32, 16]
    raw["train"]["batch_size"] = 512
    path = tmp_path_factory.mktemp("cfg") / "small.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.fixture(scope="module")
def trained(datasets, small_config, tmp_path_factory) -> tuple[Path, dict]:
    model_dir = tmp_path_factory.mktemp("model") / "model"
    request = TrainRequest(small_config, datasets[0], model_dir, eval_data=datasets[1])
    return model_dir, run_training(request)


def test_features_split_by_time(datasets):
    train_df, eval_df = (pd.read_parquet(p) for p in datasets)
    assert len(eval_df) == pytest.approx(0.2 * ROWS, abs=1)
    assert train_df[TS].max() <= eval_df[TS].min()
    assert list(eval_df.columns) == list(train_df.columns) == SPEC.columns()


@pytest.mark.parametrize(
    ("end", "days", "message"),
    [
        ("2026-11-09T00:00:00", 8.0, "no time zone"),
        ("yesterday", 8.0, "not an ISO 8601 time"),
        ("2026-11-09T00:00:00Z", 0.0, "window_days must be > 0"),
    ],
)
def test_window_errors(end, days, message):
    with pytest.raises(ValueError, match=message):
        resolve_window(end, days)


def test_window_defaults_to_the_latest_days():
    start, end = resolve_window("", 7)
    assert (end - start).days == 7 and end.tzinfo is not None


def test_run_training_writes_a_loadable_model(trained, datasets):
    model_dir, result = trained
    model = load(model_dir)
    eval_df = pd.read_parquet(datasets[1])
    assert auc(eval_df[LABEL].to_numpy(), model.predict(eval_df)) == result["auc"]
    # the config's up to 10 epochs, stopped early on the validation split
    assert 1 <= result["best_epoch"] <= result["epochs_run"] <= 10
    assert result["rows_eval"] == len(eval_df)
    assert result["rows_train"] + result["rows_eval"] == ROWS
    assert 0.55 < result["auc"] < 0.95
    saved = json.loads((model_dir / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(result, default=float))


def test_config_paths_resolve_from_the_project(tmp_path):
    assert resolve_config_path("configs/deepfm.yaml").is_file()
    assert resolve_config_path("nope.yaml") == Path("nope.yaml")
    request = TrainRequest("nope.yaml", tmp_path / "rows.parquet", tmp_path / "model")
    with pytest.raises(ValueError, match="config file nope.yaml does not exist"):
        run_training(request)


def test_evaluate_without_a_blessed_model_applies_the_threshold(trained, datasets, tmp_path):
    model_dir, result = trained
    ev = evaluate_model(model_dir, datasets[1], str(tmp_path / "registry"), 0.5, 0.01)
    assert ev.blessed and ev.baseline_auc is None and ev.auc == result["auc"]
    ev = evaluate_model(model_dir, datasets[1], str(tmp_path / "registry"), 0.99, 0.01)
    assert not ev.blessed and "below min_auc" in ev.reason


def test_evaluate_refuses_a_worse_model_than_the_blessed_one(trained, datasets, tmp_path):
    model_dir, _ = trained
    registry = tmp_path / "registry"
    push_model(model_dir, str(registry), "v1")
    # the same model scored against itself: not worse
    ev = evaluate_model(model_dir, datasets[1], str(registry), 0.5, 0.0)
    assert ev.blessed and ev.baseline_auc == ev.auc and ev.baseline_version == "v1"
    # a worse candidate: the same model with its embedding rows shuffled (ids map to
    # other ids' vectors), manifest updated so it is a valid model directory
    worse = tmp_path / "worse"
    shutil.copytree(model_dir, worse)
    state = torch.load(worse / "weights.pt", weights_only=True)
    gen = torch.Generator().manual_seed(0)
    for key, value in state.items():
        if value.is_floating_point() and "embedding" in key:
            state[key] = value[torch.randperm(value.shape[0], generator=gen)]
    torch.save(state, worse / "weights.pt")
    manifest = json.loads((worse / "MANIFEST.json").read_text())
    manifest["files"]["weights.pt"] = {
        "bytes": (worse / "weights.pt").stat().st_size,
        "sha256": sha256_file(worse / "weights.pt"),
    }
    (worse / "MANIFEST.json").write_text(json.dumps(manifest))
    ev = evaluate_model(worse, datasets[1], str(registry), 0.5, 0.005)
    assert ev.auc < ev.baseline_auc - 0.005
    assert not ev.blessed and "worse than the blessed model" in ev.reason
    assert read_current(str(registry))["version"] == "v1"
    html = render_report(ev)
    assert "NOT BLESSED" in html and html.count("<svg") == 3  # ROC, calibration, training
    roc = svg_text(figures(html)["roc"])
    assert f"candidate (AUC {ev.auc:.4f})" in roc
    assert f"blessed model v1 (AUC {ev.baseline_auc:.4f})" in roc
    assert ev.history and external_references(html) == []


def test_the_evaluate_component_logs_metrics_roc_and_report(trained, datasets, tmp_path):
    model_dir, _ = trained
    metrics = Metrics(uri=str(tmp_path / "metrics"))
    roc = ClassificationMetrics(uri=str(tmp_path / "roc"))
    report = HTML(uri=str(tmp_path / "report"))
    out = evaluate.python_func(
        model=Model(uri=str(model_dir)),
        eval_data=Dataset(uri=str(datasets[1])),
        push_destination=str(tmp_path / "registry"),
        min_auc=0.5,
        max_auc_drop=0.01,
        metrics=metrics,
        roc=roc,
        report=report,
    )
    assert out.blessed is True and out.baseline_auc == -1.0
    assert metrics.metadata["auc"] == out.auc and metrics.metadata["blessed"] == 1.0
    assert "grouped_auc" in metrics.metadata and "calibration" in metrics.metadata
    curve = roc.metadata["confidenceMetrics"]
    assert len(curve) > 10 and {"falsePositiveRate", "recall", "confidenceThreshold"} <= set(
        curve[0]
    )
    assert roc.metadata["confusionMatrix"]["annotationSpecs"] == [
        {"displayName": "no click"},
        {"displayName": "click"},
    ]
    # the report is written as report.html, and that is the URI KFP records
    assert report.uri == str(tmp_path / "report.html") and report.path == report.uri
    assert not (tmp_path / "report").exists()
    page = Path(report.path).read_text()
    assert "BLESSED" in page and "<svg" in page and "grouped_auc" in page
    assert set(figures(page)) == {"roc", "calibration", "training"}


# ------------------------------------------- a cluster step's settings (components/settings)


def _cluster_env(tmp_path, **changes):
    """A cluster step's environment as the gcp overlay gives it, with ``changes``."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    config = tmp_path / "feast" / "feature_store.yaml"
    config.parent.mkdir(exist_ok=True)
    config.write_text(
        "# Feast fills ${VAR} from the environment (a comment: not a setting)\n"
        "registry: gs://${DEEPFM_GCS_BUCKET}/feast/registry.db\n"
        "online_store: {type: redis, connection_string: ${DEEPFM_REDIS_ADDRESS}}\n"
    )
    env = {
        "DEEPFM_OVERLAY": "gcp",
        "DEEPFM_DATA_DIR": str(data),
        "FEAST_FS_YAML_FILE_PATH": str(config),
        "DEEPFM_GCS_BUCKET": "deepfm-models",
        "DEEPFM_REDIS_ADDRESS": "deepfm-redis:6379",
    }
    env.update(changes)
    return {k: v for k, v in env.items() if v is not None}


def test_cluster_settings_pass_when_the_overlay_gives_them(tmp_path):
    from components.settings import check_cluster_settings

    assert check_cluster_settings(True, _cluster_env(tmp_path)) == "gcp"
    # outside a cluster (kfp.local, run-local) nothing is required
    assert check_cluster_settings(True, {}) is None


@pytest.mark.parametrize(
    "changes, needs_feast, message",
    [
        (
            {"DEEPFM_DATA_DIR": None},
            False,
            "DEEPFM_DATA_DIR is not set: the ConfigMap deepfm-settings key DEEPFM_DATA_DIR "
            "(manifests/overlays/gcp/settings.env)",
        ),
        (
            {"DEEPFM_DATA_DIR": "/nonexistent/deepfm/data"},
            False,
            "DEEPFM_DATA_DIR=/nonexistent/deepfm/data is not a folder: the volume claim "
            "deepfm-data mounted there (manifests/overlays/gcp/data-bucket.yaml)",
        ),
        (
            {"FEAST_FS_YAML_FILE_PATH": None},
            True,
            "FEAST_FS_YAML_FILE_PATH is not set: the pipeline spec sets it to the ConfigMap "
            "feast-config key feature_store.yaml (manifests/overlays/gcp/feature_store.yaml)",
        ),
        (
            {"FEAST_FS_YAML_FILE_PATH": "/nonexistent/feast/feature_store.yaml"},
            True,
            "FEAST_FS_YAML_FILE_PATH=/nonexistent/feast/feature_store.yaml does not exist: the "
            "ConfigMap feast-config key feature_store.yaml (manifests/overlays/gcp/"
            "feature_store.yaml), mounted at /nonexistent/feast",
        ),
        (
            {"DEEPFM_REDIS_ADDRESS": ""},
            True,
            "DEEPFM_REDIS_ADDRESS is not set: the ConfigMap deepfm-settings key "
            "DEEPFM_REDIS_ADDRESS, which ",
        ),
    ],
)
def test_a_missing_cluster_setting_is_one_line_naming_it_and_where_it_is_set(
    tmp_path, changes, needs_feast, message
):
    from components.settings import ClusterSettingError, check_cluster_settings

    with pytest.raises(ClusterSettingError) as e:
        check_cluster_settings(needs_feast, _cluster_env(tmp_path, **changes))
    text = str(e.value)
    assert text.startswith(message) and "\n" not in text
    assert isinstance(e.value, SystemExit)  # the step exits with the line, no traceback


def test_validation_does_not_need_the_feast_config(tmp_path):
    from components.settings import check_cluster_settings

    env = _cluster_env(tmp_path, FEAST_FS_YAML_FILE_PATH=None, DEEPFM_REDIS_ADDRESS=None)
    assert check_cluster_settings(False, env) == "gcp"


@pytest.mark.parametrize(
    "window_end, scheduled_at, expected",
    [
        ("2026-11-09T00:00:00Z", "2026-12-01T03:00:00Z", "2026-11-09T00:00:00Z"),
        ("", "2026-12-01T03:00:00Z", "2026-12-01T03:00:00Z"),
        ("", "{{$.pipeline_job_schedule_time_utc}}", ""),  # kfp.local leaves it: now
        ("", "", ""),
    ],
)
def test_the_window_ends_at_the_given_end_else_the_scheduled_time(
    window_end, scheduled_at, expected
):
    from components.settings import window_end_of_run

    assert window_end_of_run(window_end, scheduled_at) == expected


def test_a_cluster_step_without_its_settings_exits_at_once_with_one_line(tmp_path):
    """The validate step as KFP's executor runs it in a pod whose deepfm-settings lack
    DEEPFM_DATA_DIR: it exits non-zero with the one line, no traceback, before it imports
    its libraries."""
    import os
    import subprocess
    import sys
    import time

    def artifact(name, schema):
        return {
            "artifacts": [
                {"name": name, "type": {"schemaTitle": schema}, "uri": str(tmp_path / name)}
            ]
        }

    executor_input = {
        "inputs": {
            "parameterValues": {
                "feature_repo": str(REPO_DIR),
                "window_end": "",
                "window_days": 7.0,
                "scheduled_at": "2026-12-01T03:00:00Z",
            }
        },
        "outputs": {
            "artifacts": {
                "metrics": artifact("metrics", "system.Metrics"),
                "report": artifact("report", "system.HTML"),
            },
            "parameters": {
                "passed": {"outputFile": str(tmp_path / "passed")},
                "failures": {"outputFile": str(tmp_path / "failures")},
            },
            "outputFile": str(tmp_path / "executor_output.json"),
        },
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPFM_")}
    env.update({"_KFP_RUNTIME": "true", "DEEPFM_OVERLAY": "gcp"})
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "kfp.dsl.executor_main",
         "--component_module_path", str(Path(__file__).parents[1] / "components" / "validate.py"),
         "--executor_input", json.dumps(executor_input), "--function_to_execute", "validate"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    elapsed = time.perf_counter() - t0
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1] == (
        "DEEPFM_DATA_DIR is not set: the ConfigMap deepfm-settings key DEEPFM_DATA_DIR "
        "(manifests/overlays/gcp/settings.env)"
    )
    assert "Traceback" not in out.stderr + out.stdout
    assert not (tmp_path / "executor_output.json").exists()
    assert elapsed < 20, elapsed  # python + kfp's executor; no validation library loaded
