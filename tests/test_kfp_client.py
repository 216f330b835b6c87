"""pipelines/kfp_client.py against an in-memory KFP v2beta1 API (tests/fake_kfp_server.py).

A toy pipeline with one parameter of each type is compiled once; every test talks to a
fresh fake server on 127.0.0.1 through a real kfp.Client, and checks the HTTP requests.
"""

import argparse
import hashlib
import json
import re
import secrets
import socket

import kfp
import pytest
import yaml
from fake_kfp_server import FakeKfpServer
from kfp import compiler, dsl
from kfp.client import KF_PIPELINES_SA_TOKEN_ENV

from pipelines.cli import exit_status
from pipelines.kfp_client import (
    TOKEN_ENV,
    KfpApiError,
    add_pipeline_client_commands,
    check_params,
    kfp_cron,
    load_pipeline_spec,
    make_client,
    pipeline_parameters,
    run,
    schedule,
    upload,
)


@dsl.component(base_image="python:3.11")
def train(day: str, lr: float, epochs: int, use_bn: bool, hidden: list, opts: dict) -> float:
    return lr * epochs


# KFP reads parameter defaults from the signature, so the list/dict defaults are literals.
@dsl.pipeline(name="toy-ctr")
def toy_pipeline(
    day: str,
    lr: float = 0.01,
    epochs: int = 1,
    use_bn: bool = True,
    table: str = "flat",
    hidden: list = [64, 32],  # noqa: B006
    opts: dict = {"a": 1},  # noqa: B006
):
    train(day=day, lr=lr, epochs=epochs, use_bn=use_bn, hidden=hidden, opts=opts)


