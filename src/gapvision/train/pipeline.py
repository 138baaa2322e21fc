"""The one pipeline every command reuses: source -> ImageSet -> batches -> Classifier -> Trainer -> run directory.

``train()`` is what ``gapvision train`` calls; ``resume()``, ``evaluate()`` and the other commands reuse its parts.
"""
from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .. import __version__, distributed
from ..data.batches import Feed, make_batches  # noqa: F401 (the pipeline's batch maker, shared)
from ..data.imageset import DataSplits
from ..data.memory import available_memory
from ..data.transforms import Preprocess
from ..errors import ConfigError, DataError, GapvisionError, Interrupted
from ..models.backbones import Backbone
from ..models.classifier import Classifier, ModelConfig, create_model, has_batchnorm
from ..models.residual_init import NORMS
from ..models.timm_backbone import pretrained_preprocess
from ..options import GROUPS, DataOptions, ModelOptions
from ..plots import plot_confusion, plot_curves
from ..predictor import Predictor, inference_options
from ..runs import FORMAT_VERSION, Run, RunWriter, default_run_dir, load_checkpoint, load_run, load_run_weights
from . import metrics as M
from .config import TrainConfig
from .lr_find import START_LR, END_LR, STEPS, LRFindResult, apply_suggestion, check_sweep, plot_lr_find, sweep
from .recipes import apply_recipe, choose_recipe
from .trainer import Trainer, TrainingDiverged, resolve_device, seed_everything, set_deterministic


def split_options(options: dict[str, Any]) -> tuple[DataOptions, ModelOptions, TrainConfig]:
    """Sort keyword options into data, model and training groups; an unknown name is a clear error."""
    groups = GROUPS
    names = [{f.name for f in fields(g)} for g in groups]
    unknown = set(options) - set().union(*names)
    if unknown:
        raise ConfigError(f"unknown option(s): {', '.join(sorted(unknown))}")
    built = [g(**{k: v for k, v in options.items() if k in n and v is not None}) for g, n in zip(groups, names)]
    return built[0], built[1], built[2]  # type: ignore[return-value]


def prepare_data(opts: DataOptions, seed: int = 0, preprocess: Preprocess | None = None,
                 splits: DataSplits | None = None, max_size: int = 224) -> tuple[DataSplits, Preprocess]:
    """Load the splits (unless given, e.g. by compare) and settle channels, size and normalisation (or reuse a run's
    ``preprocess``); an image size taken from the data is at most ``max_size`` (the model's native size)."""
    from ..data.sources import load_data, resolve_preprocess

    if splits is None:
        splits = load_data(opts.data, seed=seed, **opts.load_kwargs())
    if preprocess is None:
        channels = opts.channels if opts.channels == "auto" else int(opts.channels)
        preprocess = resolve_preprocess(splits, channels=channels, img_size=opts.img_size, normalize=opts.normalize,
                                        max_size=max_size)
    return splits, preprocess


def input_defaults(options: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, bool]]:
    """The user's ``options`` with the input settings that follow from the model, the largest input size to take
    from the data, and what the plain defaults need to know of the network (``bf16``: bf16 autocast is fast for it
    here; ``deep_no_norm``: it has more than PLAIN_DEEP_NO_NORM_CONVS convolutions larger than 1 x 1 and no
    normalisation layers; ``grouped_norm``: it has grouped convolutions and BatchNorm layers (not ConvNeXt's
    LayerNorms);
    ``grouped_no_residual``: that, and no residual branch ends in a normalisation layer (models/residual_init.py's
    :func:`~gapvision.models.residual_init.residual_branch_norms` on one forward pass of zeros); all only from
    scratch):
    for pretrained weights under the transfer recipe, the backbone's native size and the normalisation its weights
    expect (unless set); otherwise at most the native size of the model (gapcnn when none is named). The backbone
    is built once, to read these. (Whether the network has normalisation layers is read from the network actually
    built, which a recipe may choose: :func:`initialise`.)"""
    from ..models.backbones import probe_backbone
    from .recipes import PLAIN_DEEP_NO_NORM_CONVS, native_bf16

    backbone = probe_backbone(options.get("model") or "gapcnn")
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    grouped = any(m.groups > 1 for m in convs)
    scratch = not options.get("weights")  # the lr rules were measured from scratch, not for fine-tuning
    normalised = has_normalization(backbone)
    spatial = sum(max(m.kernel_size) > 1 for m in convs)
    traits = {"bf16": not grouped and native_bf16(str(options.get("device") or "auto")),
              "deep_no_norm": scratch and not normalised and spatial > PLAIN_DEEP_NO_NORM_CONVS,
              "grouped_norm": scratch and grouped and has_batchnorm(backbone)}
    traits["grouped_no_residual"] = traits["grouped_norm"] and not has_residual_norms(backbone)
    size = backbone.native_size
    if choose_recipe(options, img_size=0) == "transfer":
        filled = {"img_size": size, "normalize": backbone.tv_normalize}
        return {**filled, **{k: v for k, v in options.items() if v is not None}}, size, traits
    return options, size, traits


