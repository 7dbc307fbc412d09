"""Does the probe's cross-validation pick a better blend weight than a constant? (issue 26)

A run without validation data used to blend its network with the pixel model at the
constant ``PIXEL_WEIGHT``, or at 0 where its linear probe cross-validated better than the
pixel model; kerastl now uses the rule chosen here. The gap between the two
cross-validated accuracies (``pixel_cv - probe_cv``, both in ``run.json``) is evidence
every run has: where pixels are far ahead, the network may need them more. This asks
whether a weight graded by that gap beats the constant.

Nothing is trained: the cases of a ``blend_weight.py`` results file hold, for every
(task, seed), the network's validation accuracy at every weight and both CV accuracies.
Rule families, each with the probe rule (weight 0 where the probe is ahead, the gap
rounded to 4 digits by kerastl's ``pixel_lead``):

* ``constant``: one weight for every run (what kerastl did);
* ``two_level``: weight ``low`` below a gap ``threshold``, ``high`` from it;
* ``linear``: ``clip(base + slope * gap, 0, 4)``, rounded to the nearest weight scored.

Each family's member is chosen as ``blend_weight.py`` chooses the constant (the
smallest summed shortfall from ``GOALS``, then the largest mean). Choosing a rule among
many on eight tasks overfits them, so each family is also judged **leave one task
out**: chosen on seven tasks' validation images, scored on the eighth's; the mean of
those eight scores is what the family would deliver on a task it was not chosen on.
The rules are chosen on validation images only. ``kerastl`` is the rule kerastl
uses (``kerastl.recipes.pixel_blend.weight_from_gap``), scored per task on val and,
with ``--final``, once on test (the cases' recorded test accuracies).

Usage:
    python benchmarks/blend_rule.py \
        --cases benchmarks/results/blend_weight_multidepth.json --final

Writes ``benchmarks/results/blend_rule.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, load_average, write_results  # noqa: E402
from blend_weight import GOALS, WEIGHTS  # noqa: E402  (the grid its cases were scored on)

from kerastl.recipes import pixel_blend as blend  # noqa: E402


def families() -> dict[str, dict[str, Callable[[float], float]]]:
    """Every rule of every family, named by its parameters: ``gap -> weight``."""
    constant = {f"w={w}": (lambda gap, w=w: w) for w in (0.5, 1.0, 2.0, 3.0, 4.0)}
    two_level = {f"low={lo},high={hi},threshold={t}":
                 (lambda gap, lo=lo, hi=hi, t=t: hi if gap >= t else lo)
                 for lo, hi, t in itertools.product((0.5, 1.0, 2.0), (2.0, 3.0, 4.0),
                                                    (0.04, 0.06, 0.08, 0.1, 0.12))
                 if hi > lo}
    linear = {f"base={b},slope={s}":
              (lambda gap, b=b, s=s: min(4.0, max(0.0, b + s * gap)))
              for b, s in itertools.product((0.5, 1.0, 2.0), (10, 20, 30, 40))}
    return {"constant": constant, "two_level": two_level, "linear": linear}


def weight_for(case: dict, rule) -> str:
    """The scored weight nearest the rule's, 0 where the probe cross-validated ahead."""
    gap = blend.pixel_lead(case["pixel_cv"], case["probe_cv"])
    if gap < 0:
        return "0.0"
    wanted = rule(gap)
    return str(min(WEIGHTS, key=lambda w: abs(w - wanted)))


def kerastl_weight(case: dict) -> str:
    """The weight a kerastl run without validation data uses on this case."""
    return str(blend.weight_from_gap(case["pixel_cv"], case["probe_cv"]))


def score(rule, cases: dict, pixels: dict, tasks: list[str], split: str = "val",
          pick=None) -> dict:
    """Accuracy of ``rule`` on ``tasks`` (mean over seeds), and its margins, unrounded.

    ``pick`` (a case -> weight function) replaces ``rule`` where given. Rules are
    compared on these unrounded figures (:func:`rounded` is for the file): rounded to 4
    digits, two rules 0.0001 apart tie, and the tie would go to the one listed first.
    """
    pick = pick or (lambda case: weight_for(case, rule))
    accuracy = {t: float(np.mean([c[split][pick(c)] for c in cases[t]])) for t in tasks}
    network = {t: float(np.mean([c[split]["0.0"] for c in cases[t]])) for t in tasks}
    over_pixels = {t: accuracy[t] - pixels[t][f"{split}_accuracy"] for t in tasks}
    over_network = {t: accuracy[t] - network[t] for t in tasks}
    return {"mean": float(np.mean(list(accuracy.values()))),
            "mean_over_pixels": float(np.mean(list(over_pixels.values()))),
            "worst_over_pixels": min(over_pixels.values()),
            "worst_over_network": min(over_network.values()),
            "per_task": {t: {"accuracy": accuracy[t], "network": network[t],
                             "pixels": pixels[t][f"{split}_accuracy"],
                             "over_pixels": over_pixels[t],
                             "over_network": over_network[t]} for t in tasks}}


