"""Rolling a blessed model out through KServe: patch the InferenceService so that KServe
serves the version the registry's pointer names, instead of every replica polling the
pointer on its own.

    deepfm rollout --destination gs://BUCKET/deepfm [--name deepfm] [--namespace deepfm]
                   [--canary-percent 10]

The patch (a JSON merge patch, what the Kubernetes client sends for custom objects) sets the
model's storage URI (``STORAGE_URI`` of the predictor's ``kserve-container``, which KServe's
storage initializer downloads to ``/mnt/models``; or ``predictor.model.storageUri`` for a
service on a ServingRuntime), records the version in the ``deepfm.io/model-version``
annotation and sets ``canaryTrafficPercent``: with N < 100 KServe sends N% of the traffic
to the new revision and the rest to the last ready one (Serverless mode only); 100 or none
promotes it (the field is removed). It carries the resourceVersion it was computed from, so
an InferenceService changed in between is not overwritten (HTTP 409: run it again).
"""

from __future__ import annotations

import argparse
import copy
import os
from dataclasses import dataclass
from typing import Any

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
MODE = "serving.kserve.io/deploymentMode"
MODEL_VERSION = "deepfm.io/model-version"
STORAGE_URI = "STORAGE_URI"
CONTAINER = "kserve-container"


class RolloutConflict(RuntimeError):
    """The InferenceService changed while the rollout was being applied."""


@dataclass(frozen=True)
class Rollout:
    """What a rollout did: the service, the model it serves now and the patch sent (None
    when the service already served that model with that traffic split)."""

    name: str
    namespace: str
    version: str
    storage_uri: str
    canary_percent: int | None
    patch: dict[str, Any] | None


def rollout_patch(
    isvc: dict[str, Any], storage_uri: str, version: str, canary_percent: int | None = None
) -> dict[str, Any] | None:
    """The merge patch that makes ``isvc`` (the object as read from the API) serve
    ``storage_uri`` as ``version`` with ``canary_percent`` of the traffic (None or 100: all
    of it). None when nothing would change. ValueError naming the setting at fault."""
    if "://" not in storage_uri:
        raise ValueError(
            f"model uri {storage_uri!r}: KServe downloads a URI (gs://, s3://, pvc://, "
            "https://...); push the model to a bucket or volume first"
        )
    if canary_percent is not None and not 0 <= canary_percent <= 100:
        raise ValueError(f"--canary-percent must be in 0..100, got {canary_percent}")
    metadata = isvc.get("metadata", {})
    name = metadata.get("name", "?")
    annotations = metadata.get("annotations") or {}
    canary = None if canary_percent in (None, 100) else canary_percent
    if canary is not None and annotations.get(MODE) == "RawDeployment":
        raise ValueError(
            f"--canary-percent {canary_percent}: InferenceService {name} runs in RawDeployment "
            "mode, which has no traffic split; roll out with 100 (or none)"
        )
    predictor = isvc.get("spec", {}).get("predictor", {})
    spec_patch: dict[str, Any] = {}
    if "model" in predictor:  # a ServingRuntime serves it
        current = predictor["model"].get("storageUri")
        if current != storage_uri:
            spec_patch["model"] = {"storageUri": storage_uri}
    else:
        containers = copy.deepcopy(predictor.get("containers") or [])
        named = [i for i, c in enumerate(containers) if c.get("name") == CONTAINER]
        if not named and len(containers) != 1:
            raise ValueError(
                f"InferenceService {name}: no predictor container {CONTAINER!r} to set "
                f"{STORAGE_URI} on (containers: {[c.get('name') for c in containers]})"
            )
        container = containers[named[0] if named else 0]
        env = container.setdefault("env", [])
        entry = next((e for e in env if e.get("name") == STORAGE_URI), None)
        if entry is None:
            env.append({"name": STORAGE_URI, "value": storage_uri})
        elif entry.get("value") != storage_uri or "valueFrom" in entry:
            entry.clear()
            entry.update(name=STORAGE_URI, value=storage_uri)
        if containers != predictor.get("containers"):
            spec_patch["containers"] = containers  # a merge patch replaces lists whole
    if predictor.get("canaryTrafficPercent") != canary:
        spec_patch["canaryTrafficPercent"] = canary  # None removes it
    if not spec_patch and annotations.get(MODEL_VERSION) == version:
        return None
    return {
        "metadata": {
            "annotations": {MODEL_VERSION: version},
            "resourceVersion": metadata.get("resourceVersion"),
        },
        "spec": {"predictor": spec_patch},
    }