GOOD = {"day": "2026-11-27"}


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    path = tmp_path_factory.mktemp("package") / "toy_pipeline.yaml"
    compiler.Compiler().compile(toy_pipeline, str(path))
    return path


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    """No KFP setting, token or kfp context file of the machine running the tests."""
    for name in (
        TOKEN_ENV,
        "KF_PIPELINES_ENDPOINT",
        "KF_PIPELINES_UI_ENDPOINT",
        "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME",
        "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME",
        "KF_PIPELINES_IAP_OAUTH2_CLIENT_ID",
        "KF_PIPELINES_APP_OAUTH2_CLIENT_ID",
        "KF_PIPELINES_APP_OAUTH2_CLIENT_SECRET",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(KF_PIPELINES_SA_TOKEN_ENV, str(tmp_path / "no-sa-token"))
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(home / ".config/kfp/context.json"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def token(monkeypatch):
    value = "kfp-test-" + secrets.token_hex(16)
    monkeypatch.setenv(TOKEN_ENV, value)
    return value


@pytest.fixture
def server():
    with FakeKfpServer() as fake:
        yield fake


@pytest.fixture
def client(server, token):
    return make_client(server.url)


# ------------------------------------------------------------------------ auth


def test_token_from_env_reaches_every_request(server, token, package):
    client = make_client(server.url)
    upload(client, package)
    run(client, package, GOOD, "exp")
    assert server.calls("GET", "/healthz")
    assert {r.headers.get("authorization") for r in server.requests} == {f"Bearer {token}"}


def test_service_account_token_file_is_used_without_env_token(tmp_path, monkeypatch, server):
    sa_token = tmp_path / "sa-token"
    sa_token.write_text("projected-sa-token\n")
    monkeypatch.setenv(KF_PIPELINES_SA_TOKEN_ENV, str(sa_token))
    make_client(server.url).get_pipeline_id("toy-ctr")
    assert server.requests[-1].headers["authorization"] == "Bearer projected-sa-token"


def test_no_token_sends_no_authorization(server):
    make_client(server.url).get_pipeline_id("toy-ctr")
    assert all("authorization" not in r.headers for r in server.requests)


def test_namespace_is_used_for_experiments_and_skips_healthz(server, token, package):
    client = make_client(server.url, namespace="team-a")
    run(client, package, GOOD, "exp")
    assert not server.calls("GET", "/healthz")
    assert server.calls("GET", "/experiments")[0].query["namespace"] == ["team-a"]
    assert server.calls("POST", "/experiments")[0].json()["namespace"] == "team-a"


# ---------------------------------------------------------------------- upload


def test_upload_sends_the_compiled_spec_and_name(server, client, package):
    result = upload(client, package, "deepfm-ctr", description="nightly CTR model")
    (request,) = server.calls("POST", "/pipelines/upload")
    assert request.query["name"] == ["deepfm-ctr"]
    assert request.query["description"] == ["nightly CTR model"]
    assert request.form()["uploadfile"] == package.read_bytes()
    (pipeline,) = server.pipelines.values()
    (version,) = server.versions[pipeline["pipeline_id"]]
    assert result == {
        "pipeline_id": pipeline["pipeline_id"],
        "pipeline_name": "deepfm-ctr",
        "version_id": version["pipeline_version_id"],
        "version_name": "deepfm-ctr",
        "created": "pipeline",
        "url": f"{server.url}/#/pipelines/details/{pipeline['pipeline_id']}"
        f"/version/{version['pipeline_version_id']}",
    }


def test_upload_of_an_existing_name_creates_a_version(server, client, package):
    first = upload(client, package)  # name: the spec's pipelineInfo.name
    second = upload(client, package)
    third = upload(client, package, "toy-ctr", version="v3")
    assert first["pipeline_name"] == "toy-ctr" and first["created"] == "pipeline"
    assert len(server.calls("POST", "/pipelines/upload")) == 1
    v2, v3 = server.calls("POST", "/pipelines/upload_version")
    assert v2.query["pipelineid"] == v3.query["pipelineid"] == [first["pipeline_id"]]
    digest = hashlib.sha256(package.read_bytes()).hexdigest()[:8]
    assert re.fullmatch(rf"\d{{8}}-\d{{6}}-{digest}", v2.query["name"][0])
    assert v3.query["name"] == ["v3"]
    assert v2.form()["uploadfile"] == package.read_bytes()
    assert second["created"] == third["created"] == "version"
    assert second["version_name"] == v2.query["name"][0] and third["version_name"] == "v3"
    ids = [v["pipeline_version_id"] for v in server.versions[first["pipeline_id"]]]
    assert [first["version_id"], second["version_id"], third["version_id"]] == ids


# ------------------------------------------------------------------------- run


def test_run_sends_the_spec_typed_parameters_and_experiment(server, client, package):
    params = {
        "day": "2026-11-27",
        "lr": "0.7",
        "epochs": "3",
        "use_bn": "false",
        "hidden": "[128, 64]",
        "opts": '{"a": 2}',
    }
    result = run(client, package, params, "deepfm-exp", run_name="r1", service_account="runner")
    (request,) = server.calls("POST", "/runs")
    body = request.json()
    sent = body["runtime_config"]["parameters"]
    assert sent == {
        "day": "2026-11-27",
        "lr": 0.7,
        "epochs": 3,
        "use_bn": False,
        "hidden": [128, 64],
        "opts": {"a": 2},
    }
    assert type(sent["lr"]) is float and type(sent["epochs"]) is int
    (experiment,) = server.experiments.values()
    assert experiment["display_name"] == "deepfm-exp"
    assert body["experiment_id"] == experiment["experiment_id"] == result["experiment_id"]
    assert body["display_name"] == "r1" and body["service_account"] == "runner"
    assert body["pipeline_spec"]["root"] == load_pipeline_spec(package)["root"]
    assert result["run_id"] in server.runs
    assert result["url"] == f"{server.url}/#/runs/details/{result['run_id']}"


def test_run_coerces_python_values_reuses_the_experiment_and_overrides_caching(
    server, client, package
):
    run(client, package, {**GOOD, "lr": 1, "epochs": 2.0, "use_bn": True}, "exp")
    run(client, package, GOOD, "exp", enable_caching=False)
    first, second = (r.json() for r in server.calls("POST", "/runs"))
    assert first["runtime_config"]["parameters"] == {**GOOD, "lr": 1.0, "epochs": 2, "use_bn": True}
    assert len(server.calls("POST", "/experiments")) == 1
    assert first["experiment_id"] == second["experiment_id"]
    caching = second["pipeline_spec"]["root"]["dag"]["tasks"]["train"]["cachingOptions"]
    assert not caching.get("enableCache", False)
    assert second["display_name"].startswith("toy-ctr ")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({**GOOD, "nope": "1"}, r"unknown pipeline parameter 'nope'; valid: day \(str\), "),
        ({**GOOD, "lr": "fast"}, r"lr='fast': expected a number"),
        ({**GOOD, "lr": "nan"}, r"lr='nan': expected a finite number"),
        ({**GOOD, "lr": True}, r"lr=True"),
        ({**GOOD, "epochs": "1.5"}, r"epochs='1.5': expected an integer"),
        ({**GOOD, "epochs": True}, r"epochs=True"),
        ({**GOOD, "use_bn": "maybe"}, r"use_bn='maybe': expected true or false"),
        ({**GOOD, "hidden": "[1,"}, r"hidden='\[1,': expected a JSON list"),
        ({**GOOD, "hidden": '{"a": 1}'}, r"hidden=.*expected a JSON list"),
        ({**GOOD, "opts": "[1]"}, r"opts='\[1\]': expected a JSON object"),
        ({**GOOD, "table": 3}, r"table=3: expected a string"),
        ({"lr": "0.1"}, r"'day' has no default"),
    ],
)
def test_bad_params_fail_before_any_request(server, client, package, params, message):
    before = len(server.requests)
    with pytest.raises(ValueError, match=message):
        run(client, package, params, "exp")
    with pytest.raises(ValueError, match=message):
        schedule(client, package, "0 3 * * *", "exp", "job", params)
    assert len(server.requests) == before


