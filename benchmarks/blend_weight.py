"""The pixel blend's weight without validation data, on several seeds (issue 26).

A run with no validation images blends its network with the pixel model at a fixed
weight (``kerastl.recipes.pixel_blend.PIXEL_WEIGHT``). This chooses that weight, and
tests whether held-out evidence picks a better one, on the transfer suite's tasks
that have no validation split of their own (fewer than 50 images per class):

* **networks**: for each task and each ``--seeds`` seed, the default run with
  ``--pixel-blend off`` (``kerastl.fit`` in this process, on the task's ``train``
  folder), scored on the task's ``val`` folder at every weight of ``WEIGHTS``
  (weight 0: the network alone; the pixel model fitted on ``train`` as a run fits it).
  With ``--networks-from NAME``, the networks are instead those of
  ``transfer_suite.py``'s candidate ``NAME`` (``NAME_s1``, ``NAME_s2`` for the other
  seeds; run with ``--pixel-blend off``), e.g. ``--head multidepth``, now ``auto``'s.
  Each weight's accuracy is averaged over the seeds per task, each case at the weight a
  run would use: 0 where the run's linear probe cross-validated better than the pixel
  model (``run.json``), the weight otherwise. The weight chosen is the one closest to
  the issue's goals (``GOALS``: above pixels by a point on every task, at most half a
  point below the network alone, a mean margin of 3 points; the shortfalls summed,
  0 where all are met), then with the largest worst margin over pixels, then the
  largest mean;
* **fold evidence** (``--fold-evidence F``): what a run could learn without
  validation data: a fine-tune of ``F`` x the default step budget on 80 % of
  ``train`` (one stratified fold), the pixel model fitted on the same 80 %, and the
  blend's accuracy and log loss at every weight on the held-out 20 %. The weight each
  picks (ties as the recipe breaks them: ``PIXEL_WEIGHT`` first, then the network
  alone, then the smaller) is scored on ``val`` and set beside the chosen constant on
  the same cases; its cost is its seconds over the full run's;
* **multi-depth** (``--multi-depth``): the network + ``a`` x pixels + ``b`` x the
  multi-depth probe of the source base (:func:`kerastl.multi_depth_probe`), on ``val``;
* **headroom**: the best weight of each task (and of each run) picked knowing the
  split's labels, beside the constant: the most any evidence-based weight could add.

``--final`` also scores every weight on ``test`` (run it once, after the choice; until
then no test image is read, pixels' baseline included). Each (task, seed) result is
cached in ``<root>/cache/blend_weight/``, keyed by the kerastl code and the weights
scored, so the script resumes; a missing part (fold, multi-depth) is computed without
training the network again.

Run from the repository root (the suite's sources must exist: ``transfer_suite.py``)::

    python benchmarks/blend_weight.py --seeds 0,1,2
    python benchmarks/blend_weight.py --seeds 0 --fold-evidence 0.2
    python benchmarks/blend_weight.py --seeds 0,1,2 --multi-depth --final
    python benchmarks/blend_weight.py --resummarise   # summaries again, from the cases
    python benchmarks/blend_weight.py --tasks T1,T2,T3,T5,T6,T7,T8,T9 --networks-from mdoff \
        --final --out benchmarks/results/blend_weight_multidepth.json

Writes ``benchmarks/results/blend_weight.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from scipy.special import softmax
from sklearn.metrics import log_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, git_commit, load_average, write_results  # noqa: E402
from transfer_suite import (  # noqa: E402
    DEFAULT_ROOT,
    TASKS,
    code_id,
    ensure_sources,
    materialise_task,
    pixels_baseline,
)

import kerastl  # noqa: E402
from kerastl.config.choices import TARGET_STEPS  # noqa: E402
from kerastl.data.splits import DataSplits  # noqa: E402
from kerastl.models.forward import predict  # noqa: E402
from kerastl.models.linear_probe import stratified_folds  # noqa: E402
from kerastl.recipes import pixel_blend as blend  # noqa: E402

WEIGHTS = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)
NO_SPLIT_TASKS = ("T1", "T2", "T3", "T5", "T6", "T7", "T8", "T9")
PIXEL_AXIS, DEPTH_AXIS = (0.0, 1.0, 2.0, 4.0), (0.0, 0.1, 0.25, 0.5, 1.0)
GOALS = {"worst_over_pixels": 0.01, "worst_over_network": -0.005, "mean_over_pixels": 0.03}


def network_path(root: Path, task_id: str, seed: int, networks_from: str | None = None) -> Path:
    """The run folder of a case's network (blend off): trained here, or, with
    ``networks_from``, the ``transfer_suite.py`` run of that candidate (``NAME`` for seed
    0, ``NAME_s<seed>`` for the others)."""
    if networks_from:  # NAME, or NAME,OTHER: the one of them that ran on the task
        names = [n if seed == 0 else f"{n}_s{seed}" for n in networks_from.split(",")]
        task_dir = materialise_task(TASKS[task_id], root)
        found = sorted(path for name in names for path in (
            root / "runs" / task_dir.name).glob(f"{name}-*/model.keras"))
        if len(found) != 1:
            raise SystemExit(f"--networks-from {networks_from}: expected one finished "
                             f"run of {names} on {task_id}; found {len(found)}. Run "
                             "transfer_suite.py with that candidate first.")
        return found[0].parent
    return root / "runs_blend_weight" / task_id / f"seed{seed}"


def probe_and_pixel_cv(run_dir: Path, model, train, seed: int) -> dict:
    """What the recipe's rule compares without validation data: the run's linear-probe
    cross-validated accuracy (``run.json``) and the pixel model's, as a run computes it."""
    check = json.loads((run_dir / "run.json").read_text()).get("network_check") or {}
    size = int(model.input_shape[1])
    pixels = blend._PixelFit(model, train, size, "multiclass", 64, seed)
    return {"probe_cv": check.get("probe_accuracy"),
            "pixel_cv": pixels.cv_accuracy(blend.PIXEL_C)}


