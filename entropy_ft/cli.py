"""The ``entropy-ft`` command: one sub-command per step, a one-line JSON summary on stdout.

Human logs and progress bars go to stderr. Exit 0 on success, 2 on bad input with a
message that says what was wrong and where, 1 on anything unexpected.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from entropy_ft.errors import UserError
from entropy_ft.logs import log, setup_logging

# command -> (module implementing it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "ingest": ("entropy_ft.steps.ingest", "turn image sources into a Dataset artifact (Parquet shards + manifest)"),
    "profile": ("entropy_ft.steps.profile", "activation entropy of every backbone conv layer (profile.json + chart)"),
    "select": ("entropy_ft.steps.select", "choose the conv layers to unfreeze from a profile (selection.json)"),
    "finetune": ("entropy_ft.steps.finetune",
                 "fine-tune the selected layers on a Dataset (Model dir: weights + model.json)"),
    "evaluate": ("entropy_ft.steps.evaluate", "test metrics under Gaussian pixel noise (eval.json + plot)"),
    "register": ("entropy_ft.steps.register",
                 "register a model in MLflow; alias champion only if it beats the current one"),
    "compare": ("entropy_ft.steps.compare",
                "strategies side by side: accuracy, parameters, robustness (comparison table)"),
    "run": ("entropy_ft.pipelines.run",
            "run the training (or ablation) pipeline locally through kfp.local: the main job"),
    "compile": ("entropy_ft.pipelines.compile", "write the compiled pipeline YAML with cluster settings"),
    "submit": ("entropy_ft.pipelines.submit", "upload the pipeline to a KFP endpoint and start a run"),
    "schedule": ("entropy_ft.pipelines.schedule", "create or replace a named recurring (cron) run on a KFP endpoint"),
    "schedules": ("entropy_ft.pipelines.schedules", "list the recurring runs of an experiment on a KFP endpoint"),
    "unschedule": ("entropy_ft.pipelines.unschedule", "delete a named recurring run on a KFP endpoint"),
}


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with one plain line (its default already uses 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (the others pull in torch, kfp, mlflow
    and cost seconds of start-up), so ``entropy-ft --help`` and each step start fast."""
    parser = _Parser(prog="entropy-ft", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (module, help_text) in COMMANDS.items():
        if name != command:
            sub.add_parser(name, help=help_text)
            continue
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.Config.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def _command(argv: list[str]) -> str | None:
    """The sub-command named in ``argv`` (the first argument that is one)."""
    return next((a for a in argv if a in COMMANDS), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = _command(argv)
    try:
        args = build_parser(command).parse_args(argv)
        setup_logging(args.verbose)
        summary = args._module.run(args._module.Config.from_args(args))
    except UserError as exc:
        print(f"entropy-ft {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    # write, not print: kfp.local's indented_print can leave builtins.print patched after a ParallelFor
    sys.stdout.write(json.dumps(summary, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