def test_unknown_parameter_lists_every_valid_one(package):
    declared = pipeline_parameters(load_pipeline_spec(package))
    with pytest.raises(ValueError) as e:
        check_params(declared, {"learning_rate": "0.1", "lr": "0.1"})
    assert str(e.value) == (
        "unknown pipeline parameter 'learning_rate'; valid: day (str), epochs (int), "
        "hidden (list), lr (float), opts (dict), table (str), use_bn (bool)"
    )


def test_missing_package_names_the_file(client, tmp_path):
    with pytest.raises(ValueError, match=r"missing\.yaml does not exist"):
        run(client, tmp_path / "missing.yaml", GOOD, "exp")
    (tmp_path / "other.yaml").write_text("a: 1\n")
    with pytest.raises(ValueError, match="not a compiled KFP pipeline spec"):
        upload(client, tmp_path / "other.yaml")


# -------------------------------------------------------------------- schedule


def test_schedule_sends_cron_concurrency_and_parameters(server, client, package):
    result = schedule(
        client,
        package,
        "0 3 * * *",
        "deepfm-exp",
        "nightly",
        {**GOOD, "epochs": "2"},
        max_concurrency=3,
        no_catchup=False,
    )
    (request,) = server.calls("POST", "/recurringruns")
    body = request.json()
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * *"}}
    assert body["max_concurrency"] == 3 and body["no_catchup"] is False
    assert body["mode"] == "ENABLE" and body["display_name"] == "nightly"
    assert body["runtime_config"]["parameters"] == {**GOOD, "epochs": 2}
    assert body["pipeline_spec"]["pipelineInfo"]["name"] == "toy-ctr"
    (experiment,) = server.experiments.values()
    assert body["experiment_id"] == experiment["experiment_id"] == result["experiment_id"]
    assert result["cron"] == "0 0 3 * * *"
    assert result["url"] == f"{server.url}/#/recurringrun/details/{result['recurring_run_id']}"


@pytest.mark.parametrize(
    ("cron", "max_concurrency", "message"),
    [
        ("0 3 * *", 1, "expected 5 fields"),
        ("0 0 3 * * * 2026", 1, "expected 5 fields"),
        ("0 25 * * *", 1, "hour field '25'"),
        ("0 3 * * *", 0, "--max-concurrency 0: KFP allows 1 to 10"),
        ("0 3 * * *", 11, "--max-concurrency 11"),
    ],
)
def test_bad_schedule_fails_before_any_request(
    server, client, package, cron, max_concurrency, message
):
    before = len(server.requests)
    with pytest.raises(ValueError, match=message):
        schedule(client, package, cron, "exp", "job", GOOD, max_concurrency=max_concurrency)
    assert len(server.requests) == before


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        ("0 3 * * *", "0 0 3 * * *"),
        ("*/15 * * * *", "0 */15 * * * *"),
        ("30 2 1,15 * mon-fri", "0 30 2 1,15 * mon-fri"),
        ("0 0 9 ? * 2-6", "0 0 9 ? * 2-6"),
        ("0 0 0 1 JAN-MAR/2 SUN", "0 0 0 1 JAN-MAR/2 SUN"),
        ("  0   3 * * *  ", "0 0 3 * * *"),
    ],
)
def test_kfp_cron_converts_five_fields_and_keeps_six(cron, expected):
    assert kfp_cron(cron) == expected