def blend_parts(model, train, data) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The network's logits on ``data``, the pixel model's (fitted on ``train`` as a run
    fits it) and the labels."""
    size = int(model.input_shape[1])
    logits, labels = predict(blend._logits_model(model), data.batches(size, 64))
    pixels = blend.fit_pixel_model(model, train, image_size=size, task="multiclass")
    return logits, pixels.logits(data.batches(size, 64)), labels


def scores_by_weight(model, train, data) -> dict[str, float]:
    """Accuracy on ``data`` of the network blended at every weight of ``WEIGHTS``."""
    _, by_weight = blend.choose_weight("multiclass", *blend_parts(model, train, data),
                                       weights=WEIGHTS)
    return {str(w): v for w, v in by_weight.items()}


def multi_depth_scores(task_id: str, seed: int, root: Path, records: dict) -> dict:
    """Val accuracy of the network + ``a`` x pixels + ``b`` x the multi-depth probe.

    The probe (:func:`kerastl.multi_depth_probe` on the frozen *source* base, fitted on
    ``train``) joins as log-probabilities; ``b = 0`` is the pixel blend alone.
    """
    from multi_depth_probe import source_model

    task = TASKS[task_id]
    task_dir = materialise_task(task, root)
    train = kerastl.from_folder(task_dir / "train")
    val = kerastl.from_folder(task_dir / "val", class_names=train.class_names)
    network = kerastl.load_model(network_path(root, task_id, seed) / "model.keras",
                                 compile=False)
    logits, pixels, labels = blend_parts(network, train, val)
    probe, _ = kerastl.multi_depth_probe(
        source_model(records[task.source], len(train.class_names)), train, seed=seed)
    size = int(network.input_shape[1])
    depths = np.log(np.clip(predict(probe, val.batches(size, 64))[0], 1e-12, 1.0))
    y = labels.reshape(-1)
    return {f"{a}/{b}": round(float(np.mean((logits + a * pixels + b * depths).argmax(1)
                                              == y)), 4)
            for a in PIXEL_AXIS for b in DEPTH_AXIS}


def fold_evidence(train, names, common: dict, fraction: float, output: Path) -> dict:
    """A short fine-tune on 80 % of ``train`` scored with pixels on the other 20 %."""
    y = train.labels.reshape(-1)
    folds = stratified_folds(y, 0)
    if folds is None:
        raise SystemExit("--fold-evidence needs at least 3 training images per class.")
    kept, held = next(iter(folds.split(np.zeros(len(y)), y)))
    part, fold = train.subset(kept), train.subset(held)
    epochs = max(1, math.ceil(fraction * TARGET_STEPS / math.ceil(len(part) / 32)))
    short = kerastl.fit(kerastl.RunConfig(output=str(output), epochs=epochs, **common),
                        splits=DataSplits(part, None, None, names))
    logits, pixels, labels = blend_parts(short.model, part, fold)
    _, accuracy = blend.choose_weight("multiclass", logits, pixels, labels, weights=WEIGHTS)
    y, classes = labels.reshape(-1), range(logits.shape[1])
    losses = {str(w): round(float(log_loss(y, softmax(logits + w * pixels, axis=1),
                                           labels=classes)), 4) for w in WEIGHTS}
    return {"fraction": fraction, "fold_images": len(fold), "epochs": epochs,
            "seconds": short.seconds, "accuracy": {str(w): v for w, v in accuracy.items()},
            "log_loss": losses}


def fold_picks(fold: dict) -> dict[str, str]:
    """The weight the fold's accuracy and log loss pick, ties broken as the recipe does."""
    order = [str(blend.PIXEL_WEIGHT), "0.0", *(str(w) for w in WEIGHTS
                                               if w not in (blend.PIXEL_WEIGHT, 0.0))]
    return {"accuracy": max(order, key=lambda w: (fold["accuracy"][w], -order.index(w))),
            "log_loss": min(order, key=lambda w: (fold["log_loss"][w], order.index(w)))}


