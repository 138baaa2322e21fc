"""What a comparison writes besides its runs: summary.csv / summary.md (one row per head), val_acc.png / val_loss.png
(mean over seeds with a band) and report.md, which answers "can GAP replace the FC layer?" from the numbers.

Everything here is read back from the run directories (metrics.json, history.csv, config.json), never from memory, so
the summary of a resumed comparison is the same as that of an uninterrupted one.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import atomic
from ..models.classifier import count_params, create_model
from ..runs import Run

COLUMNS = ("head", "head_params", "total_params", "best_val_acc_mean", "best_val_acc_std", "final_val_acc_mean",
           "best_val_loss_mean", "best_epoch_mean", "train_val_gap", "seconds", "test_acc_mean", "runs", "status")
_PRETTY = {"gap": "GAP", "gmp": "GMP", "fc": "FC", "avgmax": "avg+max", "catavgmax": "cat(avg, max)", "conv": "conv"}


FIGURES = ("best_val_acc", "final_val_acc", "best_val_loss", "best_epoch", "final_train_acc", "seconds")


def head_row(head: str, runs: Sequence[Run]) -> dict:
    """One summary row from the runs of one head (one per seed). Accuracies are fractions; std is over seeds."""
    # a run that diverged in its first epoch has no weights and so no figures: NaN, and its status says why
    ms = [{**{k: math.nan for k in FIGURES}, **{k: v for k, v in r.metrics.items() if v is not None}} for r in runs]
    net = create_model(**runs[0].model_config.to_dict())
    statuses = sorted({m.get("status", "diverged before its first epoch ended") for m in ms})
    tests = [m["test_acc"] for m in ms if "test_acc" in m]
    best = [m["best_val_acc"] for m in ms]
    return {
        "head": head,
        "head_params": count_params(net.head),
        "total_params": count_params(net),
        "best_val_acc_mean": _mean(best),
        "best_val_acc_std": float(np.std(best, ddof=1)) if len(best) > 1 else 0.0,
        "final_val_acc_mean": _mean(m["final_val_acc"] for m in ms),
        "best_val_loss_mean": _mean(m["best_val_loss"] for m in ms),
        "best_epoch_mean": _mean(m["best_epoch"] for m in ms),
        "train_val_gap": _mean(m["final_train_acc"] - m["final_val_acc"] for m in ms),
        "seconds": _mean(m["seconds"] for m in ms),
        "test_acc_mean": _mean(tests) if len(tests) == len(ms) else None,
        "runs": len(ms),
        "status": ", ".join(statuses),
    }


def _mean(values) -> float:
    return float(np.mean(list(values)))


def write_summary(path: Path, runs: dict[str, list[Run]], features: dict, settings: dict) -> tuple[list[dict], str]:
    """Write every summary file of a comparison into ``path``; return the rows and the report's text."""
    rows = [head_row(h, rs) for h, rs in runs.items()]
    context = describe_setup(runs, settings)
    atomic.write_text(path / "summary.csv", to_csv(rows))
    atomic.write_text(path / "summary.md", to_markdown(rows, features, context))
    for key, label in (("val_acc", "validation accuracy"), ("val_loss", "validation loss")):
        plot_over_seeds(runs, key, label, path / f"{key}.png", context["title"])
    report = verdict(rows, features, context)
    atomic.write_text(path / "report.md", report)
    return rows, report


# -- tables -------------------------------------------------------------------------------------------------------
def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _cell(r[k]) for k in COLUMNS})
    return buf.getvalue()


