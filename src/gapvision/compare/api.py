"""``compare()``: several heads on one backbone, with the same data, seeds and starting weights; one run per pair.

Every (head, seed) is an ordinary run directory ``OUT/<head>-s<seed>/`` made by the training pipeline. For one seed
every head gets the same split, preprocessing, batch order, augmentation and initial backbone weights (the pipeline
seeds all of them from the seed alone; the backbone state is also handed over explicitly). With a frozen backbone the
heads train on cached feature maps (features.py) instead of running the backbone every step.

A comparison is resumable: run the same call again and finished runs (metrics.json) are kept, an interrupted one
continues from its checkpoint and the rest are trained. ``OUT/compare.json`` holds the settings, so that a rerun with
other settings is refused instead of mixing runs.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from .. import atomic, distributed
from ..data.imageset import DataSplits
from ..data.transforms import Preprocess
from ..errors import ConfigError, GapvisionError, Interrupted
from ..models.classifier import Classifier
from ..models.heads import HEADS
from ..models.timm_backbone import pretrained_preprocess
from ..runs import Run, default_run_dir, load_checkpoint, load_run
from ..train.pipeline import (DataOptions, FeedFn, ModelOptions, build_network, initialise, prepare_data,
                              print_notes, resume, split_options, train)
from ..train.trainer import TrainingDiverged, seed_everything
from .features import FeatureStore, cache_blocker, map_bytes
from .summary import write_summary

SETTINGS_FILE = "compare.json"
DONE = ("finished", "stopped early", "diverged")  # a run with one of these statuses is not trained again
FEATURES = ("auto", "cache", "stream")
QUICK = {"epochs": 2, "max_images": 1000}  # --quick: a from-scratch comparison that fits in CI time
_VOLATILE = ("quiet", "workers", "device")  # may differ between a killed compare and its continuation


@dataclass
class CompareResult:
    """The outcome of :func:`compare`: one summary row per head, the runs, which path ran, and the verdict."""

    path: Path
    heads: list[str]
    seeds: list[int]
    rows: list[dict]
    runs: dict[str, list[Run]]
    features: dict
    report: str

    def row(self, head: str) -> dict:
        """The summary row of ``head``; a ConfigError naming the compared heads when it was not compared."""
        found = next((r for r in self.rows if r["head"] == head), None)
        if found is None:
            heads = ", ".join(r["head"] for r in self.rows)
            raise ConfigError(f"head {head!r} was not compared: the heads are {heads}")
        return found

    def _repr_html_(self) -> str:  # notebooks: the head table and the overlaid curves (display.py)
        from ..display import compare_html

        return compare_html(self)

    @property
    def winner(self) -> str:
        """The head with the best mean best-validation accuracy."""
        return max(self.rows, key=lambda r: r["best_val_acc_mean"])["head"]


def compare(
    data: Any = "builtin:shapes",
    model: str = "gapcnn",
    heads: Sequence[str] | str = ("fc", "gap", "gmp"),
    seeds: Sequence[int] | str | int = (0,),
    *,
    out: str | Path | None = None,
    features: str = "auto",
    max_images: int | None = None,
    quick: bool = False,
    cache_limit: int | None = None,
    **options: Any,
) -> CompareResult:
    """Train ``model`` with each of ``heads`` for each of ``seeds`` on ``data``; write runs and summary to ``out``.

    ``options`` are the options of :func:`gapvision.train` (epochs, lr, weights, freeze, augment...). ``features``:
    ``auto`` trains on cached feature maps when the backbone is frozen (``freeze="backbone"``) and they fit in
    ``cache_limit`` bytes (default: half the memory), ``cache`` insists on it, ``stream`` runs the backbone every step.
    ``max_images`` caps the training images (stratified; val and test get a quarter as many); ``quick`` means
    ``epochs=2, max_images=1000`` unless given.
    """
    heads, seeds = parse_heads(heads), parse_seeds(seeds)
    for name in ("head", "seed", "out"):
        if name in options:
            raise ConfigError(f"compare takes {name}s=... (a list), not {name}=")
    if features not in FEATURES:
        raise ConfigError(f"unknown features={features!r}: choose {', '.join(FEATURES)}")
    if quick:
        options = {"epochs": QUICK["epochs"], **options}
        max_images = max_images or QUICK["max_images"]
    if max_images is not None and max_images < 2:
        raise ConfigError(f"--max-images must be at least 2 (got {max_images})")
    dopts, mopts, tcfg = split_options({"data": data, "model": model, "head": heads[0], **options})
    ctx = distributed.setup(tcfg.device)  # torchrun: every run trains with DDP; rank 0 decides and writes
    path = distributed.broadcast(Path(out) if out else default_run_dir(model, "compare"))
    settings = {"data": dopts.to_dict()["data"], "model": model, "max_images": max_images,
                "options": {k: v for k, v in options.items() if k not in _VOLATILE}}
    previous = check_settings(path, settings)
    say: Callable[[str], None] = (lambda s: None) if tcfg.quiet or not ctx.is_main else print
    store = FeatureStore()
    info: dict = {}
    for seed in seeds:
        states = distributed.broadcast({h: run_state(path / run_name(h, seed)) for h in heads})
        todo = {h: s for h, s in states.items() if s != "done"}
        if not todo:
            continue
        splits, pre = load_seed_data(dopts, seed, max_images, say)
        if not len(splits.val):
            raise ConfigError(f"{data} gives no validation images (--val-split {dopts.val_split:g}): compare "
                              "ranks the heads by validation accuracy, so give it some (e.g. --val-split 0.2)")
        pre = pretrained_preprocess(pre, model, options)  # timm: the pretrained config's size/mean/std if unset
        net = initial_model(mopts, splits, pre, seed, verbose=not tcfg.quiet and not info)
        feed, info = choose_path(features, net, splits, pre, dopts, tcfg, store, cache_limit)
        if feed is not None:
            say(f"seed {seed}: computing the frozen backbone's feature maps once for {len(heads)} heads")
            store.warm(net, splits, pre, dopts.augment, replace(tcfg, seed=seed), dopts.in_memory)
            info = {**info, **store.describe()}
        backbone_state = {k: v.detach().clone() for k, v in net.backbone.state_dict().items()}
        del net
        for head, state in todo.items():
            say(f"[{head}, seed {seed}] {'resuming' if state == 'resume' else 'training'} ({info['path']})")
            _run_one(path / run_name(head, seed), state, head, seed, data, model, options, splits, pre,
                     backbone_state, feed, say, record={"max_images": max_images} if max_images else None)
        store.drop_views()
    info = info or previous.get("features", {"path": "none (every run had finished before)"})
    if not ctx.is_main:  # DDP: the other ranks only helped train
        return CompareResult(path, heads, seeds, [], {}, info, "")
    atomic.write_json(path / SETTINGS_FILE, {"settings": settings, "heads": heads, "seeds": seeds, "features": info})
    runs = all_runs(path, heads, seeds)
    rows, report = write_summary(path, runs, info, settings)
    say(f"comparison saved in {path}: summary.md, summary.csv, val_acc.png, val_loss.png, report.md")
    return CompareResult(path, heads, seeds, rows, runs, info, report)


# -- arguments ----------------------------------------------------------------------------------------------------
def parse_heads(heads: Sequence[str] | str) -> list[str]:
    """``"fc,gap"`` or a list -> validated, de-duplicated head names in the given order."""
    names = [h.strip().lower() for h in (heads.split(",") if isinstance(heads, str) else heads) if h.strip()]
    bad = [h for h in names if h not in HEADS]
    if bad:
        raise ConfigError(f"unknown head {bad[0]!r} in --heads: choose from {', '.join(HEADS)}")
    if not names:
        raise ConfigError("--heads is empty: give at least one, e.g. --heads fc,gap,gmp")
    return list(dict.fromkeys(names))


def parse_seeds(seeds: Sequence[int] | str | int) -> list[int]:
    """``"0,1,2"``, ``"0-2"``, 3 or a list -> distinct integer seeds in the given order."""
    if isinstance(seeds, int):
        return [seeds]
    parts = [str(p).strip() for p in (seeds.split(",") if isinstance(seeds, str) else seeds)]
    out: list[int] = []
    try:
        for p in filter(None, parts):
            span = re.fullmatch(r"(\d+)-(\d+)", p)
            out.extend(range(int(span[1]), int(span[2]) + 1) if span else [int(p)])
    except ValueError:
        raise ConfigError(f"--seeds {seeds!r}: give integers such as 0,1,2 or 0-4") from None
    if not out:
        raise ConfigError("--seeds is empty: give at least one, e.g. --seeds 0,1,2")
    return list(dict.fromkeys(out))


def run_name(head: str, seed: int) -> str:
    return f"{head}-s{seed}"


# -- state on disk ------------------------------------------------------------------------------------------------
def check_settings(path: Path, settings: dict) -> dict:
    """Refuse to continue a comparison in ``path`` made with other settings; return what compare.json held."""
    file = path / SETTINGS_FILE
    if not file.exists():
        return {}
    try:
        old = json.loads(file.read_text())
    except json.JSONDecodeError:
        return {}  # a damaged summary file: the runs themselves say what is finished
    new = json.loads(json.dumps(settings, default=str))
    before = old.get("settings", {})
    flat_new, flat_old = _flat(new), _flat(before)
    changed = [k for k in sorted(set(flat_new) | set(flat_old)) if flat_new.get(k) != flat_old.get(k)]
    if changed:
        what = "; ".join(f"{k} {_shown(flat_old.get(k))} -> {_shown(flat_new.get(k))}" for k in changed)
        raise ConfigError(f"{path} holds a comparison with other settings ({what}): use the same options to continue "
                          f"it, or another --out")
    return old


def _flat(settings: dict) -> dict:
    """compare.json's settings with the options dict spread out (``epochs`` rather than ``options``)."""
    return {**{k: v for k, v in settings.items() if k != "options"}, **(settings.get("options") or {})}