FeedFn = Callable[[Classifier, DataSplits, Preprocess, DataOptions, TrainConfig], Feed]


def run_config(data: DataOptions, model: ModelOptions, mcfg: ModelConfig, pre: Preprocess, tcfg: TrainConfig,
               classes: list[str], world_size: int = 1) -> dict:
    """Everything config.json holds: enough to rebuild model, classes and transforms without other files."""
    return {
        "format_version": FORMAT_VERSION,
        "gapvision_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "data": data.to_dict(),
        "preprocess": pre.to_dict(),
        "model": mcfg.to_dict(),
        "model_options": {"weights": model.weights, "freeze": model.freeze, "init": model.init},
        "train": tcfg.to_dict(),
        "classes": list(classes),
        "seed": tcfg.seed,
        "world_size": world_size,
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "device": str(resolve_device(tcfg.device))},
    }


def train(data: Any = "builtin:shapes", model: str | None = None, head: str | None = None, *,
          out: str | Path | None = None,
          splits: DataSplits | None = None, preprocess: Preprocess | None = None,
          backbone_state: dict[str, torch.Tensor] | None = None, feed: FeedFn | None = None,
          record: dict[str, Any] | None = None, **options: Any) -> Run:
    """Train ``model`` with ``head`` on ``data`` and return the finished :class:`Run`.

    ``options`` are any field of DataOptions (val_split, channels, img_size, normalize, augment, skip_bad...),
    ModelOptions (dropout, hidden, weights, freeze) or TrainConfig (epochs, batch_size, optimizer, lr, seed...).
    For compare: ``splits``/``preprocess`` already loaded from ``data``, the ``backbone_state`` to start from, and a
    ``feed`` that swaps the network and batch sources (see :class:`Feed`).
    ``model``/``head`` None: the recipe's (``recipe=auto``: the fast recipe for images <= 64 px when no optimisation
    hyperparameter is given, see train/recipes.py), else gapcnn + gap.
    """
    user = {"model": model, "head": head, **options}
    dopts, mopts, tcfg = split_options({"data": data, **user})
    ctx = distributed.setup(tcfg.device)  # under torchrun: join the process group (no-op otherwise)
    tcfg = distributed.per_rank_config(tcfg)
    seed_everything(tcfg.seed)
    set_deterministic(tcfg.deterministic)
    p = prepare_run(data, user, tcfg.seed, splits=splits, preprocess=preprocess, backbone_state=backbone_state)
    splits, pre, dopts, mopts, net, recipe = p.splits, p.pre, p.dopts, p.mopts, p.net, p.recipe
    tcfg = distributed.per_rank_config(p.tcfg)
    say = (lambda s: None) if tcfg.quiet else print
    if tcfg.lr == "auto":
        tcfg, recipe["lr_find"] = resolve_auto_lr(net, splits, pre, dopts, tcfg, say)
    path = distributed.broadcast(Path(out) if out else default_run_dir(mopts.model, mopts.head))  # rank 0's clock
    if (path / "checkpoint.pt").exists():
        raise GapvisionError(f"{path} already holds a run: continue it with --resume {path}, or pick another --out")
    held = [n for n in ("model.safetensors", "metrics.json") if (path / n).exists()]  # trained weights or figures
    if held:
        raise GapvisionError(f"{path} already holds a run ({', '.join(held)}): pick another --out, or remove that "
                             "folder first")
    writer = RunWriter(path, enabled=ctx.is_main)
    config = run_config(dopts, mopts, net.config, pre, tcfg, splits.classes,  # type: ignore[arg-type]
                        world_size=ctx.world_size)
    config["data_notes"] = list(splits.notes)  # skipped/duplicate images etc., kept with the run (also when --quiet)
    config["recipe"] = recipe  # which of the resolved options came from the recipe (and the LR finder's sweep)
    config.update(record or {})  # e.g. compare's max_images: how ``splits`` was sampled, for evaluate and report
    writer.json("config.json", config)
    return _fit_and_finish(net, splits, pre, dopts, tcfg, writer, config, feed=feed)


