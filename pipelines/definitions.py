"""The two pipelines and their parameters.

* training: ingest -> profile -> select -> finetune -> evaluate -> register, and with
  ``external_data`` an evaluate-external task beside register (external validation).
* ablation: the same ingest and profile, then one branch per strategy (``dsl.ParallelFor``:
  select -> finetune -> evaluate), then compare.

Every pipeline parameter is a field of a stage's Config (:class:`Param` names which): its
default, help and check are read from there, so ``entropy-ft run --image-size`` means, and
is checked, exactly as ``entropy-ft ingest --image-size``. Only ``data`` (the stage takes a
list, the pipeline a comma-separated string, with a demo default) and ``strategies`` (a list
of the select stage's strategies) say more.
"""


import argparse
import inspect
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, List

from kfp import dsl

from entropy_ft.components.compare import compare
from entropy_ft.components.evaluate import evaluate, evaluate_external
from entropy_ft.components.finetune import finetune
from entropy_ft.components.ingest import ingest
from entropy_ft.components.profile import profile
from entropy_ft.components.register import register
from entropy_ft.components.select import select
from entropy_ft.errors import UserError
from entropy_ft.model.archs import backbone
from entropy_ft.options import Option, csv, option_of, show
from entropy_ft.selection.rules import DEFAULT_RULE, parse_rule, rule_problem
from entropy_ft.steps import evaluate as evaluate_step
from entropy_ft.steps import finetune as finetune_step
from entropy_ft.steps import ingest as ingest_step
from entropy_ft.steps import profile as profile_step
from entropy_ft.steps import register as register_step
from entropy_ft.steps import select as select_step

from . import PIPELINES, cluster
from .cluster import ClusterOptions


@dataclass(frozen=True)
class Param:
    """A pipeline parameter: the stage Config field it feeds."""

    name: str
    config: type
    field: str
    pipelines: tuple[str, ...] = PIPELINES
    default: Any = None  # only where the stage has none (a required argument there)
    help: str | None = None  # only where the pipeline's meaning is wider than the stage's
    many: bool = False  # a list of the field's choices (ablation's strategies)

    @property
    def option(self) -> Option:
        return option_of(self.config, self.field)[1]

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def pipeline_default(self) -> Any:
        """The default as the pipeline takes it: lists of numbers as comma-separated text."""
        if self.many:
            return list(self.option.choices)
        field, _ = option_of(self.config, self.field)
        value = field.default if self.default is None else self.default
        return show(value) if isinstance(value, tuple) else value

    def parse(self, text: str) -> Any:
        """The flag's text -> the pipeline argument."""
        if self.many:
            return list(csv(text))
        kind = type(self.pipeline_default)
        return text if kind is str else kind(text)

    def check(self, value: Any) -> None:
        """The stage's own check, naming this flag: a bad value fails before any task starts."""
        opt = self.option
        if self.many:
            for item in value:
                opt.validate(self.flag, item)
            if not value:
                raise UserError(f"{self.flag}: give at least one of {', '.join(opt.choices)}")
        else:
            opt.validate(self.flag, self._stage_value(value))

    def _stage_value(self, value: Any) -> Any:
        """A pipeline argument as the stage's field holds it: comma-separated text becomes the field's list."""
        opt = self.option
        if not isinstance(value, str):
            return value
        if opt.parse:
            return opt.parse(value)
        return csv(value) if opt.nargs else value


def _same(config: type, *fields: str, **kwargs) -> list[Param]:
    """Parameters named like the stage fields they feed."""
    return [Param(name, config, name, **kwargs) for name in fields]


PARAMS: list[Param] = [
    Param("data", ingest_step.Config, "sources", default="synthetic:400",
          help="data source(s), comma-separated: dir, .zip, .tar[.gz], s3://..., synthetic:N"),
    *_same(ingest_step.Config, "layout", "image_size", "duplicates"),
    Param("extends", ingest_step.Config, "extends", default="",
          help="an earlier dataset (a Dataset artifact's URI, folder or s3://) whose images keep their splits"),
    Param("labels", ingest_step.Config, "labels", default=""),
    *_same(profile_step.Config, "arch", "weights"),
    Param("profile_images", profile_step.Config, "images"),
    *_same(profile_step.Config, "bins", "estimator", "tap", "bootstrap"),
    Param("strategy", select_step.Config, "strategy", pipelines=("training",)),
    Param("strategies", select_step.Config, "strategy", pipelines=("ablation",), many=True,
          help="strategies compared side by side, comma-separated"),
    Param("rule", select_step.Config, "rule", default=DEFAULT_RULE),
    Param("stability", select_step.Config, "stability"),
    Param("seed", ingest_step.Config, "seed", help="seed for splits, profile subset, selection, training and noise"),
    *_same(finetune_step.Config, "epochs", "lr", "batch_size", "train_noise", "train_noise_p", "train_noise_mode"),
    *_same(evaluate_step.Config, "noise"),
    Param("external_data", evaluate_step.Config, "data", pipelines=("training",), default="",
          help="external validation data (folder, .zip, .tar, s3://, or a Dataset's URI): the model is also scored "
               "on it, logged to the same MLflow run ('' for none)"),
    *_same(register_step.Config, "model_name", "promote", "gate_metric", "gate_alpha", "gate_min_delta",
           "drift_threshold", pipelines=("training",)),
]