def run_case(task_id: str, seed: int, root: Path, records: dict, args) -> dict:
    """One task at one seed: the network's val scores by weight (and the asked parts)."""
    kind = args.networks_from or args.head or "default"
    cache = root / "cache" / "blend_weight" / kind / f"{task_id}-seed{seed}.json"
    case = json.loads(cache.read_text()) if cache.is_file() else {}
    task = TASKS[task_id]
    task_dir, record = materialise_task(task, root), records[task.source]
    train = kerastl.from_folder(task_dir / "train")
    names = train.class_names
    common = dict(weights=record["weights_path"], pixel_blend="off", verbose=0, seed=seed,
                  **({"head": args.head} if args.head else {}))
    if case.get("code") != args.code or set(case.get("val", {})) != set(map(str, WEIGHTS)):
        val = kerastl.from_folder(task_dir / "val", class_names=names)
        if args.networks_from:
            run_dir = network_path(root, task_id, seed, args.networks_from)
            model = kerastl.load_model(run_dir / "model.keras", compile=False)
            seconds = json.loads((run_dir / "run.json").read_text())["seconds"]
        else:
            run_dir = network_path(root, task_id, seed)
            full = kerastl.fit(kerastl.RunConfig(data=str(task_dir / "train"),
                                                 output=str(run_dir), **common))
            model, seconds = full.model, full.seconds
        case = {"code": args.code, "task": task_id, "seed": seed, "seconds": seconds,
                "val": scores_by_weight(model, train, val),
                **probe_and_pixel_cv(run_dir, model, train, seed)}
    if args.fold_evidence and case.get("fold", {}).get("fraction") != args.fold_evidence:
        case["fold"] = fold_evidence(train, names, common, args.fold_evidence,
                                     network_path(root, task_id, seed).with_name(f"fold{seed}"))
    depth_keys = {f"{a}/{b}" for a in PIXEL_AXIS for b in DEPTH_AXIS}
    if args.multi_depth and set(case.get("multi_depth", {})) != depth_keys:
        case["multi_depth"] = multi_depth_scores(task_id, seed, root, records)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(case, indent=1))
    return case


