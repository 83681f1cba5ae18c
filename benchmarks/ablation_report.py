"""The ablation's report: a markdown page of tables, a figure and a JSON archive of the results.

Every paired comparison (arm - reference on the same seed) goes through
:func:`conprediff.evaluation.paired_difference`. Used by ``benchmarks/ablation.py`` (see
``docs/benchmarks/ablation.md``).
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from ablation_archive import archive_results
from ablation_eval import read_floor
from ablation_run import load_results
from ablation_setup import (
    BASELINE,
    DEFAULT,
    Protocol,
    arm_catalogue,
    config_key,
    context_base_text,
)
from common import machine_cores

from conprediff.evaluation import PairedResult, finite_summary, paired_difference, t_interval


def fmt(x: float, digits: int = 1) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def signed(x: float, digits: int = 1) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:+.{digits}f}"


def ci(mean: float, low: float, high: float, digits: int = 1, scale: float = 1.0) -> str:
    """``"-0.5 [-1.2, +0.3]"``: a mean and its interval, times ``scale``, signed."""
    return (f"{signed(mean * scale, digits)} [{signed(low * scale, digits)}, "
            f"{signed(high * scale, digits)}]")


def per_seed(seeds: list[int], diffs: Any, digits: int = 1) -> str:
    """Paired differences labelled by seed: ``"-5.0 (s0), +4.0 (s1)"``."""
    return ", ".join(f"{signed(d, digits)} (s{k})" for k, d in zip(seeds, diffs, strict=True))


def interp_time(points: list[tuple[float, float]], t: float) -> float:
    """Linear interpolation of (seconds, FID); NaN outside the measured range."""
    points = sorted(p for p in points if math.isfinite(p[0]))
    if not points or not points[0][0] <= t <= points[-1][0]:
        return math.nan
    xs, ys = zip(*points, strict=True)
    return float(np.interp(t, xs, ys))


def paired(res: dict, arm: str, seeds: list[int], step: int, metric: str = "fid",
           reference: str = BASELINE) -> tuple[list[int], PairedResult]:
    """``arm`` against ``reference`` on ``metric`` at ``step``, paired by seed: the seeds used
    (both have a finite value) and :func:`~conprediff.evaluation.paired_difference` of
    arm - reference (lower is better)."""
    both = [s for s in seeds if metric in res.get((arm, s, step), {})
            and metric in res.get((reference, s, step), {})]
    result = paired_difference([res[(arm, s, step)][metric] for s in both],
                               [res[(reference, s, step)][metric] for s in both])
    return [s for s, used in zip(both, result.used, strict=True) if used], result


def equal_time_rows(res: dict, arm: str, seeds: list[int], steps: list[int],
                    base_steps: list[int], metric: str = "fid") -> list[dict[str, Any]]:
    """The arm against the baseline at equal cumulative training time, per step.

    For each step where some seed of ``arm`` has ``metric``: the arm's value minus the same
    seed's baseline value, linearly interpolated at the arm's training seconds; the mean training
    seconds; and the mean per-seed ratio of the arm's time to the baseline's at the same step.
    A seed the comparison cannot use is named in ``left_out`` with the reason. Linear
    interpolation of a falling, convex curve overstates the baseline between its evaluations,
    which favours the arm.

    Returns
    -------
    list of dict
        Keys ``step``, ``metric``, ``seconds``, ``time_ratio`` (NaN without a timed baseline at
        that step), ``seeds`` and ``diffs`` (the used seeds and their differences, same order)
        and ``left_out`` (seed -> reason).
    """
    curves = {k: [(res[(BASELINE, k, s)]["train_seconds"], res[(BASELINE, k, s)][metric])
                  for s in base_steps
                  if (BASELINE, k, s) in res and metric in res[(BASELINE, k, s)]
                  and math.isfinite(res[(BASELINE, k, s)]["train_seconds"])]
              for k in seeds}
    rows = []
    for step in steps:
        used, diffs, times, rel, left_out = [], [], [], [], {}
        for k in seeds:
            a = res.get((arm, k, step))
            if not a or metric not in a:
                continue
            if not math.isfinite(a["train_seconds"]):
                left_out[k] = "its timing is missing"
                continue
            times.append(a["train_seconds"])
            b_same = res.get((BASELINE, k, step))
            if b_same and math.isfinite(b_same["train_seconds"]):
                rel.append(a["train_seconds"] / b_same["train_seconds"])
            if not curves[k]:
                left_out[k] = f"no timed baseline {metric}"
                continue
            value_b = interp_time(curves[k], a["train_seconds"])
            if math.isfinite(value_b):
                used.append(k)
                diffs.append(a[metric] - value_b)
            else:
                first, last = min(curves[k])[0], max(curves[k])[0]
                left_out[k] = (f"{a['train_seconds']:.0f} s is outside the baseline's "
                               f"{first:.0f}-{last:.0f} s")
        if times or left_out:
            rows.append({"step": step, "metric": metric,
                         "seconds": float(np.mean(times)) if times else math.nan,
                         "time_ratio": float(np.mean(rel)) if rel else math.nan,
                         "seeds": used, "diffs": diffs, "left_out": left_out})
    return rows


def check_configs(res: dict, arms: list[str], catalogue: dict) -> None:
    """Refuse results of an arm that another configuration produced."""
    for (arm, seed, step), r in res.items():
        if arm in arms and r.get("config") != config_key(catalogue[arm]):
            raise SystemExit(
                f"the result of arm {arm!r}, seed {seed}, step {step} was produced by "
                f"{r.get('config')}, not by the arm's configuration {config_key(catalogue[arm])} "
                "(did a library default change? the folder's protocol.json can pin the old "
                "value in its context_base, see --context-base); rename its folder to the arm "
                "it is, or use another --out")


def header_section(out: Path, p: Protocol, seeds: list[int], aliases: dict[str, str],
                   command: str, accuracy: float | None, quick: bool, report_only: bool
                   ) -> list[str]:
    """Report lines: the title, who wrote it, the protocol, the context base and aliases."""
    title = f"Ablation results: {p.dataset}" + ("" if out.name == p.dataset else f" ({out.name})")
    lines = ["---", "orphan: true", "---", "", f"# {title}", ""]
    if quick:
        lines += ["**SMOKE RUN (`--quick`): tiny models, 20 steps, 64 samples. These numbers are",
                  "not results and say nothing about context prediction.**", ""]
    lines += [
        (f"Rewritten by `{command}` on {time.strftime('%Y-%m-%d %H:%M')} from the results on "
         "disk; the commands that produced them are given where the results are discussed "
         "(`docs/benchmarks/ablation.md`)." if report_only else
         f"Written by `{command}` on {time.strftime('%Y-%m-%d %H:%M')}, {machine_cores()}."),
        "",
        f"Protocol: {p.dataset} ({p.size}x{p.size}), UNet base {p.base_channels} mults "
        f"{tuple(p.channel_mults)}, batch {p.batch_size}, lr {p.lr} (constant, warm-up "
        f"{p.lr_warmup_steps}), grad clip {p.grad_clip}, EMA {p.ema_decay} with warm-up, "
        f"T = {p.timesteps}; {len(seeds)} paired seeds {seeds}; {p.n_samples} DDIM-"
        f"{p.sample_steps} samples per model, sampling seed {p.sample_seed} for every model; "
        f"features of a LeNet trained on the data"
        + (f" (held-out accuracy {accuracy:.4f})" if accuracy is not None else "") + ". "
        "Differences are ConPreDiff - baseline on the same seed (negative favours ConPreDiff); "
        "CI: 95 % t-interval of the mean difference.",
        "",
    ]
    if p.context_base:
        default = config_key(arm_catalogue(p.timesteps, p.context_base)[DEFAULT])
        lines += [
            f"Every arm is built on `ContextPrediction({context_base_text(p.context_base)})` "
            "(the folder's `--context-base`), not on today's library defaults: the reference "
            f"arm `{DEFAULT}` is `{default}`.", ""]
    if aliases:
        lines += ["Arms that are the same run: " + ", ".join(
            f"`{a}` = `{b}`" for a, b in aliases.items()) + ".", ""]
    return lines


def curve_section(res: dict, arms: list[str], seeds: list[int], steps: list[int],
                  base_steps: list[int]) -> tuple[list[str], dict[str, list[tuple]]]:
    """Report lines: FID against steps per arm, and the baseline's best step; and the curves
    ``(step, mean, s.d.)`` per arm."""
    lines = ["## FID against training steps (mean +- s.d. over seeds, n)", "",
             "| arm | " + " | ".join(str(s) for s in base_steps) + " |",
             "|---" * (len(base_steps) + 1) + "|"]
    curves: dict[str, list[tuple[int, float, float]]] = {}
    for arm in arms:
        cells, curve = [], []
        for s in base_steps:
            vals = [res[(arm, k, s)]["fid"] for k in seeds if (arm, k, s) in res]
            if vals:
                sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                cells.append(f"{np.mean(vals):.1f} +- {sd:.1f} ({len(vals)})")
                curve.append((s, float(np.mean(vals)), sd))
            else:
                cells.append("")
        curves[arm] = curve
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines.append("")
    base_curve = [c for c in curves.get(BASELINE, []) if c[0] in steps]
    if base_curve:
        best = min(base_curve, key=lambda c: c[1])
        if best[0] != base_curve[-1][0]:
            verdict = " (it stopped improving before the last step)."
        elif len(base_curve) > 1 and base_curve[-2][1] - best[1] < 0.05 * best[1]:
            verdict = (f" -- the last step, but within 5 % of step {base_curve[-2][0]}'s "
                       f"{base_curve[-2][1]:.2f}: a plateau.")
        else:
            verdict = " -- the last step: it is still improving, so extend `--steps`."
        lines += [f"Baseline's best mean FID {best[1]:.2f} at step {best[0]}" + verdict, ""]
    return lines, curves


def paired_section(res: dict, others: list[str], seeds: list[int], steps: list[int]
                   ) -> list[str]:
    """Report lines: each arm against the baseline at equal steps (FID)."""
    lines = ["## Paired differences at equal training steps (FID)", "",
             "| arm | step | differences per seed | mean [95 % CI] | mean ratio | in favour |"
             " goal (ratio <= 0.9, all in favour) |", "|---|---|---|---|---|---|---|"]
    for arm in others:
        for s in steps:
            used, r = paired(res, arm, seeds, s)
            if not used:
                continue
            goal = "yes" if r.mean_ratio <= 0.9 and r.n_favour == r.n else "no"
            lines.append(f"| {arm} | {s} | {per_seed(used, r.differences)} | "
                         f"{ci(r.mean, r.low, r.high)} | {r.mean_ratio:.3f} | "
                         f"{r.n_favour}/{r.n} | {goal} |")
    return [*lines, ""]


def last_step_section(res: dict, arms: list[str], seeds: list[int], last: int) -> list[str]:
    """Report lines: precision, recall and KID at the last step, with paired differences."""
    lines = [f"## Precision, recall, KID at step {last} (mean +- s.d.; paired difference "
             "mean [95 % CI])", "",
             "KID is computed on the LeNet features standardised with the real set's "
             "statistics (`kernel_inception_distance(..., standardize=True)`); on the raw "
             "features its spread swamps its mean. n/a: results written before it was "
             "recorded.", "",
             "Every cell gives the number of seeds (or pairs) it is computed from in brackets.",
             "",
             "| arm | FID | precision | recall | KID x 1e3 | d precision | d recall "
             "| d KID x 1e3 |",
             "|---|---|---|---|---|---|---|---|"]
    metrics = (("precision", 1, 3), ("recall", 1, 3), ("kid_standardized", 1e3, 2))
    for arm in arms:
        rows = [res[(arm, k, last)] for k in seeds if (arm, k, last) in res]
        if not rows:
            continue
        cells = []
        for m, scale, digits in (("fid", 1, 1), *metrics):
            mean, sd, n = finite_summary([r[m] * scale for r in rows if m in r])
            cells.append(f"{fmt(mean, digits)} +- {fmt(sd, digits)} ({n})" if n else "n/a")
        for m, scale, digits in metrics:
            if arm == BASELINE:
                cells.append("")
                continue
            _, r = paired(res, arm, seeds, last, m)
            cells.append(f"{ci(r.mean, r.low, r.high, digits, scale)} ({r.n})" if r.n else "n/a")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def equal_time_section(res: dict, others: list[str], seeds: list[int], steps: list[int],
                       base_steps: list[int]) -> list[str]:
    """Report lines: each arm against the baseline at equal training time (FID and cbFID)."""
    lines = ["## Equal wall-clock time (arm at each step against the baseline at the same "
             "cumulative training time, interpolated per seed between its evaluations)", "",
             "| step | arm | metric | train s (mean) | time / baseline's at equal steps | "
             "differences per seed | mean [95 % CI] | in favour |",
             "|---|---|---|---|---|---|---|---|"]
    for arm in others:
        rows = [row for metric in ("fid", "fid_class_balanced")
                for row in equal_time_rows(res, arm, seeds, steps, base_steps, metric)]
        if not rows:
            lines.append(f"| | {arm} | | timing missing | | | | |")
        for row in sorted(rows, key=lambda r: r["step"]):
            parts = [per_seed(row["seeds"], row["diffs"])] if row["diffs"] else []
            per = ", ".join(parts + [f"s{k} left out: {why}" for k, why in row["left_out"].items()])
            label = "FID" if row["metric"] == "fid" else "cbFID"
            lines.append(f"| {row['step']} | {arm} | {label} | {fmt(row['seconds'], 0)} | "
                         f"{fmt(row['time_ratio'], 3)} | {per} | {ci(*t_interval(row['diffs']))}"
                         f" | {sum(d < 0 for d in row['diffs'])}/{len(row['diffs'])} |")
    return [*lines, "", "Wall time is measured on whatever the machine was doing: the arms run "
            "one after another, so load changes show up here (each result JSON records the load "
            "average, and newer ones the torch threads and device).", ""]


def conditions_section(res: dict, arms: list[str]) -> list[str]:
    """Report lines: when each arm's results were written, with how many threads, at what load."""
    conditions = []
    for arm in arms:
        rows = [r for (a, _, _), r in res.items() if a == arm and r.get("finished")]
        if rows:
            days = sorted(r["finished"] for r in rows)
            threads = sorted({str(r.get("threads", "?")) for r in rows})
            loads = [r["load_average"] for r in rows if "load_average" in r]
            load = f", load average {min(loads):.1f}-{max(loads):.1f}" if loads else ""
            conditions.append(f"`{arm}`: results written {days[0]} to {days[-1]}, threads "
                              f"{'/'.join(threads)}{load}")
    if not conditions:
        return []
    return ["Timing conditions per arm (from the result files): " + "; ".join(conditions)
            + ".", ""]