@pytest.mark.parametrize(
    ("cron", "field"),
    [
        ("60 * * * *", "minute"),
        ("0 3 32 * *", "day-of-month"),
        ("0 3 * 13 *", "month"),
        ("0 3 * * 7", "day-of-week"),
        ("0 3 * * FUNDAY", "day-of-week"),
        ("5-1 * * * *", "minute"),
        ("*/0 * * * *", "minute"),
        ("? * * * *", "minute"),
        ("0 3 ,1 * *", "day-of-month"),
        ("@daily x y z w", "minute"),
        # croniter's extensions that the KFP backend's robfig/cron does not take
        ("0 3 L * *", "day-of-month"),
        ("0 3 15W * *", "day-of-month"),
        ("0 3 * * 1#2", "day-of-week"),
        ("0 3 * * 5L", "day-of-week"),
        ("0 3 * * 0-7", "day-of-week"),
        ("0 3 * * SAT-SUN", "day-of-week"),
        ("H * * * *", "minute"),
        ("0 3 * MON *", "month"),
    ],
)
def test_kfp_cron_rejects_malformed_fields(cron, field):
    with pytest.raises(ValueError, match=rf"^--cron '.*': {field} field "):
        kfp_cron(cron)


def test_kfp_cron_rejects_wrong_field_count():
    for cron in ("", "@daily", "0 3 * * * * *"):
        with pytest.raises(ValueError, match="expected 5 fields"):
            kfp_cron(cron)


# ------------------------------------------------------------------------- CLI


def _cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="deepfm")
    commands = parser.add_subparsers(dest="command", required=True)
    pipeline = commands.add_parser("pipeline").add_subparsers(dest="pipeline_command")
    add_pipeline_client_commands(pipeline)
    args = parser.parse_args(["pipeline", *argv])
    args.func(args)


def test_cli_prints_ids_and_writes_no_secret(tmp_path, server, token, package, capsys):
    target = ["--host", server.url, "--package", str(package)]
    _cli(["upload", *target, "--name", "deepfm-ctr"])
    uploaded = json.loads(capsys.readouterr().out)
    _cli(["run", *target, "--param", "day=2026-11-27", "--param", "lr=0.5", "--no-caching"])
    started = json.loads(capsys.readouterr().out)
    _cli(["schedule", *target, "--cron", "0 3 * * *", "--param", "day=x", "--max-concurrency", "2"])
    out, err = capsys.readouterr()
    scheduled = json.loads(out)

    assert uploaded["pipeline_id"] in server.pipelines
    assert started["run_id"] in server.runs
    run_body = server.runs[started["run_id"]]
    assert run_body["runtime_config"]["parameters"] == {"day": "2026-11-27", "lr": 0.5}
    assert server.experiments[run_body["experiment_id"]]["display_name"] == "toy-ctr"
    job = server.recurring_runs[scheduled["recurring_run_id"]]
    assert job["display_name"] == "toy-ctr-recurring" and job["max_concurrency"] == 2
    assert job["no_catchup"] is True
    assert "Experiment details:" in err  # kfp's own link lines go to stderr
    assert {r.headers["authorization"] for r in server.requests} == {f"Bearer {token}"}

    assert token not in out + err
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(token.encode() not in p.read_bytes() for p in written)
    assert token.encode() not in package.read_bytes()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--param", "lr=fast", "--param", "day=x"], "lr='fast'"),
        (["run", "--param", "lr"], "--param 'lr': expected KEY=VALUE"),
        (["run", "--param", "lr=1", "--param", "lr=2"], "--param 'lr=2': lr is given twice"),
        (["run", "--param", "learning_rate=1"], "unknown pipeline parameter 'learning_rate'"),
        (["schedule", "--cron", "every day"], "--cron 'every day'"),
        (["schedule", "--cron", "0 3 * * *", "--max-concurrency", "20"], "--max-concurrency 20"),
    ],
)
def test_cli_bad_input_is_one_line_and_sends_nothing(server, package, argv, message):
    with pytest.raises(ValueError) as e:
        _cli([*argv, "--host", server.url, "--package", str(package)])
    assert message in str(e.value) and "\n" not in str(e.value)
    assert server.requests == []