def test_scores(task_id: str, seed: int, root: Path,
                networks_from: str | None = None) -> dict[str, float]:
    """``test`` accuracy by weight of a cached case's network (``--final`` only)."""
    task_dir = materialise_task(TASKS[task_id], root)
    train = kerastl.from_folder(task_dir / "train")
    model = kerastl.load_model(network_path(root, task_id, seed, networks_from)
                               / "model.keras", compile=False)
    return scores_by_weight(model, train, kerastl.from_folder(
        task_dir / "test", class_names=train.class_names))


def probe_rule(case: dict, weight: str) -> str:
    """The weight a run without validation data uses: ``weight``, or 0 (the network
    alone) where its linear probe cross-validated better than the pixel model."""
    probe, pixel = case.get("probe_cv"), case.get("pixel_cv")
    return "0.0" if probe is not None and pixel is not None and probe > pixel else weight


def summarise(cases: dict, pixels: dict, split: str, rule: bool = False) -> dict:
    """Per weight: mean over seeds per task, then margins over pixels and the network.

    With ``rule``, each case's weight is what the recipe uses (:func:`probe_rule`).
    """
    table = {}
    for w in map(str, WEIGHTS):
        pick = (lambda c, w=w: probe_rule(c, w)) if rule else (lambda c, w=w: w)
        per_task = {t: float(np.mean([c[split][pick(c)] for c in runs]))
                    for t, runs in cases.items()}
        network = {t: float(np.mean([c[split]["0.0"] for c in runs]))
                   for t, runs in cases.items()}
        over_pixels = {t: round(per_task[t] - pixels[t][f"{split}_accuracy"], 4)
                       for t in per_task}
        over_network = {t: round(per_task[t] - network[t], 4) for t in per_task}
        table[w] = {"accuracy": {t: round(v, 4) for t, v in per_task.items()},
                    "over_pixels": over_pixels, "over_network": over_network,
                    "mean_over_pixels": round(float(np.mean(list(over_pixels.values()))), 4),
                    "worst_over_pixels": min(over_pixels.values()),
                    "worst_over_network": min(over_network.values())}
        table[w]["meets_goals"] = all(table[w][key] >= bar for key, bar in GOALS.items())
    return table


def shortfall(row: dict) -> float:
    """How far a summary row falls short of :data:`GOALS`, summed over them (0: met).

    The weight is the one closest to every goal, so where no weight meets them all the
    choice still weighs each miss by its size, not one margin alone.
    """
    return round(sum(max(0.0, bar - row[key]) for key, bar in GOALS.items()), 4)


def evidence_summary(cases: dict, pixels: dict, constant: str) -> dict:
    """Val margins of the weights the fold evidence picked, beside ``constant`` on the
    same cases (the fold exists only for the seeds it was run on), and its cost."""
    folded = {t: [c for c in runs if "fold" in c] for t, runs in cases.items()}
    folded = {t: scored for t, scored in folded.items() if scored}
    out = {}
    for rule in ("accuracy", "log_loss", "constant"):
        over_pixels, over_network = {}, {}
        for t, scored in folded.items():
            picks = [constant if rule == "constant" else fold_picks(c["fold"])[rule]
                     for c in scored]
            val = np.mean([c["val"][w] for c, w in zip(scored, picks, strict=True)])
            over_pixels[t] = round(float(val) - pixels[t]["val_accuracy"], 4)
            over_network[t] = round(float(val - np.mean([c["val"]["0.0"] for c in scored])), 4)
            out.setdefault(f"{rule}_picks", {})[t] = picks
        if over_pixels:
            out[rule] = {"over_pixels": over_pixels, "over_network": over_network,
                         "mean_over_pixels": round(float(np.mean(list(over_pixels.values()))), 4),
                         "worst_over_pixels": min(over_pixels.values())}
    scored = [c for runs in folded.values() for c in runs]
    if scored:
        costs = [c["fold"]["seconds"] / c["seconds"] for c in scored]
        out["seconds_over_full_run"] = [round(min(costs), 2), round(max(costs), 2)]
        out["fractions"] = sorted({c["fold"]["fraction"] for c in scored})
    return out