def write_report(out: Path, docs: Path, arms: list[str], aliases: dict[str, str],
                 seeds: list[int], steps: list[int], base_steps: list[int], p: Protocol,
                 command: str, accuracy: float | None, quick: bool,
                 report_only: bool = False) -> Path:
    """Write ``<docs>/<stem>_results.md`` (the tables), ``_fid.png`` (the figure) and
    ``_results.json`` (the archive) from the results in ``out``; returns the page's path."""
    res = load_results(out)
    check_configs(res, arms, arm_catalogue(p.timesteps, p.context_base))
    others = [a for a in arms if a != BASELINE]
    lines = header_section(out, p, seeds, aliases, command, accuracy, quick, report_only)
    curve_lines, curves = curve_section(res, arms, seeds, steps, base_steps)
    lines += curve_lines
    lines += paired_section(res, others, seeds, steps)
    lines += class_section(out, res, arms, seeds, base_steps, p.n_samples)
    lines += against_default_section(res, arms, seeds, steps)
    lines += last_step_section(res, arms, seeds, steps[-1])
    lines += equal_time_section(res, others, seeds, steps, base_steps)
    lines += conditions_section(res, arms)
    stem = report_stem(out, p, quick)
    figure = plot(docs / f"{stem}_fid.png", res, arms, seeds, steps, curves, quick)
    if figure is not None:
        lines += [f"![FID against steps]({figure.name})", ""]
    path = docs / f"{stem}_results.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    archive_results(docs / f"{stem}_results.json", res, command, p, accuracy, read_floor(out))
    return path


