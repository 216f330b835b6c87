"""Upload, run and schedule the compiled pipeline on a Kubeflow Pipelines cluster.

    deepfm pipeline upload   --host URL [--name N] [--version V] [--package deepfm_pipeline.yaml]
    deepfm pipeline run      --host URL [--experiment E] [--run-name R] [--param k=v ...]
    deepfm pipeline schedule --host URL --cron "0 3 * * *" [--job-name J] [--param k=v ...]
        both: [--service-account SA] [--pipeline-root gs://...] [--caching|--no-caching]

``run`` and ``schedule`` start the uploaded version whose spec is the package's when there
is one (``find_uploaded_version``), so the UI links the runs to it; otherwise, and with a
caching override, they submit the package.

Everything goes through ``kfp.Client`` (kfp 2.17, REST API v2beta1). The input is a
compiled pipeline spec (IR YAML); its ``root.inputDefinitions`` is the one source of the
parameter names and types, so a bad ``--param`` fails here, before any request.

Authentication comes from the environment only, never from a file in the repo:

1. ``$KFP_EXISTING_TOKEN``: a bearer token made outside the SDK (e.g. ``gcloud auth
   print-access-token``, or an OIDC token for the Kubeflow gateway). The name is the
   one kfp's own CLI reads for ``kfp --existing-token`` (click prefix ``KFP``).
2. Otherwise, inside a pod: the projected service-account token at
   ``$KF_PIPELINES_SA_TOKEN_PATH`` (default ``/var/run/secrets/kubeflow/pipelines/token``),
   re-read before every request, as the Kubeflow docs set up for in-cluster access.
3. Otherwise kfp.Client's own mechanisms: ``$KF_PIPELINES_IAP_OAUTH2_CLIENT_ID`` (IAP),
   an inverse-proxy host (gcloud credentials), or nothing (a ``kubectl port-forward``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import logging
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from common.params import parse_assignments

if TYPE_CHECKING:  # kfp is imported where a client is made: the CLI starts without it
    import kfp

log = logging.getLogger("deepfm.kfp")
TOKEN_ENV = "KFP_EXISTING_TOKEN"
# /healthz answering 5xx (or not at all): retried this often, after 0.5 s then 1 s
HEALTHZ_RETRIES = 2
HEALTHZ_BACKOFF_S = 0.5
DEFAULT_PACKAGE = "deepfm_pipeline.yaml"

# KFP's parameter types (pipeline_spec.proto ParameterType) and their Python names.
PARAMETER_TYPES = {
    "NUMBER_DOUBLE": "float",
    "NUMBER_INTEGER": "int",
    "BOOLEAN": "bool",
    "STRING": "str",
    "LIST": "list",
    "STRUCT": "dict",
}
_BOOLEAN_WORDS = {"true": True, "1": True, "false": False, "0": False}

# The backend parses the schedule with robfig/cron v1: six fields, seconds first. A
# five-field crontab would be read as "second minute hour day month", so it is converted.
# Each field: its name, its values, and whether it takes names (JAN, MON).
_CRON_FIELDS = (
    ("second", "0-59", False),
    ("minute", "0-59", False),
    ("hour", "0-23", False),
    ("day-of-month", "1-31", False),
    ("month", "1-12", True),
    ("day-of-week", "0-6", True),
)
MAX_CONCURRENCY = 10  # the backend refuses a recurring run outside 1..10


class KfpApiError(RuntimeError):
    """The KFP API refused a request or could not be reached (one line)."""


# ------------------------------------------------------------------------ client


def make_client(host: str, namespace: str | None = None) -> kfp.Client:
    """A ``kfp.Client`` for the KFP API at ``host``, authenticated from the environment.

    Args:
        host: the API endpoint, e.g. ``http://localhost:8080`` (a port-forward of
            ``ml-pipeline-ui``) or ``https://kubeflow.example.com/pipeline``.
        namespace: the profile namespace of a multi-user deployment; ``None`` lets
            kfp ask the server (``/healthz``) and use the pod's namespace if multi-user.

    The token, if any, is taken from ``$KFP_EXISTING_TOKEN`` or the projected service
    account token (see the module docstring); it is kept in memory only.
    """
    from kfp.client import (
        KF_PIPELINES_SA_TOKEN_ENV,
        KF_PIPELINES_SA_TOKEN_PATH,
        ServiceAccountTokenVolumeCredentials,
    )

    if not host:
        raise ValueError("--host: the KFP API URL is required, e.g. http://localhost:8080")
    token = os.environ.get(TOKEN_ENV) or None
    credentials = None
    sa_token_path = os.environ.get(KF_PIPELINES_SA_TOKEN_ENV) or KF_PIPELINES_SA_TOKEN_PATH
    if token is None and os.path.isfile(sa_token_path):
        credentials = ServiceAccountTokenVolumeCredentials(sa_token_path)
    kwargs: dict[str, Any] = {} if namespace is None else {"namespace": namespace}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "This client only works with", FutureWarning)
        return _client_class()(host=host, existing_token=token, credentials=credentials, **kwargs)


def _client_class() -> type:
    """``kfp.Client`` whose health check gives one answer fast: kfp retries any error of
    ``/healthz`` 5 times, 5 s apart, logging a traceback each time, which for a refusal
    (401/403: no or a wrong token) or a broken server (500) only delays the same answer by
    25 s. Here a 4xx is raised at once, a 5xx retried ``HEALTHZ_RETRIES`` times after
    ``HEALTHZ_BACKOFF_S`` (doubling) without a traceback, then raised: ``_api_errors`` makes
    it one line naming the host and the status."""
    import kfp
    import kfp_server_api

    class Client(kfp.Client):
        def get_kfp_healthz(self, sleep_duration: int = 5):
            delay = HEALTHZ_BACKOFF_S
            for attempt in range(HEALTHZ_RETRIES + 1):
                try:
                    return self._healthz_api.healthz_service_get_healthz()
                except kfp_server_api.ApiException as e:
                    transient = not e.status or e.status >= 500
                    if not transient or attempt == HEALTHZ_RETRIES:
                        raise
                    log.debug("KFP /healthz answered %s %s; retrying", e.status, e.reason)
                time.sleep(delay)
                delay *= 2

    return Client


# -------------------------------------------------------------- the compiled spec


def load_pipeline_spec(package_path: str | Path) -> dict:
    """The pipeline spec (first YAML document) of a compiled package, as a dict.

    Raises ValueError naming the file when it is missing or not a compiled KFP pipeline.
    """
    path = Path(package_path)
    if not path.is_file():
        raise ValueError(
            f"pipeline package {path} does not exist "
            f"(compile it first: deepfm pipeline compile -o {path})"
        )
    if path.suffix not in (".yaml", ".yml"):
        raise ValueError(f"pipeline package {path}: expected a compiled pipeline YAML (.yaml)")
    try:
        spec = next(yaml.safe_load_all(path.read_text()), None)
    except yaml.YAMLError as e:
        raise ValueError(f"pipeline package {path} is not valid YAML: {e}") from None
    if not isinstance(spec, dict) or "root" not in spec or "pipelineInfo" not in spec:
        raise ValueError(f"pipeline package {path} is not a compiled KFP pipeline spec")
    return spec


def pipeline_parameters(spec: dict) -> dict[str, dict]:
    """The pipeline's parameters: ``{name: {"parameterType": "NUMBER_DOUBLE", ...}}``.

    Each entry is the compiled ``root.inputDefinitions.parameters.<name>``, with
    ``defaultValue`` and ``isOptional`` when the pipeline function has a default.
    """
    return spec["root"].get("inputDefinitions", {}).get("parameters", {})


def check_params(declared: dict[str, dict], params: dict[str, Any]) -> dict[str, Any]:
    """``params`` checked against the declared parameters and coerced to their types.

    Strings (from ``--param``) are parsed: ``"0.7"`` -> 0.7 for NUMBER_DOUBLE, ``"3"``
    -> 3 for NUMBER_INTEGER, ``"true"``/``"false"``/``"1"``/``"0"`` for BOOLEAN, JSON for
    LIST (``"[64, 32]"``) and STRUCT (``'{"a": 1}'``); STRING is taken as given.

    Raises ValueError naming an unknown parameter (and listing the valid ones), a value
    that does not fit its type, or a required parameter (no default) left out.
    """
    unknown = sorted(set(params) - set(declared))
    if unknown:
        valid = ", ".join(
            f"{name} ({PARAMETER_TYPES.get(d.get('parameterType'), d.get('parameterType'))})"
            for name, d in sorted(declared.items())
        )
        raise ValueError(
            f"unknown pipeline parameter {', '.join(map(repr, unknown))}; valid: {valid or 'none'}"
        )
    missing = [
        name
        for name, d in sorted(declared.items())
        if name not in params and "defaultValue" not in d and not d.get("isOptional")
    ]
    if missing:
        raise ValueError(f"pipeline parameter {missing[0]!r} has no default and was not given")
    return {
        name: _coerce(name, value, declared[name].get("parameterType", ""))
        for name, value in params.items()
    }


def _coerce(name: str, value: Any, parameter_type: str) -> Any:
    def bad(expected: str) -> ValueError:
        return ValueError(f"pipeline parameter {name}={value!r}: expected {expected}")

    if parameter_type == "NUMBER_DOUBLE":
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise bad("a number, e.g. 0.7")
        try:
            number = float(value)
        except ValueError:
            raise bad("a number, e.g. 0.7") from None
        if not math.isfinite(number):
            raise bad("a finite number")
        return number
    if parameter_type == "NUMBER_INTEGER":
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad("an integer, e.g. 3")
    if parameter_type == "BOOLEAN":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOLEAN_WORDS:
            return _BOOLEAN_WORDS[value.strip().lower()]
        raise bad("true or false")
    if parameter_type == "STRING":
        if isinstance(value, str):
            return value
        raise bad("a string")
    if parameter_type in ("LIST", "STRUCT"):
        python_type, expected = (
            (list, "a JSON list, e.g. [64, 32]")
            if parameter_type == "LIST"
            else (dict, 'a JSON object, e.g. {"a": 1}')
        )
        parsed = value
        if isinstance(value, str):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                raise bad(expected) from None
        if isinstance(parsed, tuple):
            parsed = list(parsed)
        if not isinstance(parsed, python_type):
            raise bad(expected)
        return parsed
    return value  # a type callers cannot set, e.g. TASK_FINAL_STATUS: the backend decides


def kfp_cron(cron: str) -> str:
    """The 6-field (seconds first) cron expression KFP's scheduler expects.

    ``"0 3 * * *"`` (crontab: minute hour day month weekday) -> ``"0 0 3 * * *"``; a
    6-field expression such as ``"0 0 9 ? * MON-FRI"`` is checked and kept. Fields take
    ``*``, ``?`` (day fields), numbers, names (JAN, MON), ``a-b``, lists and ``/step``.

    Raises ValueError naming the bad field.
    """
    fields = cron.split()
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise ValueError(
            f"--cron {cron!r}: expected 5 fields (minute hour day-of-month month "
            "day-of-week, e.g. '0 3 * * *') or 6 with seconds first ('0 0 3 * * *')"
        )
    for index, (value, (field, values, _)) in enumerate(zip(fields, _CRON_FIELDS, strict=True)):
        if not _cron_field_ok(index, value):
            raise ValueError(
                f"--cron {cron!r}: {field} field {value!r} is not valid (values {values})"
            )
    return " ".join(fields)


def _cron_field_ok(index: int, value: str) -> bool:
    """Whether croniter reads ``value`` as field ``index`` (0: seconds) of a seconds-first
    expression, within what robfig/cron v1 takes: no extensions (``L``, ``W``, ``#``,
    ``H``), no wrap-around ranges (``5-1``), Sunday only as 0."""
    from croniter import CroniterError, croniter

    field, _, named = _CRON_FIELDS[index]
    if not re.fullmatch(r"[0-9A-Za-z*?,/-]+" if named else r"[0-9*?,/-]+", value):
        return False

    def expand(text: str) -> list:
        expression = ["*"] * 6
        expression[index] = text
        expanded, _ = croniter.expand(" ".join(expression), second_at_beginning=True)
        return expanded[(index - 1) % 6]  # croniter orders them minute ... day-of-week, second

    try:
        expand(value)
        for part in value.split(","):
            ends = part.partition("/")[0].split("-")
            if field == "day-of-week" and any(e.isdigit() and int(e) > 6 for e in ends):
                return False
            if len(ends) == 2 and expand(ends[0])[0] > expand(ends[1])[0]:
                return False
    except CroniterError:
        return False
    return True


def load_package_documents(package_path: str | Path) -> list[dict]:
    """The documents of a compiled package: the pipeline spec, then the platform spec
    (kfp-kubernetes settings) when there is one."""
    load_pipeline_spec(package_path)  # names a missing or wrong file
    return [d for d in yaml.safe_load_all(Path(package_path).read_text()) if d is not None]


def _same_spec(server_spec: Any, documents: list[dict]) -> bool:
    """Whether a pipeline version's ``pipeline_spec`` (as the API returns it: the spec, or
    ``{"pipeline_spec", "platform_spec"}`` for a package with a platform document) is the
    package's. JSON numbers are floats on the server: 3 and 3.0 compare equal."""
    if not isinstance(server_spec, dict):
        return False
    if "pipeline_spec" in server_spec:
        platform = server_spec.get("platform_spec")
        return (
            server_spec["pipeline_spec"] == documents[0]
            and ([platform] if platform else []) == documents[1:]
        )
    return server_spec == documents[0] and len(documents) == 1