def headroom(cases: dict, constant: str, split: str = "val") -> dict:
    """What any rule choosing the weight per task or per run could gain over ``constant``.

    The best weight of each task (mean over seeds) and of each case, picked knowing the
    split's labels: an upper bound on evidence-based weights, not a method. Where it
    is small, held-out evidence from a few training images (noisier than the split
    itself) cannot beat the constant on average.
    """
    weights = list(map(str, WEIGHTS))
    per_task = {t: [float(np.mean([c[split][w] for c in runs])) for w in weights]
                for t, runs in cases.items()}
    by_case = [c[split] for runs in cases.values() for c in runs]
    fixed = float(np.mean([np.mean([c[split][constant] for c in runs])
                           for runs in cases.values()]))
    best_per_task = float(np.mean([max(row) for row in per_task.values()]))
    best_per_case = float(np.mean([max(c[w] for w in weights) for c in by_case]))
    return {"split": split, "constant": constant, "constant_mean": round(fixed, 4),
            "best_weight_per_task": {t: weights[int(np.argmax(row))]
                                     for t, row in per_task.items()},
            "best_per_task_mean": round(best_per_task, 4),
            "best_per_case_mean": round(best_per_case, 4),
            "gain_per_task": round(best_per_task - fixed, 4),
            "gain_per_case": round(best_per_case - fixed, 4)}


def resummarise(path: Path) -> None:
    """Recompute the summaries of a results file from its recorded cases, in place.

    Nothing is trained or scored: the cases hold every network's accuracy at every
    weight. The file keeps its command, commit and machine; a note says when and at
    which commit the summaries were recomputed.
    """
    report = json.loads(path.read_text())
    cases, pixels = report["cases"], report["pixels"]
    chosen = str(report["chosen_on_val"])
    report["val"] = summarise(cases, pixels, "val")
    report["val_with_probe_rule"] = summarise(cases, pixels, "val", rule=True)
    report["fold_evidence"] = evidence_summary(cases, pixels, chosen)
    report["multi_depth"] = depth_summary(cases)
    report["headroom"] = {"val": headroom(cases, chosen)}
    if report.get("final"):
        report["test"] = summarise(cases, pixels, "test")
        report["test_with_probe_rule"] = summarise(cases, pixels, "test", rule=True)
        report["headroom"]["test"] = headroom(cases, chosen, "test")
    note = (f"summaries recomputed from the recorded cases at commit {git_commit()} "
            "(python benchmarks/blend_weight.py --resummarise): nothing retrained or rescored")
    report["notes"] = [n for n in report.get("notes", []) if not n.startswith("summaries ")]
    report["notes"].append(note)
    path.write_text(json.dumps(report, indent=2, default=float) + "\n")
    room = report["headroom"]["val"]
    print(f"val: weight {chosen} mean {room['constant_mean']:.4f}; best weight per task "
          f"{room['best_per_task_mean']:.4f} ({room['gain_per_task']:+.4f}), per run "
          f"{room['best_per_case_mean']:.4f} ({room['gain_per_case']:+.4f}); wrote {path}")