@dataclass
class Prepared:
    """What a training command starts from: the splits and preprocessing, the option groups completed by the recipe
    (``recipe``: which values it filled) and the network with its starting weights."""

    splits: DataSplits
    pre: Preprocess
    dopts: DataOptions
    mopts: ModelOptions
    tcfg: TrainConfig
    recipe: dict
    net: Classifier


def prepare_run(data: Any, user: dict[str, Any], seed: int = 0, *, splits: DataSplits | None = None,
                preprocess: Preprocess | None = None,
                backbone_state: dict[str, torch.Tensor] | None = None) -> Prepared:
    """The one setup of ``train`` and ``lr_find``: the data, the input settings that follow from the model (native
    size, the weights' normalisation, timm's pretrained config), the recipe, then the network (pretrained weights,
    ``backbone_state`` if given, the folded-BatchNorm check). ``user``: the user's options, None for unset."""
    filled, max_size, traits = input_defaults(user)
    loaded_here = splits is None  # a caller that passes its splits (compare) says their notes once itself
    splits, pre = prepare_data(split_options({"data": data, **filled})[0], seed, preprocess, splits, max_size)
    if preprocess is None:  # timm backbones: their pretrained config's size/mean/std where the user set none
        pre = pretrained_preprocess(pre, user.get("model"), user)
    options, recipe = apply_recipe(filled, img_size=pre.img_size, n_train=len(splits.train), bf16=traits["bf16"],
                                   deep_no_norm=traits["deep_no_norm"], grouped_norm=traits["grouped_norm"],
                                   grouped_no_residual=traits["grouped_no_residual"],
                                   base={"batch_size": TrainConfig.batch_size, "epochs": TrainConfig.epochs})
    dopts, mopts, tcfg = split_options({"data": data, **options})  # the user's options, completed by the recipe
    say = (lambda s: None) if tcfg.quiet else print
    if loaded_here:
        print_notes(splits.notes)
    net = build_network(mopts, len(splits.classes), pre, verbose=not tcfg.quiet)
    if net.config is not None and net.config.stem != "native" and user.get("stem") is None:
        say(f"note: {mopts.model} from scratch takes the {net.config.stem} stem (--stem; native: the builder's)")
    if backbone_state is not None:
        net.backbone.load_state_dict(backbone_state)
    else:
        mopts.init = initialise(net, mopts, splits, pre, seed)
    mopts.freeze = check_folded_batchnorm(net, mopts.weights, user.get("freeze"), say)
    return Prepared(splits, pre, dopts, mopts, tcfg, recipe, net)


def print_notes(notes: Sequence[str]) -> None:
    """What a data source skipped or left out, one ``note:`` line each on stderr, also when quiet (train, evaluate
    and compare say them; the run keeps them too)."""
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


#: from scratch, BatchNorm momenta below this are raised to it (recorded as config.json's model.bn_momentum):
#: builtin:shapes, 6 epochs, final validation accuracy MNASNet 0.250 -> 0.670, MobileNetV3-small 0.545 -> 0.660
#: (bench/backbones.py with and without --builder-bn-momentum; models/classifier.py: raise_bn_momentum); pretrained
#: weights keep their own
SCRATCH_BN_MOMENTUM = 0.1


