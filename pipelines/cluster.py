"""Compile-time settings for running on a Kubernetes cluster: image, GPU, resources,
scheduling, secrets. They shape the compiled YAML, not the run's parameters.

Credentials are referenced by Secret name only (``kfp.kubernetes.use_secret_as_env``);
no value is ever written into a compiled pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

from entropy_ft import __version__
from entropy_ft.data import patients
from entropy_ft.options import Options, at_least, option

IMAGE_REPOSITORY = "ghcr.io/entropy-ft/entropy-ft"
S3_SECRET_KEYS = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}
MLFLOW_SECRET_KEYS = {"MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
                      "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"}
EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def default_image(cuda: bool = False, version: str = __version__) -> str:
    """The released image of this version, ``<repo>:<version>`` (``-cuda`` for GPU steps); built from
    images/Dockerfile and images/Dockerfile.cuda, which declare the same references (a test checks it)."""
    return f"{IMAGE_REPOSITORY}:{version}{'-cuda' if cuda else ''}"


def _node_selector_problem(items: tuple[str, ...]) -> str | None:
    bad = [item for item in items if not item.partition("=")[0] or "=" not in item]
    return f"{bad[0]!r} is not KEY=VALUE" if bad else None


def _toleration_problem(items: tuple[str, ...]) -> str | None:
    bad = [item for item in items if item.rpartition(":")[2] not in EFFECTS or ":" not in item]
    return f"{bad[0]!r} is not KEY[=VALUE]:{'|'.join(EFFECTS)}" if bad else None


@dataclass(frozen=True, kw_only=True)
class ClusterOptions(Options):
    """The cluster settings; each field is a flag of ``compile``, ``submit`` and ``schedule``."""

    image: str = option("", help="component image (default: the released image of this version)")
    gpu_image: str = option("", help="image for finetune when it gets a GPU (default: the CUDA variant)")
    gpus: int = option(1, check=at_least(0), help="GPUs for finetune (0 trains on CPU)")
    accelerator_type: str = option("nvidia.com/gpu", help="the GPU resource name")
    cpu_request: str = option("4", help="CPU request of the finetune pod")
    memory_request: str = option("16G", help="memory request of the finetune pod")
    memory_limit: str = option("32G", help="memory limit of the finetune pod")
    shm_size: str = option("8Gi", help="/dev/shm for DataLoader workers")
    node_selector: tuple[str, ...] = option((), action="append", metavar="KEY=VALUE", check=_node_selector_problem,
                                            help="node label the finetune pod must match (repeatable)")
    toleration: tuple[str, ...] = option((), action="append", metavar="KEY[=VALUE]:EFFECT", check=_toleration_problem,
                                         help="taint the finetune pod tolerates, e.g. nvidia.com/gpu:NoSchedule "
                                              "(repeatable)")
    s3_secret: str = option("entropy-ft-s3", help="Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
    mlflow_secret: str = option("entropy-ft-mlflow",
                                help="Secret with MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (optional)")
    patient_salt_secret: str = option("entropy-ft-patient-salt",
                                      help="Secret with ENTROPY_FT_PATIENT_SALT, which hashes patient keys the same "
                                           "way run after run, so patients keep their splits (optional: without "
                                           "it, ingest warns and draws a random salt)")
    settings_configmap: str = option("entropy-ft-settings",
                                     help="ConfigMap with MLFLOW_TRACKING_URI and AWS_ENDPOINT_URL "
                                          "(manifests/base/settings.yaml)")
    no_cache: bool = option(False, help="run every step afresh: no task reuses an earlier run's result")
    retries: int = option(3, cli=False, help="retries of a task that talks to storage or MLflow")

    @classmethod
    def add_arguments(cls, parser) -> None:
        super().add_arguments(parser.add_argument_group("cluster settings (compiled into the YAML)"))

    @property
    def node_selectors(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.node_selector)

    @property
    def tolerations(self) -> list[dict]:
        """{key, operator, value, effect} per --toleration."""
        out = []
        for item in self.toleration:
            kv, _, effect = item.rpartition(":")
            key, eq, value = kv.partition("=")
            out.append({"key": key, "operator": "Equal" if eq else "Exists", "value": value or None, "effect": effect})
        return out

    def step_image(self, gpu: bool = False) -> str:
        if gpu and self.gpus > 0:
            return self.gpu_image or default_image(cuda=True)
        return self.image or default_image()


RUN_AS = 10001  # the images' user (images/Dockerfile*)
WRITABLE = {"tmp": "/tmp", "home": "/home/entropy"}  # all a step writes outside its artifacts
READ_ONLY_ROOT_LABEL = ("entropy-ft.io/read-only-root", "true")  # for a cluster policy to key on (docs/deploy.md)


def runs_unprivileged(task) -> None:
    """Every pod as the images' unprivileged user, writing only to emptyDirs: /tmp (the component's
    program and outputs file) and the home (torch and matplotlib caches). So the container's root
    filesystem can be mounted read-only (docs/deploy.md, where a cluster sets
    ``readOnlyRootFilesystem``: kfp-kubernetes cannot set it per task). The artifact scratch folders
    (/s3, /minio, /gcs) are the KFP launcher's own. The pod label says so to an admission policy."""
    from kfp import kubernetes

    kubernetes.set_security_context(task, run_as_user=RUN_AS, run_as_group=RUN_AS, run_as_non_root=True)
    kubernetes.add_pod_label(task, label_key=READ_ONLY_ROOT_LABEL[0], label_value=READ_ONLY_ROOT_LABEL[1])
    for name, path in WRITABLE.items():
        kubernetes.empty_dir_mount(task, volume_name=name, mount_path=path)


