"""Choose the conv layers to unfreeze from an entropy profile, or a baseline (full, head, random).

Writes ``selection.json`` (:class:`entropy_ft.artifacts.Selection`) and ``selection.html`` /
``selection.png`` (entropy per layer with the selected layers highlighted) into ``--out``, and
prints a table of layers, entropy, parameters and selection on stderr. Needs no torch: the
parameter accounting comes from :mod:`entropy_ft.model.archs`.

With a bootstrapped profile (``profile --bootstrap N``) the entropy rule is also applied to
every resample (:mod:`entropy_ft.selection.stability`): selection.json's ``stability`` and a
section of selection.html give each layer's selection frequency and the spread of the
parameter reduction, and ``--stability S`` keeps only the layers selected in at least S of the
resamples, so a layer that flips with the sample of images is left frozen.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from entropy_ft import plots, storage
from entropy_ft.artifacts import Profile, Selection
from entropy_ft.errors import UserError
from entropy_ft.logs import log
from entropy_ft.model.archs import Backbone, backbone, check_arch
from entropy_ft.options import Options, at_least, between, option
from entropy_ft.selection.rules import (
    DEFAULT_RULE,
    DEFAULT_STRATEGY,
    EVIDENCE,
    PAPER_RULE,
    RULED,
    STRATEGIES,
    Rule,
    parse_rule,
    rule_problem,
    select_by_entropy,
    select_random,
    strategy_layers,
)
from entropy_ft.selection.stability import resampled_selections, stable_layers, summarize


def _rule_problem(text: str) -> str | None:
    parse_rule(text)  # raises a UserError that quotes the rule
    return None


@dataclass(frozen=True, kw_only=True)
class Config(Options):
    profile: str = option(flag="PROFILE", help="profile directory or profile.json (local or s3://)")
    strategy: str = option(DEFAULT_STRATEGY, choices=STRATEGIES,
                           help="entropy (layers chosen by an entropy rule) or a baseline: full, head, random (seeded "
                                "random layers with the parameter count of --rule's entropy selection; the default, "
                                "chosen on paired evidence: benchmarks/results/rule-sweep.md)")
    out: str = option(help="output directory or s3:// prefix (selection.json, selection.html)")
    rule: str | None = option(
        None, check=_rule_problem,
        help=f"budget:F (lowest-entropy layers filling F of the backbone parameters; default {DEFAULT_RULE}), "
             f"{PAPER_RULE} (the paper's: below the mean over all layers), stage-below-mean (below the mean of the "
             "layer's stage), quantile:Q (lowest Q of layers) or stage-budget:F (budget:F within each stage); Q, F "
             "in (0, 1]; for random, the entropy selection whose parameter count it matches; full and head take no "
             "rule")
    stability: float = option(
        0.0, check=between(0, 1, "(a share of resamples; 0 is off)"),
        help="keep only the layers the rule selects in at least this share of the profile's bootstrap resamples "
             "(entropy, and random's budget; needs a profile made with --bootstrap; 0: off)")
    seed: int = option(0, help="seed of the random strategy")
    budget_from: str | None = option(
        None, metavar="SELECTION", help="random: match the trainable parameters of this selection.json (or its folder)")
    budget_params: int | None = option(None, metavar="N", check=at_least(0, "parameters"),
                                       help="random: match N trainable parameters, head included")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.strategy not in RULED and self.rule is not None:
            raise UserError(f"--rule {self.rule}: a rule applies only to --strategy entropy or random")
        if self.strategy not in RULED and self.stability:
            raise UserError(f"--stability {self.stability:g}: applies only to --strategy entropy or random")
        if (self.budget_from is not None or self.budget_params is not None) and self.strategy != "random":
            raise UserError("--budget-from / --budget-params apply only to --strategy random")
        if self.budget_from is not None and self.budget_params is not None:
            raise UserError("give either --budget-from or --budget-params, not both")

    @property
    def parsed_rule(self) -> Rule:
        return parse_rule(self.rule or DEFAULT_RULE)


def rule_for(strategy: str, rule: str) -> str | None:
    """The rule a pipeline branch passes on: the pipeline has one ``rule`` for every strategy of
    the ablation, and full and head take none."""
    return rule if strategy in RULED else None


def stability_for(strategy: str, stability: float) -> float:
    """The stability threshold a pipeline branch passes on: like the rule, off for full and head."""
    return stability if strategy in RULED else 0.0


def run(cfg: Config) -> dict:
    profile = Profile.read(cfg.profile)
    arch = check_arch(profile.arch)
    structure = backbone(arch, profile.num_classes)  # exact accounting from tables: this step needs no torch
    costs = structure.costs
    entropy = profile.entropies()
    resampled = profile.resampled_entropies()
    if list(entropy) != list(costs) or (resampled and list(resampled[0]) != list(costs)):
        raise UserError(f"{profile.origin.uri}: its layers do not match the conv layers of {arch} in forward order")
    if cfg.stability and resampled is None:
        raise UserError(f"--stability {cfg.stability:g}: {profile.origin.uri} has no bootstrap resamples "
                        "(profile with --bootstrap N, the histogram estimator and at least two batches)")

    if cfg.strategy in RULED and (problem := rule_problem(cfg.parsed_rule, arch, structure.stages)):
        raise UserError(problem)
    rule: Rule | None = None
    budget: int | None = None
    stability: dict | None = None
    if cfg.strategy == "entropy":
        rule = cfg.parsed_rule
        layers, stability = _by_entropy(entropy, resampled, structure, rule, cfg.stability)
    elif cfg.strategy == "random":
        head = structure.head_params
        matched: list[str] | None = None  # the selection whose parameters random matches, where one is known
        if cfg.budget_from is None and cfg.budget_params is None:
            rule = cfg.parsed_rule
            matched = _by_entropy(entropy, resampled, structure, rule, cfg.stability)[0]
            budget = head + sum(costs[n] for n in matched)
        elif cfg.budget_from is not None:
            matched, budget = _budget_from(cfg.budget_from, arch)
        else:
            budget = cfg.budget_params
            if budget < head:
                raise UserError(f"budget of {budget:,} parameters is below the {head:,} of the head alone")
        layers = select_random(costs, budget - head, cfg.seed, avoid=matched)
    else:
        layers = strategy_layers(cfg.strategy, list(costs))

    selection = Selection(
        arch=arch, weights=profile.weights, weights_sha256=profile.weights_sha256, num_classes=profile.num_classes,
        classes=profile.classes, strategy=cfg.strategy, rule=None if rule is None else str(rule), stability=stability,
        seed=cfg.seed,
        budget_params=budget, layers=layers, **structure.accounting(layers), profile=profile.origin.uri,
        profile_sha256=profile.origin.sha256, tap=profile.tap, estimator=profile.estimator,
    )
    frequency = stability["frequency"] if stability else None
    print(format_table(profile.layers, set(layers), frequency), file=sys.stderr)
    with storage.output_dir(cfg.out) as tmp:
        selection.write(tmp)
        fig = plots.entropy_figure(profile.layers, selected=layers, title=f"{arch}: {_label(selection)}",
                                   stages=structure.stages if rule is not None and rule.needs_stages else None)
        report = plots.write_report(tmp, "selection", f"Layer selection: {arch}, {_label(selection)}", fig,
                                    notes=_notes(selection, structure),
                                    table=_table(profile.layers, set(layers), frequency),
                                    sections=[_stability_section(selection)] if stability else [])
    log.info("%s: %d of %d conv layers, %s trainable parameters (%.1f%% fewer than full fine-tuning)",
             _label(selection), len(layers), len(costs), f"{selection.trainable_params:,}",
             100 * selection.reduction_vs_full)
    log.info("by depth: %s", depth_text(layers, structure))
    if budget is not None:
        log.info("random matched %s of a %s-parameter budget (%s short)", f"{selection.trainable_params:,}",
                 f"{budget:,}", f"{budget - selection.trainable_params:,}")
    if stability:
        log.info("over %d bootstrap resamples: %s", stability["resamples"], _spread_text(stability))
    return {
        "out": cfg.out,
        "selection": Selection.file_in(cfg.out),
        "html": storage.join(cfg.out, report["html"]),
        "arch": arch,
        "strategy": cfg.strategy,
        "rule": selection.rule,
        "seed": cfg.seed,
        "selected_layers": len(layers),
        "conv_layers": len(costs),
        "trainable_params": selection.trainable_params,
        "full_params": selection.full_params,
        "reduction_vs_full": selection.reduction_vs_full,
        "stability": cfg.stability,
        "resampled_distinct_sets": stability["distinct_sets"] if stability else None,
        "resampled_reduction_p5": stability["reduction_vs_full"]["p5"] if stability else None,
        "resampled_reduction_p95": stability["reduction_vs_full"]["p95"] if stability else None,
    }


def _by_entropy(
    entropy: dict[str, float], resampled: list[dict[str, float]] | None, structure: Backbone, rule: Rule,
    threshold: float,
) -> tuple[list[str], dict | None]:
    """The layers ``rule`` selects on the profile, or with ``threshold`` > 0 those it selects in at
    least that share of the bootstrap resamples; and what the resamples say about the rule
    (selection.json's ``stability``; None for a profile without resamples)."""
    costs, stages = structure.costs, structure.stages
    if resampled is None:
        return select_by_entropy(entropy, costs, rule, stages), None
    selections = resampled_selections(resampled, costs, rule, stages)
    layers = (stable_layers(selections, list(costs), threshold) if threshold
              else select_by_entropy(entropy, costs, rule, stages))
    return layers, {"threshold": threshold or None, **summarize(selections, structure)}


def _budget_from(uri: str, arch: str) -> tuple[list[str], int]:
    """The layers and trainable parameters of the selection at ``uri``."""
    other = Selection.read(uri)
    if other.arch != arch or other.trainable_params is None:
        raise UserError(f"--budget-from {other.origin.uri}: expected a selection.json for {arch} with trainable_params")
    return list(other.layers), other.trainable_params


def _label(selection: Selection) -> str:
    rule = f" {selection.rule}" if selection.rule else ""
    threshold = (selection.stability or {}).get("threshold")
    stable = f", in at least {threshold:g} of resamples" if threshold else ""
    seed = f" seed {selection.seed}" if selection.strategy == "random" else ""
    return f"{selection.strategy}{rule}{stable}{seed}"


def _spread_text(stability: dict) -> str:
    r, n = stability["reduction_vs_full"], stability["selected_layers"]
    return (f"{stability['distinct_sets']} distinct layer sets of {n['p5']:g} to {n['p95']:g} layers; "
            f"{100 * r['p5']:.1f}% / {100 * r['p50']:.1f}% / {100 * r['p95']:.1f}% fewer trainable parameters than "
            f"full fine-tuning (5th / 50th / 95th percentile, std {100 * r['std']:.1f} points)")


def _stability_section(selection: Selection) -> plots.Section:
    """selection.html's stability section: per layer, the share of resamples whose selection holds it."""
    stability = selection.stability
    threshold = stability["threshold"]
    names, shares = list(stability["frequency"]), list(stability["frequency"].values())
    fig = plots.bar_figure(
        names, shares, title=f"{selection.arch}: selection frequency of {selection.rule} over bootstrap resamples",
        ylabel="share of resamples selecting the layer", highlight=selection.layers,
        legend=("frozen", "selected (unfrozen)"),
        hline=(threshold, f"--stability {threshold:g}") if threshold else None)
    notes = [
        f"{selection.rule} applied to each of {stability['resamples']} bootstrap resamples of the profile's batches: "
        f"{_spread_text(stability)}.",
        f"This selection: {100 * selection.reduction_vs_full:.1f}% fewer. "
        + (f"Only layers selected in at least {threshold:g} of the resamples are unfrozen."
           if threshold else "A layer near 0 or 1 is a stable choice; one in between flips with the sample of "
                             "images (--stability S keeps only layers selected in at least S of them)."),
    ]
    return "Stability over bootstrap resamples", fig, notes


def depth_groups(layers: list[str], structure: Backbone) -> list[tuple[str, int, int, int, int]]:
    """Where a selection sits in depth: per stage (or per third of the convs, for an architecture
    without stages), its name, selected and all convs, and selected and all parameters."""
    names = list(structure.costs)
    stages = structure.stages or {n: ("first", "middle", "last")[3 * i // len(names)] + " third"
                                  for i, n in enumerate(names)}
    chosen = set(layers)
    groups: dict[str, list[int]] = {}
    for n in names:
        g = groups.setdefault(stages[n], [0, 0, 0, 0])
        g[0] += n in chosen
        g[1] += 1
        g[2] += structure.costs[n] if n in chosen else 0
        g[3] += structure.costs[n]
    return [(name, *counts) for name, counts in groups.items()]


def depth_text(layers: list[str], structure: Backbone) -> str:
    """One line of :func:`depth_groups`: ``stem 0/1, layer1 2/4 (50% of its parameters), ...``."""
    return ", ".join(f"{name} {k}/{n}" + (f" ({100 * p / total:.0f}% of its parameters)" if 0 < k < n else "")
                     for name, k, n, p, total in depth_groups(layers, structure))


def _notes(selection: Selection, structure: Backbone) -> list[str]:
    return [
        f"{len(selection.layers)} conv layers unfrozen (with their BatchNorms; the head is always trained): "
        f"{selection.trainable_params:,} of {selection.full_params:,} parameters, "
        f"{100 * selection.reduction_vs_full:.2f}% fewer than full fine-tuning.",
        f"Where they sit in depth, selected of all conv layers per {'stage' if structure.stages else 'third'}: "
        f"{depth_text(selection.layers, structure)}.",
        f"profile {selection.profile} (sha256 {selection.profile_sha256}), tap {selection.tap}, "
        f"estimator {selection.estimator}.",
    ] + ([EVIDENCE] if selection.strategy in RULED else [])


def _table(
    layers: list[dict], selected: set[str], frequency: dict[str, float] | None = None
) -> tuple[tuple[str, ...], list[tuple]]:
    """Layer, entropy, params, selected, and with ``frequency`` the share of resamples selecting each layer."""
    rows = [(row["name"], f"{row['entropy']:.4f}", f"{row['params']:,}", "yes" if row["name"] in selected else "")
            + ((f"{frequency[row['name']]:.2f}",) if frequency else ()) for row in layers]
    return ("layer", "entropy (bits)", "params", "selected") + (("resamples",) if frequency else ()), rows


def format_table(layers: list[dict], selected: set[str], frequency: dict[str, float] | None = None) -> str:
    """Plain-text table of layer, entropy, params, selected (and selection frequency) for the terminal."""
    headers, rows = _table(layers, selected, frequency)
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [headers, *rows]]
    return "\n".join(lines)