def to_markdown(rows: list[dict], features: dict, context: dict) -> str:
    lines = [f"# {context['title']}", "", context["setup"], "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r[k]) for k in COLUMNS) + " |")
    lines += ["", "Accuracies are fractions of the validation set, means over seeds (std: spread over seeds); "
              "train_val_gap is final train minus final validation accuracy (overfitting); seconds: training time "
              "per run.", "", f"**Path:** {describe_path(features)}", "",
              "Figures: val_acc.png, val_loss.png (mean over seeds, band: min to max). Verdict: report.md."]
    return "\n".join(lines) + "\n"


def describe_path(features: dict) -> str:
    """Which path ran, and its memory, in one sentence."""
    if features.get("path") == "cached features":
        shape = "x".join(str(d) for d in features.get("map_shape", [])) or "?"
        mib = features.get("peak_bytes", 0) / 2**20
        dtype = features.get("dtype", "").replace("torch.", "")
        views = " and augmented view" if features.get("augmented_views") else ""
        return (f"cached features ({features.get('reason', '')}): the backbone ran once per image{views}, "
                f"{features.get('maps_computed', 0):,} feature maps of {shape} kept in memory ({mib:,.1f} MiB, "
                f"{dtype}), computed in {features.get('seconds', 0):.1f} s; every head trained on them")
    if features.get("path") == "streaming":
        return (f"streaming (the slow path): the backbone ran on every batch of every head, because "
                f"{features.get('reason', '')}; no feature maps were kept")
    return str(features.get("path", "unknown"))


def describe_setup(runs: dict[str, list[Run]], settings: dict) -> dict:
    first = next(iter(runs.values()))[0]
    cfg = first.config
    mo = cfg.get("model_options", {})
    weights, freeze = mo.get("weights"), mo.get("freeze", "none")
    backbone = (f"pretrained ({weights})" if weights else "trained from scratch") + (
        ", frozen" if freeze == "backbone" else ", BatchNorm frozen" if freeze == "bn" else "")
    seeds = [r.config.get("seed") for r in next(iter(runs.values()))]
    n_val = first.metrics.get("val", {}).get("images", "?")
    data = str(settings.get("data", cfg["data"]["data"]))
    title = f"Head comparison: {cfg['model']['model']} on {Path(data).name if Path(data).exists() else data}"
    epochs = cfg["train"]["epochs"]
    seed_list = ", ".join(map(str, seeds))
    setup = (f"{cfg['model']['model']} backbone {backbone}; {_count(len(seeds), 'seed')} ({seed_list}); "
             f"{_count(epochs, 'epoch')}, {cfg['train']['optimizer']} lr {cfg['train']['lr']}, "
             f"batch {cfg['train']['batch_size']}; {cfg['preprocess']['img_size']} px, augment "
             f"{cfg['data']['augment']}; {n_val} validation images.")
    return {"title": title, "setup": setup, "n_seeds": len(seeds), "backbone": backbone,
            "model": cfg["model"]["model"], "data": data}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


# -- figures ------------------------------------------------------------------------------------------------------
def curves(runs: Sequence[Run], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Epochs, mean, min and max of ``key`` over seeds (runs that stopped early contribute while they ran)."""
    series = [[row[key] for row in r.history] for r in runs]
    n = max((len(s) for s in series), default=0)
    table = np.full((len(series), n), np.nan)
    for i, s in enumerate(series):
        table[i, : len(s)] = s
    return np.arange(1, n + 1), np.nanmean(table, 0), np.nanmin(table, 0), np.nanmax(table, 0)


def plot_over_seeds(runs: dict[str, list[Run]], key: str, label: str, path: Path, title: str) -> None:
    """One curve per head: the mean over seeds, with a band from the lowest to the highest seed."""
    from matplotlib.ticker import MaxNLocator

    from ..plots import new_figure, save_figure

    fig = new_figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for head, rs in runs.items():
        ep, mean, lo, hi = curves(rs, key)
        (line,) = ax.plot(ep, mean, "o-", ms=3, label=f"{head} ({len(rs)} seed{'s' * (len(rs) > 1)})")
        if len(rs) > 1:
            ax.fill_between(ep, lo, hi, color=line.get_color(), alpha=0.2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel=label, title=title)
    if key.endswith("acc"):
        ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


# -- the verdict --------------------------------------------------------------------------------------------------
def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _pts(x: float) -> str:
    return f"{100 * abs(x):.1f} point{'s' * (round(100 * abs(x), 1) != 1)}"


def compare_two(a: dict, b: dict, n_seeds: int) -> tuple[float, float, str]:
    """Difference of mean best accuracies a - b, the seed spread it is measured against, and its reading in words.

    The spread is sqrt(std_a^2 + std_b^2): how much the difference between one run of each varies with the seed.
    """
    diff = a["best_val_acc_mean"] - b["best_val_acc_mean"]
    spread = float(np.hypot(a["best_val_acc_std"], b["best_val_acc_std"]))
    if n_seeds < 2:
        reading = "with one seed the seed spread is unknown: rerun with --seeds 0,1,2 to tell noise from a difference"
    elif abs(diff) > spread:
        reading = f"larger than the seed spread ({_pts(spread)}), so it is a real difference at these settings"
    else:
        reading = f"within the seed spread ({_pts(spread)}), so the two are not distinguishable at these settings"
    return diff, spread, reading


def verdict(rows: list[dict], features: dict, context: dict) -> str:
    """report.md: the answer, the winner and its margin, GAP vs FC, parameters and overfitting, all from ``rows``."""
    n = context["n_seeds"]
    lines = ["# Can GAP replace the fully-connected layer?", ""]
    failed = [r["head"] for r in rows if math.isnan(r["best_val_acc_mean"])]
    if failed:  # a head without figures (diverged before its first epoch ended) cannot be ranked
        lines += [f"**Cannot answer yet**: {', '.join(failed)} produced no figures (the status column says why); lower "
                  "--lr or set --clip-grad, and run the same command again.", ""]
        rows = [r for r in rows if r["head"] not in failed]
        if not rows:
            return "\n".join([*lines, f"Setting: {context['setup']}", ""])
    ranked = sorted(rows, key=lambda r: r["best_val_acc_mean"], reverse=True)
    by = {r["head"]: r for r in rows}
    if "gap" in by and "fc" in by:
        gap, fc = by["gap"], by["fc"]
        diff, spread, reading = compare_two(gap, fc, n)
        ratio = fc["head_params"] / max(gap["head_params"], 1)
        fewer = f"with {ratio:,.0f}x fewer head parameters ({gap['head_params']:,} vs {fc['head_params']:,})"
        if n < 2:
            how = (f"matches FC ({_pct(gap['best_val_acc_mean'])} each)" if abs(diff) < 1e-9 else
                   f"{'beats' if diff > 0 else 'trails'} FC by {_pts(diff)}")
            answer = f"**Probably{' yes' if diff >= 0 else ' not'}, but one seed cannot tell**: GAP {how} {fewer}."
        elif diff > spread:
            answer = f"**Yes.** GAP beats FC by {_pts(diff)}, more than the seed spread, {fewer}."
        elif abs(diff) <= spread:
            answer = (f"**Yes, at no measurable cost.** GAP and FC are within the seed spread "
                      f"({'+' if diff >= 0 else '-'}{_pts(diff)} for GAP), and GAP does it {fewer}.")
        else:
            answer = (f"**Not here.** FC beats GAP by {_pts(diff)}, more than the seed spread ({_pts(spread)}); GAP "
                      f"would save {ratio:,.0f}x head parameters at that cost.")
        if min(gap["best_val_acc_mean"], fc["best_val_acc_mean"]) >= 1 - 1e-9:
            answer += (" Both classify every validation image right, so this validation set cannot rank them: compare "
                       "on harder data or more images.")
        lines += [answer, ""]
    else:
        lines += ["The question needs both the gap and the fc head (--heads fc,gap,...); here is how the heads "
                  "that ran compare.", ""]
    lines += [f"Setting: {context['setup']}", ""]
    best = ranked[0]
    spread = f" ± {100 * best['best_val_acc_std']:.1f} (mean ± std over {n} seeds)." if n > 1 else " (one seed)."
    lines.append(f"- **Winner: {best['head']}** with a best validation accuracy of "
                 f"{_pct(best['best_val_acc_mean'])}{spread}")
    if len(ranked) > 1 and {best["head"], ranked[1]["head"]} != {"gap", "fc"}:  # else: the GAP vs FC line says it
        second = ranked[1]
        diff, _, reading = compare_two(best, second, n)
        lines.append(f"- Margin over the runner-up {second['head']} ({_pct(second['best_val_acc_mean'])}): "
                     f"{_pts(diff)}, {reading}.")
    if "gap" in by and "fc" in by:
        diff, _, reading = compare_two(by["gap"], by["fc"], n)
        lines.append(f"- GAP vs FC: {_pct(by['gap']['best_val_acc_mean'])} vs {_pct(by['fc']['best_val_acc_mean'])}, "
                     f"a difference of {'+' if diff >= 0 else '-'}{_pts(diff)} for GAP, {reading}.")
    lines.append("- Ranking (mean best validation accuracy): " + ", ".join(
        f"{r['head']} {_pct(r['best_val_acc_mean'])}" for r in ranked) + ".")
    lines.append("- Head parameters: " + ", ".join(f"{r['head']} {r['head_params']:,}" for r in rows) + ".")
    lines.append("- Overfitting (train minus validation accuracy at the end): " + ", ".join(
        f"{r['head']} {100 * r['train_val_gap']:+.1f} points" for r in rows) + ".")
    odd = [r for r in rows if r["status"] not in ("finished", "stopped early", "finished, stopped early")]
    for r in odd:
        lines.append(f"- Caution: the {r['head']} runs ended as: {r['status']}.")
    lines += ["", f"Path: {describe_path(features)}.", "",
              "Numbers: summary.csv / summary.md; curves: val_acc.png, val_loss.png; each run's details in "
              "<head>-s<seed>/."]
    return "\n".join(lines) + "\n"