def build_network(mopts: ModelOptions, num_classes: int, pre: Preprocess, verbose: bool = False) -> Classifier:
    """The network a run starts from, before :func:`initialise`: the model options at the input settings, pretrained
    weights loaded and frozen as asked; from scratch, BatchNorm momenta of at least SCRATCH_BN_MOMENTUM and the
    pooled stem where the backbone offers one (``--stem auto``)."""
    return create_model(mopts.model, mopts.head, num_classes, in_channels=pre.channels, img_size=pre.img_size,
                        dropout=mopts.dropout, hidden=mopts.hidden, weights=mopts.weights, freeze=mopts.freeze,
                        bn_momentum=None if mopts.weights else SCRATCH_BN_MOMENTUM, stem=mopts.stem, verbose=verbose)


INIT_IMAGES = 64  # the batch of training images that the data-dependent initialisation measures


def initialise(net: Classifier, mopts: ModelOptions, splits: DataSplits, pre: Preprocess, seed: int = 0) -> str:
    """Apply ``--init`` to a network trained from scratch and return what was done (recorded in config.json), from
    INIT_IMAGES training images: ``whiten`` (the first convolution set to whitened patch components:
    models/whitening.py's :func:`~gapvision.models.whitening.whiten_first_conv`, or a frozen patch-whitening layer
    set, which always is), ``residual`` (the last normalisation layer of each residual branch scaled to 0:
    :func:`~gapvision.models.residual_init.zero_init_residual`), ``data``
    (:func:`~gapvision.models.data_init.data_dependent_init` of the backbone), joined by ``+`` when several were
    done, or ``default`` (the builder's weights; always with pretrained ``--weights``). ``--init auto`` whitens every
    network and then zero-initialises the residual branches of one with normalisation layers or gives one without
    them the data-dependent start (``whiten+residual``, ``whiten+data``)."""
    from ..models.whitening import PatchWhitening

    if mopts.weights:
        return "default"
    frozen = any(isinstance(m, PatchWhitening) for m in net.backbone.modules())
    normalized = has_normalization(net.backbone)
    whiten = frozen or mopts.init in ("auto", "whiten")
    residual = mopts.init == "residual" or (mopts.init == "auto" and normalized)
    data_init = mopts.init == "data" or (mopts.init == "auto" and not normalized)
    if not (whiten or residual or data_init):
        return "default"
    pick = np.sort(np.random.default_rng(seed).permutation(len(splits.train))[:INIT_IMAGES])
    x, _ = next(iter(make_batches(splits.train.subset(pick), pre, len(pick), workers=0).epoch(0)))
    done = []
    if whiten:
        from ..models.whitening import init_whitening, whiten_first_conv

        if init_whitening(net.backbone, x) if frozen else whiten_first_conv(net.backbone, x):
            done.append("whiten")
    if residual:
        from ..models.residual_init import zero_init_residual

        if zero_init_residual(net.backbone, x):
            done.append("residual")
    if data_init:
        from ..models.data_init import data_dependent_init

        data_dependent_init(net.backbone, x)
        done.append("data")
    return "+".join(done) or "default"


def has_residual_norms(backbone: Backbone, size: int = 64) -> bool:
    """Whether some residual branch of ``backbone`` ends in a normalisation layer, found on one forward pass of zeros
    at ``size`` px, or at the backbone's native size if it refuses that (the structure does not depend on the pixels;
    zeros leave the random state alone). True, as the safe answer (the grouped lr rule), if it refuses both."""
    from ..models.residual_init import residual_branch_norms

    for s in dict.fromkeys((size, backbone.native_size or size)):
        try:
            return bool(residual_branch_norms(backbone, torch.zeros(2, backbone.in_channels, s, s)))
        except (RuntimeError, ValueError, AssertionError):  # an input size this backbone does not take
            continue
    return True


def has_normalization(module: nn.Module) -> bool:
    """Whether ``module`` has normalisation layers (BatchNorm, GroupNorm, LayerNorm; torchvision's LayerNorm2d too)."""
    return any(isinstance(m, NORMS) for m in module.modules())


