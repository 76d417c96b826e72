"""Choose the conv layers to unfreeze from an entropy profile, or a baseline (full, head, random).

Writes ``selection.json`` (DESIGN section 3) and ``selection.html`` / ``selection.png``
(entropy per layer with the selected layers highlighted) into ``--out``, and prints a
table of layers, entropy, parameters and selection on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

from .. import SCHEMA_VERSION, plots, storage
from ..archs import backbone, check_arch
from ..errors import UserError
from ..logs import log
from ..selection import DEFAULT_RULE, STRATEGIES, Rule, parse_rule, select_by_entropy, select_random, strategy_layers
from . import PROFILE_FILE

SELECTION_FILE = "selection.json"


@dataclass(frozen=True)
class Config:
    profile: str
    strategy: str
    out: str
    rule: str | None = None  # None: below-mean for entropy and random; must stay None for full and head
    seed: int = 0
    budget_from: str | None = None  # random: match this selection.json's trainable_params
    budget_params: int | None = None  # random: match this many trainable parameters (head included)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise UserError(f"--strategy {self.strategy}: expected one of {', '.join(STRATEGIES)}")
        if self.rule is not None:
            if self.strategy in ("full", "head"):
                raise UserError(f"--rule {self.rule}: a rule applies only to --strategy entropy or random")
            parse_rule(self.rule)
        if (self.budget_from is not None or self.budget_params is not None) and self.strategy != "random":
            raise UserError("--budget-from / --budget-params apply only to --strategy random")
        if self.budget_from is not None and self.budget_params is not None:
            raise UserError("give either --budget-from or --budget-params, not both")
        if self.budget_params is not None and self.budget_params < 0:
            raise UserError(f"--budget-params {self.budget_params}: must not be negative")

    @property
    def parsed_rule(self) -> Rule:
        return parse_rule(self.rule or DEFAULT_RULE)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("profile", metavar="PROFILE", help="profile directory or profile.json (local or s3://)")
    p.add_argument("--strategy", required=True, choices=STRATEGIES)
    p.add_argument("--rule", default=None,
                   help="below-mean (default), quantile:Q (lowest Q of layers) or budget:F (lowest-entropy "
                        "layers up to F of the backbone parameters); for random, the entropy selection whose "
                        "budget it matches")
    p.add_argument("--seed", type=int, default=0, help="seed of the random strategy")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget-from", metavar="SELECTION", default=None,
                        help="random: match the trainable parameters of this selection.json (or its directory)")
    budget.add_argument("--budget-params", metavar="N", type=int, default=None,
                        help="random: match N trainable parameters, head included")
    p.add_argument("--out", required=True, help="output directory or s3:// prefix (selection.json, selection.html)")


def config_from_args(args: argparse.Namespace) -> Config:
    return Config(args.profile, args.strategy, args.out, args.rule, args.seed, args.budget_from, args.budget_params)


def read_artifact(uri: str, filename: str) -> tuple[dict, str, str]:
    """(content, sha256, uri) of a JSON artifact given as its file or the directory holding it."""
    path = uri if uri.endswith(".json") else storage.join(uri, filename)
    data = storage.read_bytes(path)
    try:
        content = json.loads(data)
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(content, dict):
        raise UserError(f"{path}: expected a JSON object")
    return content, storage.sha256_bytes(data), path


def _check_profile(profile: dict, path: str) -> None:
    try:
        check_arch(profile["arch"])
        ok = isinstance(profile["num_classes"], int) and all(
            isinstance(row["name"], str) and isinstance(row["params"], int)
            and all(isinstance(row[k], (int, float)) for k in ("entropy", "entropy_std"))
            for row in profile["layers"]
        )
    except (KeyError, TypeError) as exc:
        raise UserError(f"{path}: not an entropy-ft profile (missing {exc})") from None
    if not ok or not profile["layers"]:
        raise UserError(f"{path}: not an entropy-ft profile (malformed layers or num_classes)")


def run(cfg: Config) -> dict:
    profile, profile_sha, profile_path = read_artifact(cfg.profile, PROFILE_FILE)
    _check_profile(profile, profile_path)
    arch = profile["arch"]
    structure = backbone(arch, profile["num_classes"])  # exact accounting from tables: this step needs no torch
    costs = structure.costs
    entropy = {row["name"]: float(row["entropy"]) for row in profile["layers"]}
    if list(entropy) != list(costs):
        raise UserError(f"{profile_path}: its layers do not match the conv layers of {arch} in forward order")

    rule: Rule | None = None
    budget: int | None = None
    if cfg.strategy == "entropy":
        rule = cfg.parsed_rule
        layers = select_by_entropy(entropy, costs, rule)
    elif cfg.strategy == "random":
        head = structure.head_params
        if cfg.budget_from is None and cfg.budget_params is None:
            rule = cfg.parsed_rule
            budget = head + sum(costs[n] for n in select_by_entropy(entropy, costs, rule))
        else:
            budget = cfg.budget_params if cfg.budget_params is not None else _budget_from(cfg.budget_from, arch)
            if budget < head:
                raise UserError(f"budget of {budget:,} parameters is below the {head:,} of the head alone")
        layers = select_random(costs, budget - head, cfg.seed)
    else:
        layers = strategy_layers(cfg.strategy, list(costs))

    selection = {
        "schema_version": SCHEMA_VERSION,
        "arch": arch,
        "weights": profile.get("weights"),
        "weights_sha256": profile.get("weights_sha256"),
        "num_classes": profile["num_classes"],
        "classes": profile.get("classes"),
        "strategy": cfg.strategy,
        "rule": None if rule is None else str(rule),
        "seed": cfg.seed,
        "budget_params": budget,
        "layers": layers,
        **structure.accounting(layers),
        "profile": profile_path,
        "profile_sha256": profile_sha,
        "tap": profile.get("tap"),
        "estimator": profile.get("estimator"),
    }
    print(format_table(profile["layers"], set(layers)), file=sys.stderr)
    with storage.output_dir(cfg.out) as tmp:
        storage.write_json(str(tmp / SELECTION_FILE), selection)
        fig = plots.entropy_figure(profile["layers"], selected=layers, title=f"{arch}: {_label(selection)}")
        report = plots.write_report(tmp, "selection", f"Layer selection: {arch}, {_label(selection)}", fig,
                                    notes=_notes(selection), table=_table(profile["layers"], set(layers)))
    log.info("%s: %d of %d conv layers, %s trainable parameters (%.1f%% fewer than full fine-tuning)",
             _label(selection), len(layers), len(costs), f"{selection['trainable_params']:,}",
             100 * selection["reduction_vs_full"])
    return {
        "out": cfg.out,
        "selection": storage.join(cfg.out, SELECTION_FILE),
        "html": storage.join(cfg.out, report["html"]),
        "arch": arch,
        "strategy": cfg.strategy,
        "rule": selection["rule"],
        "seed": cfg.seed,
        "selected_layers": len(layers),
        "conv_layers": len(costs),
        "trainable_params": selection["trainable_params"],
        "full_params": selection["full_params"],
        "reduction_vs_full": selection["reduction_vs_full"],
    }


def _budget_from(uri: str, arch: str) -> int:
    other, _, path = read_artifact(uri, SELECTION_FILE)
    if other.get("arch") != arch or not isinstance(other.get("trainable_params"), int):
        raise UserError(f"--budget-from {path}: expected a selection.json for {arch} with trainable_params")
    return other["trainable_params"]


def _label(selection: dict) -> str:
    rule = f" {selection['rule']}" if selection["rule"] else ""
    seed = f" seed {selection['seed']}" if selection["strategy"] == "random" else ""
    return f"{selection['strategy']}{rule}{seed}"


def _notes(selection: dict) -> list[str]:
    return [
        f"{len(selection['layers'])} conv layers unfrozen (with their BatchNorms; the head is always trained): "
        f"{selection['trainable_params']:,} of {selection['full_params']:,} parameters, "
        f"{100 * selection['reduction_vs_full']:.2f}% fewer than full fine-tuning.",
        f"profile {selection['profile']} (sha256 {selection['profile_sha256']}), tap {selection['tap']}, "
        f"estimator {selection['estimator']}.",
    ]


def _table(layers: list[dict], selected: set[str]) -> tuple[tuple[str, ...], list[tuple]]:
    rows = [(row["name"], f"{row['entropy']:.4f}", f"{row['params']:,}", "yes" if row["name"] in selected else "")
            for row in layers]
    return ("layer", "entropy (bits)", "params", "selected"), rows


def format_table(layers: list[dict], selected: set[str]) -> str:
    """Plain-text table of layer, entropy, params, selected for the terminal."""
    headers, rows = _table(layers, selected)
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [headers, *rows]]
    return "\n".join(lines)