def find_uploaded_version(
    client: kfp.Client, package_path: str | Path, name: str | None = None
) -> dict | None:
    """The newest uploaded version of pipeline ``name`` (default: the spec's name) whose
    spec is the package's, as ``{"pipeline_id", "version_id", "version_name"}``; None when
    the pipeline or such a version does not exist."""
    documents = load_package_documents(package_path)
    pipeline_id = client.get_pipeline_id(name or documents[0]["pipelineInfo"]["name"])
    if pipeline_id is None:
        return None
    page_token = ""
    while True:
        page = client.list_pipeline_versions(
            pipeline_id, page_token=page_token, page_size=50, sort_by="created_at desc"
        )
        for version in page.pipeline_versions or []:
            if _same_spec(version.pipeline_spec, documents):
                return {
                    "pipeline_id": pipeline_id,
                    "version_id": version.pipeline_version_id,
                    "version_name": version.display_name,
                }
        page_token = page.next_page_token
        if not page_token:
            return None


# ---------------------------------------------------------------------- actions


def upload(
    client: kfp.Client,
    package_path: str | Path,
    name: str | None = None,
    version: str | None = None,
    description: str | None = None,
) -> dict:
    """Upload the compiled pipeline, or a new version of the pipeline called ``name``.

    Args:
        name: the pipeline's display name; default: the spec's ``pipelineInfo.name``.
        version: the version name when ``name`` already exists; default
            ``<UTC yyyymmdd-hhmmss>-<first 8 hex of the package's sha256>``. A new
            pipeline's first version is named by the server after the pipeline.

    Returns:
        ``{"pipeline_id", "pipeline_name", "version_id", "version_name", "created", "url"}``
        with ``created`` either ``"pipeline"`` or ``"version"``.
    """
    package_path = str(package_path)
    spec = load_pipeline_spec(package_path)
    name = name or spec["pipelineInfo"]["name"]
    pipeline_id = client.get_pipeline_id(name)
    if pipeline_id is None:
        pipeline = client.upload_pipeline(package_path, pipeline_name=name, description=description)
        pipeline_id, created = pipeline.pipeline_id, "pipeline"
        # The server names the first version after the pipeline; ask for its id.
        versions = client.list_pipeline_versions(pipeline_id, page_size=1).pipeline_versions
        pipeline_version = versions[0] if versions else None
    else:
        digest = hashlib.sha256(Path(package_path).read_bytes()).hexdigest()[:8]
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
        pipeline_version = client.upload_pipeline_version(
            package_path,
            pipeline_version_name=version or f"{stamp}-{digest}",
            pipeline_id=pipeline_id,
            description=description,
        )
        created = "version"
    version_id = pipeline_version.pipeline_version_id if pipeline_version else None
    route = f"pipelines/details/{pipeline_id}" + (f"/version/{version_id}" if version_id else "")
    return {
        "pipeline_id": pipeline_id,
        "pipeline_name": name,
        "version_id": version_id,
        "version_name": pipeline_version.display_name if pipeline_version else None,
        "created": created,
        "url": _ui_url(client, route),
    }