def check_folded_batchnorm(net: Classifier, weights: str | None, user_freeze: str | None,
                           say: Callable[[str], None]) -> str:
    """The ``--freeze`` mode to train with, given that the loaded ``weights`` may have their BatchNorm folded into the
    convolutions (every BN an identity: weight 1, bias 0, mean 0, var 1); such statistics must stay fixed."""
    from ..models.weights import batchnorm_is_folded

    freeze = getattr(net, "freeze", "none")
    if not weights or freeze != "none" or not batchnorm_is_folded(net.backbone):
        return freeze
    if user_freeze is None:
        from ..models.classifier import set_freeze

        set_freeze(net, "bn")
        say("note: the BatchNorm layers of these weights are folded into the convolutions (identity statistics): "
            "their statistics are kept fixed (--freeze bn)")
        return "bn"
    say("warning: the BatchNorm layers of these weights are folded into the convolutions (identity statistics); "
        "--freeze none re-estimates them from your batches, which usually wrecks the pretrained features: "
        "use --freeze bn")
    return freeze


def resume(run_dir: str | Path, data: Any = None, epochs: int | None = None, quiet: bool | None = None, *,
           splits: DataSplits | None = None, feed: FeedFn | None = None) -> Run:
    """Continue an interrupted run from its last finished epoch (``epochs`` may extend it); ``splits`` and ``feed``
    as for :func:`train`."""
    run = load_run(run_dir)
    ckpt_path = Path(run_dir) / "checkpoint.pt"
    if not ckpt_path.exists():
        raise GapvisionError(f"{run_dir} has no checkpoint.pt to resume from (it never finished an epoch): start again")
    checkpoint = load_checkpoint(ckpt_path)
    done, planned = int(checkpoint.get("state", {}).get("epoch", 0)), int(run.config["train"]["epochs"])
    if epochs is not None and int(epochs) < done:
        raise ConfigError(f"{run_dir} has already trained {done} epoch{'s' * (done != 1)}: --epochs {epochs} cannot "
                          f"undo that; pass more than {done} to train on")
    try:
        finished = run.metrics.get("status") == "finished"
    except GapvisionError:  # a damaged metrics.json: resuming writes it anew
        finished = False
    if done >= (planned if epochs is None else int(epochs)) and finished:
        if not quiet:
            print(f"{run_dir} has finished its {done} epoch{'s' * (done != 1)}: nothing to resume (pass --epochs "
                  f"N > {done} to train on)")
        return run
    config = run.config
    dd = dict(config["data"])
    if data is not None:
        dd["data"] = data
    elif dd["data"] == "<arrays>" and splits is None:
        raise GapvisionError("this run was trained on in-memory arrays: pass them again with resume(run_dir, data=...)")
    dopts = DataOptions(**dd)
    tdict = dict(config["train"])
    if epochs is not None:
        tdict["epochs"] = int(epochs)
    if quiet is not None:
        tdict["quiet"] = quiet
    tcfg = TrainConfig.from_dict(tdict)
    ctx = distributed.setup(tcfg.device)
    tcfg = distributed.per_rank_config(tcfg)
    set_deterministic(tcfg.deterministic)
    splits, pre = prepare_data(dopts, tcfg.seed, preprocess=run.preprocess, splits=splits)
    if list(splits.classes) != run.classes:
        raise GapvisionError(f"the data's classes {splits.classes} differ from the run's {run.classes}")
    net = create_model(**run.model_config.to_dict(), freeze=config.get("model_options", {}).get("freeze", "none"))
    config["train"] = tcfg.to_dict()
    config["world_size"] = ctx.world_size
    writer = RunWriter(run_dir, enabled=ctx.is_main)
    writer.json("config.json", config)
    return _fit_and_finish(net, splits, pre, dopts, tcfg, writer, config, checkpoint=checkpoint, feed=feed)