def custom_objects_api(kubeconfig: str | None = None) -> Any:
    """A ``CustomObjectsApi`` from the pod's service account, else ``kubeconfig``
    (default: ``$KUBECONFIG``, else ``~/.kube/config``)."""
    from kubernetes import client, config

    if kubeconfig is None:
        try:
            config.load_incluster_config()
            return client.CustomObjectsApi()
        except config.ConfigException:
            pass
    try:  # $KUBECONFIG as it is now (the client reads it once, when imported)
        config.load_kube_config(config_file=kubeconfig or os.environ.get("KUBECONFIG"))
    except (config.ConfigException, OSError) as e:
        raise ValueError(f"--kubeconfig: no Kubernetes cluster configured ({e})") from None
    return client.CustomObjectsApi()


def rollout(
    name: str,
    namespace: str,
    storage_uri: str,
    version: str,
    canary_percent: int | None = None,
    api: Any = None,
) -> Rollout:
    """Make InferenceService ``namespace/name`` serve ``storage_uri`` (see the module
    docstring). ``api``: a kubernetes ``CustomObjectsApi`` (default: ``custom_objects_api()``).
    ValueError when the service is missing or the setting is wrong; RolloutConflict when
    the service changed meanwhile."""
    from kubernetes.client.exceptions import ApiException

    api = api or custom_objects_api()
    where = f"InferenceService {namespace}/{name}"
    try:
        isvc = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as e:
        if e.status == 404:
            raise ValueError(f"--name {name} --namespace {namespace}: no {where}") from None
        raise ValueError(f"{where}: the API server answered {e.status} {e.reason}") from None
    patch = rollout_patch(isvc, storage_uri, version, canary_percent)
    if patch is not None:
        try:
            api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, patch)
        except ApiException as e:
            if e.status == 409:
                raise RolloutConflict(f"{where} changed during the rollout; run it again") from None
            raise ValueError(
                f"{where}: the API server refused the patch: {e.status} {e.reason}"
            ) from None
    return Rollout(name, namespace, version, storage_uri, canary_percent, patch)


def rollout_current(
    destination: str,
    name: str,
    namespace: str,
    canary_percent: int | None = None,
    api: Any = None,
) -> Rollout:
    """Roll out the model that the registry at ``destination`` names current."""
    from registry.model_registry import read_current

    pointer = read_current(destination)
    if pointer is None:
        raise ValueError(f"--destination {destination}: nothing was pushed there")
    return rollout(name, namespace, pointer["uri"], pointer["version"], canary_percent, api)


# ------------------------------------------------------------------------------ the CLI


def add_rollout_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``rollout`` on the ``deepfm`` command's subparsers."""
    parser = subparsers.add_parser(
        "rollout", help="make a KServe InferenceService serve the registry's current model"
    )
    parser.add_argument(
        "--destination", required=True, help="the registry (gs://bucket/prefix) pushed to"
    )
    parser.add_argument("--name", default="deepfm", help="the InferenceService")
    parser.add_argument("--namespace", default="deepfm")
    parser.add_argument(
        "--canary-percent",
        type=int,
        help="traffic for the new model while the old one serves the rest (Serverless "
        "mode); none or 100: all of it",
    )
    parser.add_argument("--kubeconfig", help="default: in-cluster, else ~/.kube/config")
    parser.set_defaults(func=cmd_rollout)


def cmd_rollout(args: argparse.Namespace) -> None:
    api = custom_objects_api(args.kubeconfig)
    done = rollout_current(args.destination, args.name, args.namespace, args.canary_percent, api)
    share = "all" if done.canary_percent in (None, 100) else f"{done.canary_percent}%"
    state = "unchanged, already serving" if done.patch is None else "now serving"
    print(
        f"InferenceService {done.namespace}/{done.name}: {state} {done.version} "
        f"({done.storage_uri}) with {share} of the traffic"
    )