def run(
    client: kfp.Client,
    package_path: str | Path,
    params: dict[str, Any],
    experiment: str,
    run_name: str | None = None,
    enable_caching: bool | None = None,
    service_account: str | None = None,
    pipeline_root: str | None = None,
    pipeline_name: str | None = None,
) -> dict:
    """Start one run of the compiled pipeline in ``experiment`` (created if missing): of
    its uploaded version when one holds this very spec (``find_uploaded_version``; the UI
    then links the run to it), else of the package itself.

    Args:
        params: pipeline parameters, strings or values (see ``check_params``); checked
            before any request.
        run_name: default ``"<pipeline name> <UTC yyyy-mm-dd hh-mm-ss>"``.
        enable_caching: ``None`` keeps each task's compiled setting; True/False
            overrides all tasks (the package is then submitted, see ``_version_to_run``).
        service_account: the Kubernetes service account the run's pods use.
        pipeline_root: where the run's artifacts go (e.g. ``gs://bucket/root``; a
            TrainJob trainer needs a gs:// root); ``None``: the server's default.
        pipeline_name: the uploaded pipeline's name (default: the spec's).

    Returns:
        ``{"run_id", "experiment_id", "run_name", "pipeline_version_id", "url"}``
        (``pipeline_version_id`` None: the package was submitted).
    """
    package_path = str(package_path)
    spec = load_pipeline_spec(package_path)
    arguments = check_params(pipeline_parameters(spec), params)
    experiment_id = _experiment_id(client, experiment)
    now = datetime.datetime.now(datetime.UTC)
    run_name = run_name or f"{spec['pipelineInfo']['name']} {now:%Y-%m-%d %H-%M-%S}"
    version = _version_to_run(client, package_path, pipeline_name, enable_caching)
    result = client.run_pipeline(
        experiment_id=experiment_id,
        job_name=run_name,
        params=arguments,
        pipeline_root=pipeline_root,
        enable_caching=enable_caching,
        service_account=service_account,
        **_pipeline_source(package_path, version),
    )
    return {
        "run_id": result.run_id,
        "experiment_id": experiment_id,
        "run_name": run_name,
        "pipeline_version_id": version["version_id"] if version else None,
        "url": _ui_url(client, f"runs/details/{result.run_id}"),
    }


