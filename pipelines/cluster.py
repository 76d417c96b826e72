"""Compile-time settings for running on a Kubernetes cluster: image, GPU, resources,
scheduling, secrets. They shape the compiled YAML, not the run's parameters.

Credentials are referenced by Secret name only (``kfp.kubernetes.use_secret_as_env``);
no value is ever written into a compiled pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from entropy_ft.errors import UserError

S3_SECRET_KEYS = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}
MLFLOW_SECRET_KEYS = {"MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
                      "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"}


@dataclass(frozen=True)
class ClusterOptions:
    image: str = ""  # empty: entropy_ft.images.default_image()
    gpu_image: str = ""  # empty: the CUDA variant of the default image
    accelerator_type: str = "nvidia.com/gpu"
    gpus: int = 1  # 0 trains on CPU
    cpu_request: str = "4"
    memory_request: str = "16G"
    memory_limit: str = "32G"
    shm_size: str = "8Gi"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict] = field(default_factory=list)  # {key, operator, value, effect}
    s3_secret: str = "entropy-ft-s3"
    mlflow_secret: str = "entropy-ft-mlflow"
    settings_configmap: str = "entropy-ft-settings"  # MLFLOW_TRACKING_URI, AWS_ENDPOINT_URL (manifests/base/settings.yaml)
    retries: int = 3

    def __post_init__(self) -> None:
        if self.gpus < 0:
            raise UserError(f"--gpus {self.gpus}: must be 0 or more")

    def step_image(self, gpu: bool = False) -> str:
        from entropy_ft.images import default_image

        if gpu and self.gpus > 0:
            return self.gpu_image or default_image(cuda=True)
        return self.image or default_image()


def talks_to_storage(task, opts: ClusterOptions) -> None:
    """S3 credentials from a Secret, the endpoint from the settings ConfigMap, retries with backoff for transient faults."""
    from kfp import kubernetes

    kubernetes.use_secret_as_env(task, secret_name=opts.s3_secret, secret_key_to_env=S3_SECRET_KEYS, optional=True)
    kubernetes.use_config_map_as_env(task, config_map_name=opts.settings_configmap,
                                     config_map_key_to_env={"AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL"})
    task.set_env_variable("ENTROPY_FT_NO_PROGRESS", "1")  # pod logs are not a terminal
    task.set_retry(num_retries=opts.retries, backoff_duration="30s", backoff_factor=2.0, backoff_max_duration="600s")


def talks_to_mlflow(task, opts: ClusterOptions) -> None:
    from kfp import kubernetes

    talks_to_storage(task, opts)
    kubernetes.use_secret_as_env(task, secret_name=opts.mlflow_secret, secret_key_to_env=MLFLOW_SECRET_KEYS, optional=True)
    kubernetes.use_config_map_as_env(task, config_map_name=opts.settings_configmap,
                                     config_map_key_to_env={"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI",
                                                            "MLFLOW_S3_ENDPOINT_URL": "AWS_ENDPOINT_URL"})


def trains(task, opts: ClusterOptions) -> None:
    """The fine-tuning pod: a GPU, CPU and memory for the DataLoader, a big /dev/shm, placement,
    and a checkpoint location that outlives the pod (a retry after preemption resumes)."""
    from kfp import kubernetes

    kubernetes.use_config_map_as_env(task, config_map_name=opts.settings_configmap, optional=True,
                                     config_map_key_to_env={"ENTROPY_FT_CHECKPOINT_ROOT": "ENTROPY_FT_CHECKPOINT_ROOT"})

    if opts.gpus > 0:
        task.set_accelerator_type(opts.accelerator_type).set_accelerator_limit(opts.gpus)
    task.set_cpu_request(opts.cpu_request).set_memory_request(opts.memory_request).set_memory_limit(opts.memory_limit)
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=opts.shm_size)
    for key, value in opts.node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for tol in opts.tolerations:
        kubernetes.add_toleration(task, key=tol.get("key"), operator=tol.get("operator", "Equal"),
                                  value=tol.get("value"), effect=tol.get("effect"))