def params_for(pipeline: str) -> list[Param]:
    return [p for p in PARAMS if pipeline in p.pipelines]


def add_pipeline_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per parameter of either pipeline; unset flags keep the pipeline's default."""
    group = parser.add_argument_group("pipeline parameters")
    for p in PARAMS:
        group.add_argument(p.flag, dest=p.name, type=p.parse, default=None,
                           help=f"{p.help or p.option.help} (default: {show(p.pipeline_default)})")


def arguments_from_args(args: argparse.Namespace, pipeline: str) -> dict:
    """The run arguments for ``pipeline``: defaults overridden by the flags given, each checked.

    A flag that belongs only to the other pipeline is an error rather than silently ignored.
    """
    wanted = {p.name for p in params_for(pipeline)}
    for p in PARAMS:
        if getattr(args, p.name, None) is not None and p.name not in wanted:
            raise UserError(f"{p.flag} is not a parameter of the {pipeline} pipeline")
    arguments = {}
    for p in params_for(pipeline):
        given = getattr(args, p.name, None)
        if given is not None:
            p.check(given)
        arguments[p.name] = p.pipeline_default if given is None else given
    if "rule" in arguments and "arch" in arguments:  # a stage rule needs an architecture with stages
        structure = backbone(arguments["arch"], 2)
        if problem := rule_problem(parse_rule(arguments["rule"]), structure.arch, structure.stages):
            raise UserError(problem)
    return arguments


# ---------------------------------------------------------------- the pipelines


def _components(opts: ClusterOptions | None) -> dict:
    """The components for a cluster (``opts``) or, with ``opts`` None, for ``kfp.local``.

    Neither starts with the ``pip install kfp`` a lightweight component otherwise runs first: kfp is
    a dependency of the package, so the image and a local environment both hold it, and on an
    air-gapped cluster that install would be a network call that fails before the step starts.
    """
    opts = opts or ClusterOptions()
    image, gpu_image = opts.step_image(), opts.step_image(gpu=True)
    funcs = {"ingest": ingest, "profile": profile, "select": select, "finetune": finetune, "evaluate": evaluate,
             "evaluate_external": evaluate_external, "register": register, "compare": compare}
    return {name: dsl.component(func, base_image=gpu_image if name == "finetune" else image,
                                install_kfp_package=False) for name, func in funcs.items()}


TRAINING = "entropy-ft-training"
ABLATION = "entropy-ft-ablation"


def _training(c: dict, opts: ClusterOptions | None, cache: bool, p: SimpleNamespace) -> None:
    ing, prof = _ingest_and_profile(c, p)
    sel, ft, ev = _branch(c, p, ing, prof, p.strategy, TRAINING, track=True)
    reg = c["register"](model=ft.outputs["model"], evaluation=ev.outputs["evaluation"], dataset=ing.outputs["dataset"],
                        profile=prof.outputs["profile"], selection=sel.outputs["selection"],
                        model_name=p.model_name, promote=p.promote, gate_metric=p.gate_metric,
                        gate_alpha=p.gate_alpha, gate_min_delta=p.gate_min_delta, drift_threshold=p.drift_threshold,
                        mlflow_run_id=ft.outputs["Output"],
                        kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                        pipeline_name=TRAINING)
    with dsl.If(p.external_data != "", name="external-validation"):
        ext = c["evaluate_external"](model=ft.outputs["model"], training_data=ing.outputs["dataset"],
                                     data=p.external_data, noise=p.noise, seed=p.seed,
                                     mlflow_run_id=ft.outputs["Output"])
    _configure(opts, cache, ing, prof, sel, ft, ev, reg, ext)