def report_stem(out: Path, p: Protocol, quick: bool) -> str:
    """File-name stem of the report: ``ablation_<dataset>`` when ``--out`` is named after the
    data set; else ``ablation_<out folder name>`` when that name holds the data set's
    (``digits-small``), or ``ablation_<dataset>_<out folder name>``."""
    name = out.name if p.dataset in out.name else f"{p.dataset}_{out.name}"
    return f"ablation_{name}{'_quick' if quick else ''}"


def class_section(out: Path, res: dict, arms: list[str], seeds: list[int],
                  base_steps: list[int], n_samples: int) -> list[str]:
    """Report lines: class-balanced FID, class proportions and the ideal models' FIDs."""
    have = [s for s in base_steps
            if any("fid_class_balanced" in res.get((BASELINE, k, s), {}) for k in seeds)]
    floor = read_floor(out, n_samples)
    if not have and floor is None:
        return []
    lines = ["## Class proportions, within-class quality and the noise floor", "",
             "FID in the LeNet's features moves with the class proportions of each draw of "
             "samples. `cbFID` is the FID with the samples reweighted to the real set's class "
             "proportions (`class_balanced_frechet_distance`; both sets' classes predicted by "
             "the LeNet): within-class quality. `TV` is the total variation between the "
             "predicted class proportions of samples and real images (`class_total_variation`)."
             " Computed from each evaluation's saved features, so only at the steps where "
             "they were saved.", ""]
    if floor is not None:
        def pm(key: str, digits: int) -> str:
            value, se = floor.get(key, math.nan), floor.get(key + "_se", math.nan)
            return f"{fmt(value, digits)} +- {fmt(se, digits)}"

        lines += [
            "**An ideal model's FID is not 0.** With "
            f"{floor['n_samples']} samples against the {floor['n_real']} real images, a model "
            "that samples the data distribution itself, independently of the real set, would "
            f"score about **FID {pm('fid', 2)}, cbFID {pm('fid_class_balanced', 2)}**: FIDs "
            f"between disjoint random halves of the real set (sizes {floor['halves']}) are "
            "linear in 1/n1 + 1/n2 and are extrapolated to the protocol's sizes. A model that "
            "copies the real images (it samples them with replacement) scores about "
            f"**FID {pm('copy_fid', 2)}, cbFID {pm('copy_fid_class_balanced', 2)}**, measured "
            "directly on bootstrap draws. The models here are trained on the real images they "
            "are compared with, so they can sit anywhere between the two (the copy level is not "
            "a bound). (+- is the standard error of the procedure over "
            f"{floor['groups']} independent groups of {floor['repeats']} draws, "
            "`Evaluator.floor`, not the spread of one model's FID across sampling draws.)", ""]
    if have:
        lines += ["| step | arm | cbFID mean +- s.d. (n) | TV mean | d cbFID per seed | "
                  "d cbFID mean [95 % CI] | ratio | in favour | d TV mean [95 % CI] |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for s in have:
            for arm in arms:
                rows = [res[(arm, k, s)] for k in seeds
                        if "fid_class_balanced" in res.get((arm, k, s), {})]
                if not rows:
                    continue
                mean, sd, n = finite_summary([r["fid_class_balanced"] for r in rows])
                cells = [f"{fmt(mean, 2)} +- {fmt(sd, 2)} ({n})",
                         fmt(finite_summary([r["class_tv"] for r in rows])[0], 3)]
                if arm == BASELINE:
                    cells += ["", "", "", "", ""]
                else:
                    used, r = paired(res, arm, seeds, s, "fid_class_balanced")
                    if not used:
                        continue
                    tv = paired(res, arm, seeds, s, "class_tv")[1]
                    cells += [per_seed(used, r.differences, 2), ci(r.mean, r.low, r.high, 2),
                              fmt(r.mean_ratio, 3), f"{r.n_favour}/{r.n}",
                              ci(tv.mean, tv.low, tv.high, 3)]
                lines.append(f"| {s} | {arm} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def against_default_section(res: dict, arms: list[str], seeds: list[int],
                            steps: list[int]) -> list[str]:
    """Report lines: every variant against the default ConPreDiff arm on the same seeds, for
    FID and cbFID (a variant is judged against the configuration it would replace, not only
    against the baseline)."""
    rows = []
    for arm in arms:
        if arm in (BASELINE, DEFAULT):
            continue
        for s in steps:
            for metric, label in (("fid", "FID"), ("fid_class_balanced", "cbFID")):
                used, r = paired(res, arm, seeds, s, metric, reference=DEFAULT)
                if not used:
                    continue
                rows.append(f"| {arm} | {s} | {label} | {per_seed(used, r.differences)} | "
                            f"{ci(r.mean, r.low, r.high)} | {r.n_favour}/{r.n} |")
    if not rows:
        return []
    return ["## Each variant against the default arm (same seed)", "",
            f"Differences are variant - `{DEFAULT}` on the same seed (negative favours the "
            "variant); both were trained with the same batches, timesteps and noise.", "",
            "| arm | step | metric | differences per seed | mean [95 % CI] | variant better |",
            "|---|---|---|---|---|---|", *rows, ""]


def plot(path: Path, res: dict, arms: list[str], seeds: list[int], steps: list[int],
         curves: dict, quick: bool) -> Path | None:
    """FID against steps per arm (mean +- s.d.) and each arm's paired difference from the
    baseline (mean and 95 % interval), saved to ``path``; None when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(curves.values()):
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, arm in enumerate(arms):
        c, colour = curves[arm], f"C{i % 10}"
        if not c:
            continue
        x, m, sd = (np.array(v) for v in zip(*c, strict=True))
        ax1.plot(x, m, marker="o", ms=3, label=arm, color=colour,
                 lw=2 if arm in (BASELINE, DEFAULT) else 1)
        ax1.fill_between(x, m - sd, m + sd, alpha=0.15, color=colour)
        if arm == BASELINE:
            continue
        pts = []
        for s in steps:
            used, r = paired(res, arm, seeds, s)
            if used:
                pts.append((s, r.mean, r.low, r.high))
        if pts:
            x, m, lo, hi = (np.array(v) for v in zip(*pts, strict=True))
            ax2.plot(x, m, marker="o", ms=3, label=arm, color=colour)
            ok = np.isfinite(lo)
            ax2.fill_between(x[ok], lo[ok], hi[ok], alpha=0.15, color=colour)
    ax1.set(xlabel="training steps", ylabel="FID (LeNet features)",
            title="FID against steps: mean +- s.d. over seeds")
    ax2.axhline(0, color="k", lw=0.8)
    ax2.set(xlabel="training steps", ylabel="FID(ConPreDiff) - FID(baseline)",
            title="paired difference: mean, 95 % CI")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    if quick:
        fig.suptitle("SMOKE RUN (--quick): not results", color="red")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