def _fit_and_finish(net: Classifier, splits: DataSplits, pre: Preprocess, dopts: DataOptions, tcfg: TrainConfig,
                    writer: RunWriter, config: dict, checkpoint: dict | None = None, feed: FeedFn | None = None) -> Run:
    bs = distributed.local_batch_size(tcfg.batch_size)  # --batch-size is global: B / world_size per process
    shard = distributed.train_sampler(tcfg.batch_size)
    fed = feed(net, splits, pre, dopts, tcfg) if feed is not None else None
    if fed is not None:
        net, train_b, val_b = fed.net, fed.train, fed.val  # type: ignore[assignment]
    else:
        mem = _memory_options(dopts.in_memory, tcfg)
        train_b = make_batches(splits.train, pre, bs, train=True, augment=dopts.augment, seed=tcfg.seed,
                               workers=tcfg.workers, sampler_factory=shard, **mem)
        val_b = make_batches(splits.val, pre, bs, workers=tcfg.workers, sampler_factory=distributed.eval_sampler(),
                             **mem)
    on_epoch = None
    if tcfg.tensorboard and writer.enabled:
        from .tensorboard import TensorBoardLogger

        on_epoch = TensorBoardLogger(writer.path / "tensorboard")
    trainer = Trainer(net, tcfg, writer=writer, reduce=distributed.all_reduce_sum, on_epoch=on_epoch)
    if checkpoint is not None:
        trainer.load_checkpoint(checkpoint)
        if not tcfg.quiet:
            print(f"resuming {writer.path} after epoch {trainer.state.epoch}")
    distributed.wrap(trainer, shard if fed is None else None)  # DDP under torchrun (a feed's batches are not sharded)
    status = "finished"
    try:
        if fed is None and trainer.state.epoch < tcfg.freeze_epochs:
            fit_head_only(trainer, net, splits, pre, dopts, tcfg)
        trainer.fit(train_b, val_b)
    except KeyboardInterrupt:
        status = "interrupted"
        finish(trainer, splits, pre, tcfg, writer, config, status, feed=fed)
        if trainer.state.epoch == 0:
            raise Interrupted(f"interrupted before the first epoch finished; {writer.path} holds nothing to resume: "
                              f"start the run again") from None
        raise Interrupted(
            f"interrupted after epoch {trainer.state.epoch}; the run is saved: continue with "
            f"gapvision train --resume {writer.path}"
        ) from None
    except TrainingDiverged:  # the last good checkpoint stays; the best weights still get their metrics
        finish(trainer, splits, pre, tcfg, writer, config, "diverged", feed=fed)
        raise
    # any other error (an unreadable image, a full disk) propagates: the last checkpoint stays as it was
    if trainer.state.stopped_early:
        status = "stopped early"
    finish(trainer, splits, pre, tcfg, writer, config, status, feed=fed)
    if not tcfg.quiet:
        print(f"run saved in {writer.path}")
    distributed.barrier()  # DDP: every rank returns once rank 0 has written the run directory
    if not writer.enabled:  # DDP ranks other than 0 have no files (maybe another node): the final weights in memory
        return Run(writer.path, config, model=getattr(trainer.net, "module", trainer.net).eval())
    return load_run(writer.path)