def test_cli_missing_package_is_a_value_error(server, tmp_path):
    with pytest.raises(ValueError, match="compile it first"):
        _cli(["upload", "--host", server.url, "--package", str(tmp_path / "none.yaml")])
    assert server.requests == []


def test_cli_api_refusal_and_unreachable_host_are_one_line(server, client, package):
    args = ["upload", "--host", server.url, "--package", str(package), "--version", "v1"]
    _cli(args)  # creates the pipeline
    _cli(args)  # version v1
    with pytest.raises(KfpApiError, match=r"answered 409 Conflict: version 'v1' already exists"):
        _cli(args)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(KfpApiError, match=f"cannot reach the KFP API at {closed}") as e:
        _cli(["upload", "--host", closed, "--package", str(package)])
    assert "\n" not in str(e.value)


def test_toy_spec_declares_every_parameter_type(package):
    declared = pipeline_parameters(load_pipeline_spec(package))
    assert {name: d["parameterType"] for name, d in declared.items()} == {
        "day": "STRING",
        "lr": "NUMBER_DOUBLE",
        "epochs": "NUMBER_INTEGER",
        "use_bn": "BOOLEAN",
        "table": "STRING",
        "hidden": "LIST",
        "opts": "STRUCT",
    }
    assert yaml.safe_load(package.read_text())["pipelineInfo"]["name"] == "toy-ctr"


# ------------------------------------------- the uploaded version, caching, root, 401


@pytest.fixture(scope="module")
def platform_package(tmp_path_factory):
    """The toy pipeline with a Kubernetes platform document (two YAML documents)."""
    from kfp import kubernetes

    @dsl.pipeline(name="toy-ctr")
    def with_settings(day: str, lr: float = 0.01):
        task = train(day=day, lr=lr, epochs=1, use_bn=True, hidden=[1], opts={})
        kubernetes.use_config_map_as_env(task, "deepfm-settings", {"A": "A"}, optional=True)

    path = tmp_path_factory.mktemp("platform") / "toy_platform.yaml"
    compiler.Compiler().compile(with_settings, str(path))
    assert len(list(yaml.safe_load_all(path.read_text()))) == 2
    return path


def test_run_and_schedule_use_the_uploaded_version_holding_the_package(
    server, client, package, platform_package
):
    upload(client, package, version="plain")  # the pipeline; the server names it toy-ctr
    with_platform = upload(client, platform_package, version="with-settings")
    plain_version = server.versions[with_platform["pipeline_id"]][0]["pipeline_version_id"]

    started = run(client, platform_package, GOOD, "exp", service_account="deepfm-pipeline")
    scheduled = schedule(client, package, "0 3 * * *", "exp", "nightly", GOOD)
    run_body = server.calls("POST", "/runs")[0].json()
    job_body = server.calls("POST", "/recurringruns")[0].json()
    # the newest version is not taken blindly: each request names the version whose spec
    # (and platform document) is the package's, and carries no spec of its own
    assert run_body["pipeline_version_reference"] == {
        "pipeline_id": with_platform["pipeline_id"],
        "pipeline_version_id": with_platform["version_id"],
    }
    assert job_body["pipeline_version_reference"]["pipeline_version_id"] == plain_version
    assert "pipeline_spec" not in run_body and "pipeline_spec" not in job_body
    assert started["pipeline_version_id"] == with_platform["version_id"]
    assert scheduled["pipeline_version_id"] == plain_version


def test_without_a_matching_version_the_package_is_submitted(server, client, package, tmp_path):
    other = tmp_path / "other.yaml"
    spec = yaml.safe_load(package.read_text())
    spec["root"]["inputDefinitions"]["parameters"]["lr"]["defaultValue"] = 0.5
    other.write_text(yaml.safe_dump(spec))
    upload(client, other)  # same pipeline name, another spec
    started = run(client, package, GOOD, "exp")
    body = server.calls("POST", "/runs")[0].json()
    assert started["pipeline_version_id"] is None and "pipeline_version_reference" not in body
    assert body["pipeline_spec"]["root"] == load_pipeline_spec(package)["root"] != spec["root"]