def _shown(value: Any) -> str:
    return "not set" if value is None else str(value)


def run_state(run_dir: Path) -> str:
    """``done`` (metrics.json says finished), ``resume`` (a readable checkpoint), ``damaged`` or ``new``."""
    if not (run_dir / "config.json").exists():
        return "damaged" if (run_dir / "checkpoint.pt").exists() else "new"
    try:
        load_run(run_dir)
    except GapvisionError:
        return "damaged"
    try:
        status = json.loads((run_dir / "metrics.json").read_text()).get("status")
    except (OSError, json.JSONDecodeError, AttributeError):
        status = None
    if status in DONE and (run_dir / "model.safetensors").exists():
        return "done"
    if (run_dir / "checkpoint.pt").exists():
        try:
            load_checkpoint(run_dir / "checkpoint.pt")
        except GapvisionError:
            return "damaged"
        return "resume"
    return "new"


# -- one seed -----------------------------------------------------------------------------------------------------
def load_seed_data(dopts: DataOptions, seed: int, max_images: int | None,
                   say: Callable[[str], None] = print) -> tuple[DataSplits, Preprocess]:
    """The splits and preprocessing ``train(..., seed=seed)`` would use, capped at ``max_images`` training images."""
    capped = None
    if max_images is not None:
        from ..data.sources import limit_images, load_data

        whole = load_data(dopts.data, seed=seed, **dopts.load_kwargs())
        capped = limit_images(whole, max_images, seed)
        if len(capped.train) < len(whole.train):
            say(f"note: using {len(capped.train)} of {len(whole.train)} training images (--max-images {max_images}), "
                f"{len(capped.val)} validation" + (f", {len(capped.test)} test" if capped.test is not None else ""))
    splits, pre = prepare_data(dopts, seed, splits=capped)
    if distributed.current().is_main:  # once per seed, not once per head: train leaves given splits' notes to us
        print_notes(splits.notes)
    return splits, pre