def fit_head_only(trainer: Trainer, net: Classifier, splits: DataSplits, pre: Preprocess, dopts: DataOptions,
                  tcfg: TrainConfig) -> None:
    """The head-only epochs (``freeze_epochs``) on feature maps computed once by the frozen backbone, when they can
    stand in for it (compare's FeatureStore: the same batches, so the same weights as streaming); else nothing here
    and the Trainer streams those epochs."""
    from ..compare.features import FeatureStore, cache_blocker, map_bytes

    views = min(tcfg.freeze_epochs, tcfg.epochs) if dopts.augment != "none" else 1
    n_maps = len(splits.train) * views + len(splits.val)
    if (tcfg.cache_features == "off" or tcfg.ema or tcfg.tta != "off" or distributed.current().world_size > 1
            or cache_blocker(net) is not None or n_maps * map_bytes(net, pre) > available_memory() // 4):
        return
    t0 = time.perf_counter()
    feed = FeatureStore().feed(net, splits, pre, dopts, tcfg)
    feed.train.prepare(range(trainer.state.epoch, tcfg.freeze_epochs))  # type: ignore[attr-defined]
    feed.val.prepare(range(1))  # type: ignore[attr-defined]  (now: not inside the evaluation's inference mode)
    trainer.carry_seconds += time.perf_counter() - t0  # the maps' time counts in the first head-only epoch
    full = trainer.net
    trainer.net = feed.net
    try:
        trainer.fit(feed.train, feed.val, until=tcfg.freeze_epochs)
    finally:
        trainer.net = full


def _memory_options(in_memory: str, tcfg: TrainConfig) -> dict[str, Any]:
    """make_batches' in-memory arguments for a run: the mode, the training device and a log unless quiet."""
    return {"in_memory": in_memory, "device": resolve_device(tcfg.device), "log": None if tcfg.quiet else print}


def finish(trainer: Trainer, splits: DataSplits, pre: Preprocess, tcfg: TrainConfig, writer: RunWriter,
           config: dict, status: str, feed: Feed | None = None) -> dict:
    """Evaluate the best weights on val (and test, with ``feed``'s batches if given), write metrics.json and figures."""
    st = trainer.state
    if not writer.enabled:  # DDP ranks other than 0: rank 0 evaluates and writes alone
        return {}
    trainer = distributed.alone(trainer)
    if not st.history or not (writer.path / "model.safetensors").exists():
        return {}
    load_run_weights(trainer.net, writer.path / "model.safetensors")
    classes = list(splits.classes)
    predictor = Predictor(trainer.net, pre, classes, device=trainer.device, **inference_options(tcfg.to_dict()))
    bs = predictor.batch_size
    mem = _memory_options(config.get("data", {}).get("in_memory", "off"), tcfg) | {"log": None}
    val = predictor.evaluate(feed.val if feed is not None else make_batches(splits.val, pre, bs,
                                                                            workers=tcfg.workers, **mem))
    last = st.history[-1]
    validated = len(val.targets) > 0  # --val-split 0: no validation figures (null), the last epoch's weights
    metrics: dict[str, Any] = {
        "status": status,
        "epochs_run": st.epoch,
        "best_epoch": st.best_epoch,
        "best_val_acc": round(st.best_val_acc, 6) if validated else None,
        "final_val_acc": round(last["val_acc"], 6) if validated else None,
        "final_train_acc": round(last["train_acc"], 6),
        "final_val_loss": round(last["val_loss"], 6) if validated else None,
        "best_val_loss": round(min(r["val_loss"] for r in st.history), 6) if validated else None,
        "seconds": round(sum(r["seconds"] for r in st.history), 2),
        "classes": classes,
        "seed": tcfg.seed,
        "warnings": list(st.warnings) + ([] if validated else [NO_VALIDATION]),
        "val": M.summarize(val.targets, val.preds, classes, val.loss),
    }
    metrics["confusion_matrix"] = metrics["val"]["confusion_matrix"]
    metrics["per_class"] = metrics["val"]["per_class"]
    if splits.test is not None and len(splits.test):
        test_b = feed.test if feed is not None and feed.test is not None else None
        test = predictor.evaluate(test_b or make_batches(splits.test, pre, bs, workers=tcfg.workers, **mem))
        metrics["test"] = M.summarize(test.targets, test.preds, classes, test.loss)
        metrics["test_acc"] = metrics["test"]["acc"]
    if writer.enabled:  # the figures first: metrics.json (its status) marks the run as done
        title = f"{config['model']['model']} + {config['model']['head']} head"
        plot_curves(st.history, writer.path / "curves.png", title)
        plot_confusion(metrics["confusion_matrix"], classes, writer.path / "confusion.png", f"validation ({title})")
    writer.json("metrics.json", metrics)
    return metrics


NO_VALIDATION = ("no validation images (--val-split 0 on data without a val split): the last epoch's weights are "
                 "kept and metrics.json has no validation figures")


def evaluate(run: Run | str | Path, data: Any, *, split: str | None = None, out: str | Path | None = None,
             batch_size: int | None = None, **load_opts: Any) -> dict:
    """Metrics and a confusion matrix of a trained run on another dataset or split; written to ``out``.

    Without ``split`` a folder of class folders or a manifest is evaluated whole, a source with splits on its test
    split (or, without one, its val split; ``result["split"]`` says which). ``split`` (train, val or test) is that
    split as training makes it: a source's own, or else the stratified split seeded as the run's (its ``val_split``
    and ``seed``), so ``split="val"`` on the folder a run trained on gives back its validation images. The run's
    Predictor does the work (its TTA, AMP and batch size, unless ``batch_size`` is given), so the figures equal those
    training wrote to metrics.json for the same images.
    """
    from ..data.sources import load_images, load_split

    run = run if isinstance(run, Run) else load_run(run)
    images = (load_split(data, split, classes=run.classes, **{**run.split_options(), **load_opts}) if split
              else load_images(data, split=("test", "val"), classes=run.classes, **load_opts))
    if not images.meta.get("labeled", True):
        raise GapvisionError(f"{data} has no labels to evaluate against: use class folders or a manifest with labels")
    if not len(images):
        what = f"{split} images" if split else "images"
        raise DataError(f"{data} has no {what} to evaluate" + (" (the run has no validation split: it trained "
                                                               "with --val-split 0)" if split == "val" else ""))
    used = split or images.meta.get("split", "all")
    notes = list(images.meta.get("notes", []))
    if not split and used == "val":
        notes.append(f"{data} has no test split: evaluated its val split (pass --split to choose)")
    predictor = run.predictor
    res = predictor.evaluate(make_batches(images, run.preprocess, batch_size or predictor.batch_size))
    result = {"data": str(data), "split": used, **M.summarize(res.targets, res.preds, run.classes, res.loss)}
    if notes:
        result["notes"] = notes
    if out is None and run.path is not None:
        out = run.path / "evaluations" / _slug(f"{data}-{used}")
    if out is not None:
        writer = RunWriter(out)
        writer.json("metrics.json", result)
        plot_confusion(result["confusion_matrix"], run.classes, Path(out) / "confusion.png", f"{data}")
        result["out"] = str(out)
    return result


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s).strip("_")[-80:] or "eval"