def rounded(value):
    """``value`` with every float rounded to 4 digits, for the results file."""
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    return round(value, 4) if isinstance(value, float) else value


def shortfall(row: dict) -> float:
    """How far a row falls short of :data:`GOALS`, summed over them (0: all met)."""
    return sum(max(0.0, bar - row[key]) for key, bar in GOALS.items())


def choose(rules: dict, cases: dict, pixels: dict, tasks: list[str]) -> str:
    """The rule closest to the goals on ``tasks``, then with the best mean; an exact
    tie (the same weight on every case) goes to the rule listed first."""
    scored = {name: score(rule, cases, pixels, tasks) for name, rule in rules.items()}
    return min(scored, key=lambda n: (shortfall(scored[n]), -scored[n]["mean"]))


def judge(rules: dict, cases: dict, pixels: dict) -> tuple[dict, tuple[float, float]]:
    """The family's rule chosen on every task and its leave-one-task-out scores, and
    the family's rank (held-out shortfall, then minus held-out mean; unrounded)."""
    tasks = list(cases)
    chosen = choose(rules, cases, pixels, tasks)
    held_out = {}
    for task in tasks:
        rule = choose(rules, cases, pixels, [t for t in tasks if t != task])
        row = score(rules[rule], cases, pixels, [task])
        held_out[task] = {"rule": rule, **{k: v for k, v in row.items() if k != "per_task"}}
    rows = held_out.values()
    overall = {"mean": float(np.mean([r["mean"] for r in rows])),
               "mean_over_pixels": float(np.mean([r["mean_over_pixels"] for r in rows])),
               "worst_over_pixels": min(r["worst_over_pixels"] for r in rows),
               "worst_over_network": min(r["worst_over_network"] for r in rows)}
    in_sample = score(rules[chosen], cases, pixels, tasks)
    return rounded({"rules": len(rules), "chosen_on_all": chosen,
                    "in_sample": {k: v for k, v in in_sample.items() if k != "per_task"},
                    "held_out": held_out, "held_out_overall": overall,
                    "held_out_shortfall": shortfall(overall)}), (shortfall(overall),
                                                                  -overall["mean"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=Path,
                        default=RESULTS / "blend_weight_multidepth.json")
    parser.add_argument("--out", type=Path, default=RESULTS / "blend_rule.json")
    parser.add_argument("--final", action="store_true",
                        help="also score kerastl's rule on test (once, after the choice)")
    args = parser.parse_args(argv)
    load_before = load_average()
    source = json.loads(args.cases.read_text())
    cases, pixels = source["cases"], source["pixels"]
    judged = {family: judge(rules, cases, pixels) for family, rules in families().items()}
    report = {family: row for family, (row, _) in judged.items()}
    ranks = {family: rank for family, (_, rank) in judged.items()}
    family = min(ranks, key=ranks.get)  # the decision rule, fixed before test was read
    for name, row in report.items():
        print(f"{name:>9}: chosen {row['chosen_on_all']} (val mean "
              f"{row['in_sample']['mean']}); leave one task out: "
              f"{row['held_out_overall']}, shortfall {row['held_out_shortfall']}")
    used = {"rule": f"clip({blend.GAP_WEIGHT_BASE:g} + {blend.GAP_WEIGHT_SLOPE:g} x gap), "
                    f"nearest of {list(blend.GAP_WEIGHTS)}; 0 where the probe is ahead",
            "weights": {t: [kerastl_weight(c) for c in runs] for t, runs in cases.items()}}
    for split in ("val", "test") if args.final else ("val",):
        row = score(None, cases, pixels, list(cases), split, pick=kerastl_weight)
        used[split] = {**rounded(row), "meets_goals": shortfall(row) == 0}
        print(f"kerastl's rule on {split}: " + json.dumps(
            {k: v for k, v in used[split].items() if k != "per_task"}))
        # What it replaced, on the same cases: PIXEL_WEIGHT with the probe rule.
        constant = score(lambda gap: blend.PIXEL_WEIGHT, cases, pixels, list(cases), split)
        used[f"{split}_constant"] = rounded({k: v for k, v in constant.items()
                                             if k != "per_task"})
        print(f"  the constant {blend.PIXEL_WEIGHT:g} on {split}: "
              + json.dumps(used[f"{split}_constant"]))
    write_results("blend_rule", {"cases_from": args.cases.name,
                                 "cases_commit": source.get("commit"), "final": args.final,
                                 "goals": GOALS, "families": report,
                                 "family_chosen": family,
                                 "rule_chosen": report[family]["chosen_on_all"],
                                 "kerastl": used},
                  load_before=load_before, output=args.out,
                  notes=["nothing is trained; the rules are chosen on validation images "
                         "only; with --final, kerastl's rule is also scored on test "
                         "(the cases' recorded test accuracies), once, after the choice"])


if __name__ == "__main__":
    main()