def initial_model(mopts: ModelOptions, splits: DataSplits, pre: Preprocess, seed: int, verbose: bool) -> Classifier:
    """The network ``train(..., seed=seed)`` starts from (the head is irrelevant: the backbone is built first)."""
    seed_everything(seed)
    net = build_network(mopts, len(splits.classes), pre, verbose)
    initialise(net, mopts, splits, pre, seed)  # as train's start (--init)
    return net


def choose_path(features: str, net: Classifier, splits: DataSplits, pre: Preprocess, dopts: DataOptions, tcfg: Any,
                store: FeatureStore, cache_limit: int | None) -> tuple[FeedFn | None, dict]:
    """Cached feature maps (the store's feed) or the streaming path, and why."""
    if features == "stream":
        return None, {"path": "streaming", "reason": "--features stream was asked for"}
    blocker = cache_blocker(net)
    if blocker is None:
        n_train = len(splits.train) * (tcfg.epochs if dopts.augment != "none" else 1)
        n_maps = n_train + len(splits.val) + (len(splits.test) if splits.test is not None else 0)
        need = n_maps * map_bytes(net, pre, store.dtype)
        limit = cache_limit if cache_limit is not None else memory_bytes() // 2
        if need > limit:
            blocker = (f"the feature maps would need {need / 2**30:.1f} GiB, more than the {limit / 2**30:.1f} GiB "
                       f"allowed")
    if blocker is not None:
        if features == "cache":
            raise ConfigError(f"cannot train on cached features: {blocker}")
        return None, {"path": "streaming", "reason": blocker}
    return store.feed, {"path": "cached features", "reason": "the backbone is frozen",
                        "augmented_views": dopts.augment != "none"}


def memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def _run_one(run_dir: Path, state: str, head: str, seed: int, data: Any, model: str, options: dict,
             splits: DataSplits, pre: Preprocess, backbone_state: dict[str, torch.Tensor], feed: FeedFn | None,
             say: Callable[[str], None], record: dict | None = None) -> None:
    """Train, resume or retrain one (head, seed) run; a diverged run is recorded and the comparison goes on.
    ``record``: entries for its config.json (``max_images``: the sample it trained on, for evaluate and report)."""
    try:
        if state == "resume":
            resume(run_dir, splits=splits, feed=feed, quiet=options.get("quiet"))
            return
        if state == "damaged":
            say(f"note: {run_dir} is damaged (unreadable config or checkpoint): training it again")
            if distributed.current().is_main:
                shutil.rmtree(run_dir)
            distributed.barrier()
        # fp32 unless asked: the cached feature maps are fp32, and the cached and streaming paths must agree
        train(data, model, head, out=run_dir, splits=splits, preprocess=pre, backbone_state=backbone_state, feed=feed,
              record=record, **{"amp": "off", **options, "seed": seed})
    except TrainingDiverged as e:
        say(f"note: {head} (seed {seed}) diverged; it is reported as such: {e}")
    except Interrupted:
        raise Interrupted(f"compare interrupted during {run_dir.name}: run the same command again to continue "
                          f"(finished runs are kept and {run_dir.name} resumes)") from None


def all_runs(path: Path, heads: Iterable[str], seeds: Iterable[int]) -> dict[str, list[Run]]:
    return {h: [load_run(path / run_name(h, s)) for s in seeds] for h in heads}