def _version_to_run(
    client: kfp.Client, package_path: str, pipeline_name: str | None, enable_caching: bool | None
) -> dict | None:
    """The uploaded version to run, or None to submit the package: a caching override
    rewrites each task's setting in the spec (kfp.Client drops it for an uploaded version,
    and the API has no run-level switch), so it is a spec of its own, submitted as such."""
    if enable_caching is not None:
        return None
    return find_uploaded_version(client, package_path, pipeline_name)


def _pipeline_source(package_path: str, version: dict | None) -> dict:
    if version is None:
        return {"pipeline_package_path": package_path}
    return {"pipeline_id": version["pipeline_id"], "version_id": version["version_id"]}


def schedule(
    client: kfp.Client,
    package_path: str | Path,
    cron: str,
    experiment: str,
    job_name: str,
    params: dict[str, Any],
    max_concurrency: int = 1,
    no_catchup: bool = True,
    enable_caching: bool | None = None,
    service_account: str | None = None,
    pipeline_root: str | None = None,
    pipeline_name: str | None = None,
) -> dict:
    """Create an enabled recurring run of the compiled pipeline on a cron schedule, of its
    uploaded version when one holds this spec (as ``run``), else of the package. Each run's
    window ends at its scheduled time (the pipeline's default), so the runs of a schedule
    do not share cached steps; ``enable_caching``, ``service_account`` (Workload Identity,
    TrainJob RBAC) and ``pipeline_root`` are as for ``run``.

    Args:
        cron: 5-field crontab (``"0 3 * * *"``: 03:00 every day, in the scheduler's
            time zone, UTC by default) or KFP's 6-field form with seconds first.
        max_concurrency: runs of this job allowed at once, 1..10.
        no_catchup: True starts only the latest missed run after a pause; False
            backfills every missed interval.

    Returns:
        ``{"recurring_run_id", "experiment_id", "job_name", "cron", "pipeline_version_id",
        "url"}``, ``cron`` being the 6-field expression sent.
    """
    package_path = str(package_path)
    cron6 = kfp_cron(cron)
    _check_max_concurrency(max_concurrency)
    spec = load_pipeline_spec(package_path)
    arguments = check_params(pipeline_parameters(spec), params)
    experiment_id = _experiment_id(client, experiment)
    version = _version_to_run(client, package_path, pipeline_name, enable_caching)
    recurring_run = client.create_recurring_run(
        experiment_id=experiment_id,
        job_name=job_name,
        cron_expression=cron6,
        max_concurrency=max_concurrency,
        no_catchup=no_catchup,
        params=arguments,
        pipeline_root=pipeline_root,
        enable_caching=enable_caching,
        service_account=service_account,
        **_pipeline_source(package_path, version),
    )
    return {
        "recurring_run_id": recurring_run.recurring_run_id,
        "experiment_id": experiment_id,
        "job_name": job_name,
        "cron": cron6,
        "pipeline_version_id": version["version_id"] if version else None,
        "url": _ui_url(client, f"recurringrun/details/{recurring_run.recurring_run_id}"),
    }