# -- the LR range test on the network and data a run would use (train/lr_find.py does the sweep) ----------------
def resolve_auto_lr(net: Classifier, splits: DataSplits, pre: Preprocess, dopts: Any, tcfg: TrainConfig,
                    say: Callable[[str], None] = print) -> tuple[TrainConfig, dict]:
    """``--lr auto``: the sweep on the run's own training batches, and the configuration with its suggestion."""
    probe = replace(tcfg, lr=1.0) if tcfg.lr == "auto" else tcfg
    batches = make_batches(splits.train, pre, tcfg.batch_size, train=True, augment=dopts.augment, seed=tcfg.seed,
                           workers=tcfg.workers, in_memory=dopts.in_memory, device=resolve_device(tcfg.device))
    result = sweep(net, batches, replace(probe, backbone_lr=None), device=resolve_device(tcfg.device))
    resolved = apply_suggestion(probe, result.suggestion)
    say(f"lr-find: suggested lr {result.suggestion:.3g} ({len(result.lrs)} steps); training with lr {resolved.lr:.3g}"
        + (f", backbone {resolved.backbone_lr:.3g}" if resolved.backbone_lr else "")
        + (f", head-only epochs {resolved.freeze_lr:.3g}" if resolved.freeze_epochs else ""))
    return resolved, result.to_dict()


def lr_find(data: Any = "builtin:shapes", model: str | None = None, head: str | None = None, *,
            out: str | Path | None = None, start_lr: float = START_LR, end_lr: float = END_LR, steps: int = STEPS,
            **options: Any) -> LRFindResult:
    """The LR range test for the network and data that ``gapvision.train(data, model, head, **options)`` would use;
    writes ``lr_find.png`` (and ``lr_find.json``) into ``out`` when given. Nothing is trained for real."""
    from .. import atomic

    user = {"model": model, "head": head, **{k: v for k, v in options.items() if k != "lr"}}
    seed = int(options.get("seed") or 0)
    seed_everything(seed)
    check_sweep(start_lr, end_lr, steps)  # before the data is loaded
    p = prepare_run(data, user, seed)
    tcfg, device = p.tcfg, resolve_device(p.tcfg.device)
    batches = make_batches(p.splits.train, p.pre, tcfg.batch_size, train=True, augment=p.dopts.augment, seed=tcfg.seed,
                           workers=tcfg.workers, in_memory=p.dopts.in_memory, device=device)
    result = sweep(p.net, batches, replace(tcfg, backbone_lr=None), start_lr=start_lr, end_lr=end_lr, steps=steps,
                   device=device)
    if out is not None:
        path = Path(out)
        path.mkdir(parents=True, exist_ok=True)
        plot_lr_find(result, path / "lr_find.png")
        result.plot = str(path / "lr_find.png")
        atomic.write_json(path / "lr_find.json", {**result.to_dict(), "lrs": result.lrs, "losses": result.losses})
    return result