def _ablation(c: dict, opts: ClusterOptions | None, cache: bool, p: SimpleNamespace) -> None:
    ing, prof = _ingest_and_profile(c, p)
    # locally the branches share this machine's cores: side by side, each fine-tuning with every core,
    # they ran ~5x slower in aggregate than one after another; a cluster gives each pod its own CPUs
    with dsl.ParallelFor(p.strategies, name="strategies", parallelism=1 if opts is None else 0) as strategy:
        sel, ft, ev = _branch(c, p, ing, prof, strategy, ABLATION, track=False)
        _configure(opts, cache, ing, prof, sel, ft, ev)
    cmp = c["compare"](evaluations=dsl.Collected(ev.outputs["evaluation"]))
    cmp.set_caching_options(False)
    if opts is not None:
        cluster.runs_unprivileged(cmp)
        cluster.talks_to_storage(cmp, opts)


# pipeline -> (KFP name, description, body)
_PIPELINES = {
    "training": (TRAINING, "Entropy-based layer selection and fine-tuning for brain-tumour MRI, with "
                           "noise-robustness evaluation and MLflow registration.", _training),
    "ablation": (ABLATION, "Entropy selection against full, head-only and random (same budget) fine-tuning on "
                           "the same data: the paper's comparison.", _ablation),
}


def build(pipeline: str, opts: ClusterOptions | None = None, cache: bool = True):
    """The pipeline function ``pipeline``; ``opts`` None builds it for a local run (no cluster settings).

    ``cache`` False (``--no-cache``, or ``opts.no_cache``) compiles every task with caching off.

    KFP reads the pipeline's parameters from the function's signature: here one parameter per
    :class:`Param` of the pipeline, typed and defaulted from the table, handed to the body as
    one namespace."""
    name, description, body = _PIPELINES[pipeline]
    params = params_for(pipeline)
    c = _components(opts)
    cache = cache and not (opts is not None and opts.no_cache)

    def func(*values):
        return body(c, opts, cache, SimpleNamespace(**{p.name: v for p, v in zip(params, values)}))

    func.__name__ = pipeline
    func.__signature__ = inspect.Signature([
        inspect.Parameter(p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=p.pipeline_default,
                          annotation=List[str] if p.many else type(p.pipeline_default))
        for p in params
    ])
    return dsl.pipeline(name=name, description=description)(func)


def _ingest_and_profile(c: dict, p: SimpleNamespace):
    """The tasks both pipelines start with."""
    ing = c["ingest"](data=p.data, layout=p.layout, image_size=p.image_size, duplicates=p.duplicates, seed=p.seed,
                      extends=p.extends, labels=p.labels)
    prof = c["profile"](dataset=ing.outputs["dataset"], arch=p.arch, weights=p.weights, images=p.profile_images,
                        bins=p.bins, estimator=p.estimator, tap=p.tap, bootstrap=p.bootstrap, seed=p.seed)
    return ing, prof


def _branch(c: dict, p: SimpleNamespace, ing, prof, strategy, pipeline_name: str, track: bool):
    """select -> finetune -> evaluate for one strategy; with ``track`` finetune opens the MLflow run
    (tagged with this KFP run) that register logs into."""
    run_id, run_name = (dsl.PIPELINE_JOB_ID_PLACEHOLDER, dsl.PIPELINE_JOB_NAME_PLACEHOLDER) if track else ("", "")
    sel = c["select"](profile=prof.outputs["profile"], strategy=strategy, rule=p.rule, stability=p.stability,
                      seed=p.seed)
    ft = c["finetune"](dataset=ing.outputs["dataset"], selection=sel.outputs["selection"], epochs=p.epochs, lr=p.lr,
                       batch_size=p.batch_size, train_noise=p.train_noise, train_noise_p=p.train_noise_p,
                       train_noise_mode=p.train_noise_mode, seed=p.seed, track=track,
                       kfp_run_id=run_id, kfp_run_name=run_name, pipeline_name=pipeline_name)
    ev = c["evaluate"](model=ft.outputs["model"], dataset=ing.outputs["dataset"], noise=p.noise, seed=p.seed)
    return sel, ft, ev


def _configure(opts: ClusterOptions | None, cache: bool, ing, prof, sel, ft, ev, reg=None, ext=None) -> None:
    """Caching, retries, secrets and resources; locally only caching applies (kfp.local ignores the rest)."""
    tracked = [t for t in (reg, ext) if t is not None]  # log into finetune's MLflow run
    for task in (ing, prof):
        task.set_caching_options(cache)  # keyed by inputs: same data and settings -> reuse
    for task in (sel, ft, ev, *tracked):
        task.set_caching_options(False)
    if opts is None:
        return
    for task in (ing, prof, sel, ft, ev, *tracked):
        cluster.runs_unprivileged(task)
    for task in (ing, prof, sel, ev, *([ext] if ext is not None else [])):
        cluster.talks_to_storage(task, opts)
    cluster.hashes_patients(ing, opts)
    cluster.trains(ft, opts)
    for task in (ft, *tracked):
        cluster.talks_to_mlflow(task, opts)
