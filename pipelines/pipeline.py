"""The DeepFM Kubeflow pipeline: wiring only.

    validate -> features -> train -> evaluate -> dsl.If(blessed): push / dsl.Else: record

Compile-time options (``PipelineOptions``: image, GPUs, node selector, tolerations,
resources) shape the tasks; run-time parameters (window, feature repo, model config, gate
thresholds, push destination, epoch/batch overrides) have defaults that work when a run is
started from the Kubeflow UI in a cluster set up as in ``manifests/``.
"""

from dataclasses import dataclass, field

from kfp import compiler, dsl, kubernetes

from components.evaluate import evaluate
from components.features import features
from components.push import push, record_not_pushed
from components.train import train, train_trainjob
from components.validate import require_valid_data, validate
from pipelines.defaults import (
    DEFAULT_ACCELERATOR_TYPE,
    DEFAULT_DESTINATION,
    DEFAULT_FEATURE_REPO,
    DEFAULT_IMAGE,
    DEFAULT_NUM_NODES,
    DEFAULT_TRAIN_CPU,
    DEFAULT_TRAIN_MEMORY,
    DEFAULT_TRAINER,
    PIPELINE_NAME,
)


@dataclass
class Toleration:
    key: str
    operator: str = "Exists"
    value: str | None = None
    effect: str | None = None


@dataclass
class PipelineOptions:
    """Compile-time settings of the tasks (not visible as run parameters)."""

    image: str = DEFAULT_IMAGE
    gpus: int = 0
    accelerator_type: str = DEFAULT_ACCELERATOR_TYPE
    train_cpu: str = DEFAULT_TRAIN_CPU
    train_memory: str = DEFAULT_TRAIN_MEMORY
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[Toleration] = field(default_factory=list)
    push_destination: str = DEFAULT_DESTINATION
    feature_repo: str = DEFAULT_FEATURE_REPO
    # "local": train in the step's own pod; "trainjob": the step launches a Kubeflow
    # Trainer TrainJob of num_nodes nodes (the GPUs, node selector and tolerations above
    # apply to each node) and collects its model (needs a gs:// pipeline root).
    trainer: str = DEFAULT_TRAINER
    num_nodes: int = DEFAULT_NUM_NODES

    def __post_init__(self) -> None:
        if self.trainer not in ("local", "trainjob"):
            raise ValueError(f"trainer must be 'local' or 'trainjob', got {self.trainer!r}")
        if self.num_nodes < 1:
            raise ValueError(f"num_nodes must be >= 1, got {self.num_nodes}")
        if self.gpus < 0:
            raise ValueError(f"gpus must be >= 0, got {self.gpus}")


def build_pipeline(options: PipelineOptions | None = None):
    """The ``@dsl.pipeline`` function for these compile-time options."""
    opts = options or PipelineOptions()

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="DeepFM CTR ranking: validate -> Feast features -> train -> "
        "evaluate/gate on AUC -> push the blessed model",
    )
    def deepfm_pipeline(
        feature_repo: str = opts.feature_repo,
        window_end: str = "",
        window_days: float = 7.0,
        eval_fraction: float = 0.1,
        model_config: str = "configs/deepfm.yaml",
        min_auc: float = 0.70,
        max_auc_drop: float = 0.005,
        push_destination: str = opts.push_destination,
        model_version: str = "",
        epochs: int = 0,
        batch_size: int = 0,
    ):
        validated = validate(
            feature_repo=feature_repo, window_end=window_end, window_days=window_days
        ).set_display_name("validate raw data")
        validated.set_container_image(opts.image)
        checked = require_valid_data(
            passed=validated.outputs["passed"], failures=validated.outputs["failures"]
        ).set_display_name("stop on invalid data")
        checked.set_container_image(opts.image)
        data = (
            features(
                feature_repo=feature_repo,
                window_end=window_end,
                window_days=window_days,
                eval_fraction=eval_fraction,
            )
            .after(checked)
            .set_display_name("features from Feast")
            .set_container_image(opts.image)
        )
        inputs = {
            "train_data": data.outputs["train_data"],
            "eval_data": data.outputs["eval_data"],
            "model_config": model_config,
            "epochs": epochs,
            "batch_size": batch_size,
        }
        if opts.trainer == "trainjob":
            trained = train_trainjob(
                **inputs, image=opts.image, num_nodes=opts.num_nodes, workspace_path=""
            ).set_display_name(f"train DeepFM on a {opts.num_nodes}-node TrainJob")
        else:
            trained = train(**inputs).set_display_name("train DeepFM")
        trained.set_container_image(opts.image)
        trained.set_cpu_request(opts.train_cpu).set_memory_request(opts.train_memory)
        if opts.gpus > 0:
            trained.set_accelerator_type(opts.accelerator_type).set_accelerator_limit(opts.gpus)
        for key, value in opts.node_selector.items():
            kubernetes.add_node_selector(trained, label_key=key, label_value=value)
        for t in opts.tolerations:
            kubernetes.add_toleration(
                trained, key=t.key, operator=t.operator, value=t.value, effect=t.effect
            )
        evaluated = evaluate(
            model=trained.outputs["model"],
            eval_data=data.outputs["eval_data"],
            push_destination=push_destination,
            min_auc=min_auc,
            max_auc_drop=max_auc_drop,
        ).set_display_name("evaluate and gate")
        evaluated.set_container_image(opts.image)
        with dsl.If(evaluated.outputs["blessed"] == True, name="blessed"):  # noqa: E712
            push(
                model=trained.outputs["model"],
                destination=push_destination,
                version=model_version,
                auc=evaluated.outputs["auc"],
            ).set_display_name("push blessed model").set_retry(
                2, backoff_duration="30s"
            ).set_container_image(opts.image)
        with dsl.Else(name="not-blessed"):
            record_not_pushed(
                auc=evaluated.outputs["auc"],
                baseline_auc=evaluated.outputs["baseline_auc"],
                reason="the evaluation did not bless the model",
            ).set_display_name("record: not pushed").set_container_image(opts.image)

    return deepfm_pipeline


def compile_pipeline(path: str, options: PipelineOptions | None = None) -> str:
    """Write the pipeline spec (YAML) to ``path``; returns the path."""
    compiler.Compiler().compile(build_pipeline(options), package_path=path)
    return path