def depth_summary(cases: dict) -> dict:
    """Per (pixel weight a, probe weight b): the mean val accuracy over tasks and seeds."""
    scored = [c["multi_depth"] for runs in cases.values() for c in runs if "multi_depth" in c]
    if not scored:
        return {}
    means = {k: round(float(np.mean([s[k] for s in scored])), 4) for k in scored[0]}
    best_without = max((k for k in means if k.endswith("/0.0")), key=means.get)
    return {"mean_val_accuracy": means, "cases": len(scored),
            "best_without_probe": [best_without, means[best_without]],
            "best": [max(means, key=means.get), max(means.values())]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="the suite's folder")
    parser.add_argument("--tasks", default=",".join(NO_SPLIT_TASKS))
    parser.add_argument("--seeds", default="0,1,2", help="network seeds")
    parser.add_argument("--fold-evidence", type=float, default=0.0, metavar="F",
                        help="also test a short fine-tune's held-out fold (F x the steps)")
    parser.add_argument("--multi-depth", action="store_true",
                        help="also blend the multi-depth probe of the source base")
    parser.add_argument("--cases-code", default=None, metavar="CODE",
                        help="reuse the cached cases of this kerastl code (their networks "
                             "never blend: a change to the blend alone leaves them valid)")
    parser.add_argument("--head", default=None,
                        help="the networks' --head (default: what kerastl's default run uses)")
    parser.add_argument("--networks-from", default=None, metavar="NAME",
                        help="score the networks of transfer_suite.py's candidate NAME "
                             "(NAME_s1, NAME_s2 for seeds 1, 2; run with --pixel-blend off) "
                             "instead of training them here; NAME,OTHER: whichever of "
                             "them ran on each task")
    parser.add_argument("--final", action="store_true", help="also score the test images")
    parser.add_argument("--out", default=None, help="results file")
    parser.add_argument("--resummarise", action="store_true",
                        help="only recompute the summaries of the results file (--out, "
                             "else benchmarks/results/blend_weight.json) from its cases")
    args = parser.parse_args(argv)
    if args.resummarise:
        return resummarise(Path(args.out) if args.out else RESULTS / "blend_weight.json")
    args.code = args.cases_code or code_id(None)
    load_before, root, commit = load_average(), Path(args.root), git_commit()
    tasks, seeds = args.tasks.split(","), [int(s) for s in args.seeds.split(",")]
    records = ensure_sources(sorted({TASKS[t].source for t in tasks}), root, retrain=False)
    splits = ("val", "test") if args.final else ("val",)  # no test image before the choice
    pixels = {t: pixels_baseline(materialise_task(TASKS[t], root), splits) for t in tasks}
    cases = {t: [run_case(t, s, root, records, args) for s in seeds] for t in tasks}
    val = summarise(cases, pixels, "val")
    # A run without validation data applies the probe rule: the weight is chosen on the
    # table of what runs do (where no case carries the cross-validated accuracies, the
    # rule never fires and the two tables are one).
    ruled = summarise(cases, pixels, "val", rule=True)
    chosen = max(map(str, WEIGHTS), key=lambda w: (-shortfall(ruled[w]),
                                                    ruled[w]["worst_over_pixels"],
                                                    ruled[w]["mean_over_pixels"]))
    for w, row in ruled.items():
        print(f"weight {w:>4}: mean over pixels {row['mean_over_pixels']:+.4f}, worst "
              f"{row['worst_over_pixels']:+.4f}, worst over the network "
              f"{row['worst_over_network']:+.4f}{'  goals met' if row['meets_goals'] else ''}")
    report = {"kerastl_code": code_id(None), "cases_code": args.code,
              "commit_at_start": commit, "tasks": tasks,
              "seeds": seeds, "weights": list(WEIGHTS), "goals": GOALS,
              "head": args.head, "networks_from": args.networks_from,
              "pixel_C": blend.PIXEL_C, "kerastl_pixel_weight": blend.PIXEL_WEIGHT,
              "chosen_on_val": float(chosen), "pixels": pixels,
              "val": val, "val_with_probe_rule": ruled,
              "fold_evidence": evidence_summary(cases, pixels, chosen),
              "multi_depth": depth_summary(cases),
              "headroom": {"val": headroom(cases, chosen)},
              "cases": cases, "final": args.final}
    if args.final:
        for t in tasks:
            for case in cases[t]:
                case["test"] = test_scores(t, case["seed"], root, args.networks_from)
        report["test"] = summarise(cases, pixels, "test")
        report["test_with_probe_rule"] = summarise(cases, pixels, "test", rule=True)
        report["headroom"]["test"] = headroom(cases, chosen, "test")
        row = report["test_with_probe_rule"][chosen]
        print(f"test, weight {chosen}: mean over pixels {row['mean_over_pixels']:+.4f}, "
              f"worst {row['worst_over_pixels']:+.4f}, worst over the network "
              f"{row['worst_over_network']:+.4f}")
    write_results("blend_weight", report, load_before=load_before,
                  output=Path(args.out) if args.out else None)


if __name__ == "__main__":
    main()