def _check_max_concurrency(max_concurrency: int) -> None:
    if not 1 <= max_concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"--max-concurrency {max_concurrency}: KFP allows 1 to {MAX_CONCURRENCY}")


def _experiment_id(client: kfp.Client, experiment: str) -> str:
    if not experiment:
        raise ValueError("--experiment: an experiment name is required")
    return client.create_experiment(experiment).experiment_id  # gets it if it exists


def _ui_url(client: kfp.Client, route: str) -> str:
    # kfp's own links use this prefix: $KF_PIPELINES_UI_ENDPOINT, ui_host or the host.
    return f"{client._get_url_prefix()}/#/{route}"


# ------------------------------------------------------------------------- CLI


def add_pipeline_client_commands(pipeline_subparsers: argparse._SubParsersAction) -> None:
    """Add ``upload``, ``run`` and ``schedule`` to the ``deepfm pipeline`` sub-commands.

    Each sets ``func=handler`` (``handler(args) -> None``): it prints one JSON line of
    ids and UI URLs on stdout (kfp's own chatter goes to stderr), raises ValueError on
    bad input and KfpApiError when the API refuses or cannot be reached.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--host", required=True, help="KFP API URL, e.g. http://localhost:8080")
    common.add_argument("--namespace", help="profile namespace (multi-user Kubeflow)")
    common.add_argument(
        "--package", default=DEFAULT_PACKAGE, help=f"compiled pipeline (default {DEFAULT_PACKAGE})"
    )
    with_params = argparse.ArgumentParser(add_help=False)
    with_params.add_argument(
        "--experiment", help="experiment name (default: the pipeline's name); created if missing"
    )
    with_params.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="pipeline parameter, checked against the compiled spec, e.g. --param lr=0.05",
    )
    auth = f"Auth: ${TOKEN_ENV} (bearer token) or the in-cluster service account token."

    up = pipeline_subparsers.add_parser(
        "upload",
        parents=[common],
        help="upload the compiled pipeline, or a new version of it",
        epilog=auth,
    )
    up.add_argument("--name", help="pipeline name (default: the compiled pipelineInfo.name)")
    up.add_argument("--version", help="version name (default: UTC time + package hash)")
    up.add_argument("--description")
    up.set_defaults(func=_cmd_upload)

    with_params.add_argument(
        "--caching",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="override every task's caching (default: as compiled; the window ends at each "
        "run's scheduled time, so runs over different windows never share a cached step)",
    )
    with_params.add_argument(
        "--service-account",
        help="Kubernetes service account of the run's pods, e.g. deepfm-pipeline "
        "(Workload Identity, TrainJob RBAC; default: the server's)",
    )
    with_params.add_argument(
        "--pipeline-root",
        help="where the run's artifacts go, e.g. gs://BUCKET/pipeline-root (a TrainJob "
        "trainer needs gs://; default: the server's)",
    )
    with_params.add_argument(
        "--pipeline-name",
        help="the uploaded pipeline whose version holding this package's spec is run "
        "(default: the compiled pipelineInfo.name); without one the package is submitted",
    )

    rn = pipeline_subparsers.add_parser(
        "run", parents=[common, with_params], help="start a run of the pipeline", epilog=auth
    )
    rn.add_argument("--run-name", help="default: pipeline name + UTC time")
    rn.set_defaults(func=_cmd_run)

    sc = pipeline_subparsers.add_parser(
        "schedule",
        parents=[common, with_params],
        help="create a recurring run on a cron schedule",
        epilog=auth,
    )
    sc.add_argument(
        "--cron",
        required=True,
        help="'0 3 * * *' (crontab, 5 fields) or KFP's 6 fields with seconds first",
    )
    sc.add_argument(
        "--job-name", "--run-name", help="recurring run name (default: <pipeline>-recurring)"
    )
    sc.add_argument("--max-concurrency", type=int, default=1, help="runs at once, 1-10")
    sc.add_argument(
        "--catchup", action="store_true", help="backfill every missed interval after a pause"
    )
    sc.set_defaults(func=_cmd_schedule)


def _cmd_upload(args: argparse.Namespace) -> None:
    load_pipeline_spec(args.package)
    with _api_errors(args.host):
        client = make_client(args.host, args.namespace)
        result = upload(client, args.package, args.name, args.version, args.description)
    print(json.dumps(result))


def _cmd_run(args: argparse.Namespace) -> None:
    spec = load_pipeline_spec(args.package)
    params = check_params(
        pipeline_parameters(spec), parse_assignments(args.param, "--param", typed=False)
    )
    experiment = args.experiment or spec["pipelineInfo"]["name"]
    with _api_errors(args.host):
        client = make_client(args.host, args.namespace)
        result = run(
            client,
            args.package,
            params,
            experiment,
            run_name=args.run_name,
            enable_caching=args.caching,
            service_account=args.service_account,
            pipeline_root=args.pipeline_root,
            pipeline_name=args.pipeline_name,
        )
    print(json.dumps(result))


def _cmd_schedule(args: argparse.Namespace) -> None:
    kfp_cron(args.cron)
    _check_max_concurrency(args.max_concurrency)
    spec = load_pipeline_spec(args.package)
    params = check_params(
        pipeline_parameters(spec), parse_assignments(args.param, "--param", typed=False)
    )
    name = spec["pipelineInfo"]["name"]
    with _api_errors(args.host):
        client = make_client(args.host, args.namespace)
        result = schedule(
            client,
            args.package,
            args.cron,
            args.experiment or name,
            args.job_name or f"{name}-recurring",
            params,
            max_concurrency=args.max_concurrency,
            no_catchup=not args.catchup,
            enable_caching=args.caching,
            service_account=args.service_account,
            pipeline_root=args.pipeline_root,
            pipeline_name=args.pipeline_name,
        )
    print(json.dumps(result))


@contextlib.contextmanager
def _api_errors(host: str) -> Iterator[None]:
    """kfp's link lines go to stderr; an API refusal becomes a one-line KfpApiError."""
    import kfp_server_api
    import urllib3

    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    except kfp_server_api.ApiException as e:
        try:
            message = json.loads(e.body).get("message", "")
        except (TypeError, ValueError, AttributeError):
            message = ""
        raise KfpApiError(
            f"KFP API at {host} answered {e.status} {e.reason}"
            + (f": {message}" if message else "")
        ) from None
    except urllib3.exceptions.HTTPError as e:
        reason = getattr(e, "reason", None) or e
        raise KfpApiError(f"cannot reach the KFP API at {host}: {reason}") from None