@pytest.mark.parametrize("command", ["run", "schedule"])
@pytest.mark.parametrize("caching", [True, False])
def test_cli_caching_service_account_and_pipeline_root_reach_the_server(
    server, token, package, capsys, command, caching
):
    target = ["--host", server.url, "--package", str(package), "--param", "day=x"]
    _cli(["upload", "--host", server.url, "--package", str(package)])
    capsys.readouterr()
    extra = ["--cron", "0 3 * * *"] if command == "schedule" else []
    flags = [
        "--caching" if caching else "--no-caching",
        "--service-account",
        "deepfm-pipeline",
        "--pipeline-root",
        "gs://deepfm-models/pipeline-root",
        "--run-name",
        "nightly-ctr",
    ]
    _cli([command, *target, *extra, *flags])
    result = json.loads(capsys.readouterr().out)
    path = "/runs" if command == "run" else "/recurringruns"
    (request,) = server.calls("POST", path)
    body = request.json()
    assert body["service_account"] == "deepfm-pipeline"
    assert body["runtime_config"]["pipeline_root"] == "gs://deepfm-models/pipeline-root"
    assert body["display_name"] == "nightly-ctr"
    # a caching override is a spec of its own: the package goes, every task set as asked
    assert "pipeline_version_reference" not in body and result["pipeline_version_id"] is None
    task = body["pipeline_spec"]["root"]["dag"]["tasks"]["train"]
    assert task["cachingOptions"].get("enableCache", False) is caching


def test_cli_run_without_flags_runs_the_uploaded_version_with_its_caching(
    server, token, package, capsys
):
    _cli(["upload", "--host", server.url, "--package", str(package)])
    uploaded = json.loads(capsys.readouterr().out)
    _cli(["run", "--host", server.url, "--package", str(package), "--param", "day=x"])
    body = server.calls("POST", "/runs")[0].json()
    assert body["pipeline_version_reference"]["pipeline_version_id"] == uploaded["version_id"]
    assert "service_account" not in body or not body["service_account"]
    assert not body["runtime_config"].get("pipeline_root")


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_token_is_one_line_naming_the_status_and_host_at_once(
    token, package, caplog, status
):
    import time

    with FakeKfpServer(refuse_with=status) as refusing:
        t0 = time.perf_counter()
        with pytest.raises(KfpApiError) as e:
            _cli(["run", "--host", refusing.url, "--package", str(package), "--param", "day=x"])
        elapsed = time.perf_counter() - t0
        assert len(refusing.calls("GET", "/healthz")) == 1  # no retries
    message = str(e.value)
    assert message.startswith(f"KFP API at {refusing.url} answered {status} ")
    assert "Unauthenticated request" in message and "\n" not in message
    assert exit_status(e.value) == 2
    assert elapsed < 3  # kfp's own health check retries for 25 s
    assert not [r for r in caplog.records if r.exc_info]  # no retry tracebacks logged


def test_a_server_answering_500_is_one_line_after_bounded_retries(token, package, caplog):
    """A broken server (500 on /healthz) is retried a bounded number of times, seconds
    not kfp's 25, with no traceback logged; then one line naming the host and status."""
    import time

    from pipelines.kfp_client import HEALTHZ_RETRIES

    with FakeKfpServer(refuse_with=500) as broken:
        t0 = time.perf_counter()
        with pytest.raises(KfpApiError) as e:
            _cli(["run", "--host", broken.url, "--package", str(package), "--param", "day=x"])
        elapsed = time.perf_counter() - t0
        assert len(broken.calls("GET", "/healthz")) == HEALTHZ_RETRIES + 1
        assert not broken.calls("POST", "/runs")
    message = str(e.value)
    assert message.startswith(f"KFP API at {broken.url} answered 500 ") and "\n" not in message
    assert exit_status(e.value) == 2
    assert 1.4 < elapsed < 5  # 0.5 s + 1 s between the three tries
    assert not [r for r in caplog.records if r.exc_info]