def talks_to_storage(task, opts: ClusterOptions) -> None:
    """S3 credentials from a Secret, the endpoint from the settings ConfigMap, retries with backoff for
    transient faults."""
    from kfp import kubernetes

    kubernetes.use_secret_as_env(task, secret_name=opts.s3_secret, secret_key_to_env=S3_SECRET_KEYS, optional=True)
    kubernetes.use_config_map_as_env(task, config_map_name=opts.settings_configmap,
                                     config_map_key_to_env={"AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL"})
    task.set_env_variable("ENTROPY_FT_NO_PROGRESS", "1")  # pod logs are not a terminal
    task.set_retry(num_retries=opts.retries, backoff_duration="30s", backoff_factor=2.0, backoff_max_duration="600s")


def hashes_patients(task, opts: ClusterOptions) -> None:
    """ingest's patient salt from a Secret. Optional, since data without patient keys needs none; the pod's
    home is an emptyDir, so no salt file is made there, and without the Secret ingest warns that this run's
    salt is random."""
    from kfp import kubernetes

    kubernetes.use_secret_as_env(task, secret_name=opts.patient_salt_secret,
                                 secret_key_to_env={patients.SALT_ENV: patients.SALT_ENV}, optional=True)
    task.set_env_variable(patients.NO_SALT_FILE_ENV, "1")


def talks_to_mlflow(task, opts: ClusterOptions) -> None:
    from kfp import kubernetes

    talks_to_storage(task, opts)
    kubernetes.use_secret_as_env(task, secret_name=opts.mlflow_secret, secret_key_to_env=MLFLOW_SECRET_KEYS,
                                 optional=True)
    # key -> variable: MLflow's S3 client reads the same endpoint as MLFLOW_S3_ENDPOINT_URL (the ConfigMap
    # has no key of that name: the reverse mapping kept finetune and register pods from starting)
    kubernetes.use_config_map_as_env(task, config_map_name=opts.settings_configmap,
                                     config_map_key_to_env={"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI",
                                                            "AWS_ENDPOINT_URL": "MLFLOW_S3_ENDPOINT_URL"})


def trains(task, opts: ClusterOptions) -> None:
    """The fine-tuning pod: a GPU, CPU and memory for the DataLoader, a big /dev/shm, placement,
    and a checkpoint location that outlives the pod (a retry after preemption resumes)."""
    from kfp import kubernetes

    kubernetes.use_config_map_as_env(task, config_map_name=opts.settings_configmap, optional=True,
                                     config_map_key_to_env={"ENTROPY_FT_CHECKPOINT_ROOT": "ENTROPY_FT_CHECKPOINT_ROOT"})

    if opts.gpus > 0:
        task.set_accelerator_type(opts.accelerator_type).set_accelerator_limit(opts.gpus)
    task.set_cpu_request(opts.cpu_request).set_memory_request(opts.memory_request).set_memory_limit(opts.memory_limit)
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                               size_limit=opts.shm_size)
    for key, value in opts.node_selectors.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for tol in opts.tolerations:
        kubernetes.add_toleration(task, key=tol.get("key"), operator=tol.get("operator", "Equal"),
                                  value=tol.get("value"), effect=tol.get("effect"))
