"""Training well by default: the transfer recipe (phases, lrs, BN statistics, cached head-only epoch), folded
BatchNorm, the no-BN nets' initialisation, the LR finder and the not-learning warning."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from gapvision.cli import main
from gapvision.models.backbones import create_backbone, native_input
from gapvision.models.classifier import create_model
from gapvision.models.weights import batchnorm_is_folded
from gapvision.train.config import TrainConfig, parse_lr
from gapvision.train.lr_find import sweep, valley
from gapvision.train.optim import lr_factor
from gapvision.train.pipeline import make_batches, prepare_data, resume, split_options, train
from gapvision.train.recipes import TRANSFER, apply_recipe, choose_recipe
from gapvision.train.trainer import Trainer, stuck_at_chance

TINY = "builtin:shapes?n=64&size=16"
QUICK = dict(img_size=16, workers=0, quiet=True, in_memory="on")


@pytest.fixture
def pretrained(tmp_path):
    """A 'pretrained' fastnet_s state dict (gapvision layout) whose BatchNorm statistics are not the identity."""
    net = create_model("fastnet_s", "gap", 4, img_size=16)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "pre.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def test_auto_chooses_transfer_for_pretrained_weights_unless_a_hyperparameter_is_set():
    assert choose_recipe({"weights": "w.pth"}, 224) == "transfer"
    assert choose_recipe({"weights": "w.pth", "model": "resnet18"}, 32) == "transfer"
    assert choose_recipe({"weights": "w.pth", "lr": 0.01}, 224) == "none"
    assert choose_recipe({"weights": "w.pth", "lr": "auto"}, 224) == "transfer"  # the LR finder sets the lrs
    assert choose_recipe({"weights": "w.pth", "recipe": "none"}, 224) == "none"
    assert choose_recipe({"recipe": "transfer"}, 224) == "transfer"
    opts, note = apply_recipe({"weights": "w", "epochs": 5}, img_size=224, n_train=146)
    assert opts["epochs"] == 5 and opts["freeze"] == "bn" and opts["freeze_epochs"] == 1
    assert opts["lr"] == TRANSFER["lr"] and opts["backbone_lr"] == TRANSFER["backbone_lr"]  # not scaled (Adam)
    assert "epochs" not in note["from_recipe"] and "freeze_epochs" in note["from_recipe"]
    assert opts["channels_last"] == "on" and "amp" not in opts  # channels-last, fp32


def test_lr_takes_a_low_high_pair_and_auto():
    assert parse_lr("1e-4:1e-3") == (1e-3, 1e-4) and parse_lr(0.1) == (0.1, None) and parse_lr("auto") == ("auto", None)
    cfg = TrainConfig(lr="1e-4:2e-3")
    assert cfg.lr == 2e-3 and cfg.backbone_lr == 1e-4 and cfg.lr_of("backbone") == 1e-4 and cfg.lr_of("head") == 2e-3
    with pytest.raises(Exception, match="LOW:HIGH"):
        TrainConfig(lr="fast")


def test_input_size_and_normalisation_come_from_the_weights(tmp_path, make_image_folder):
    assert native_input("mobilenet_v2") == (224, "imagenet") and native_input("inception_v3") == (299, "half")
    assert native_input("gapcnn")[0] == 128 and native_input("resnet20")[0] == 32
    root = make_image_folder(tmp_path / "imgs", {"a": 4, "b": 4}, size=(300, 260))
    dopts = split_options({"data": str(root)})[0]
    _, pre = prepare_data(dopts, max_size=native_input("gapcnn")[0])
    assert pre.img_size == 128  # the median side (300) capped by gapcnn's native size


def test_phases_freeze_the_backbone_first_then_use_discriminative_lrs():
    net = create_model("fastnet_s", "gap", 4, img_size=16, freeze="bn")
    cfg = TrainConfig(epochs=3, freeze_epochs=1, lr=1e-3, backbone_lr=1e-4, freeze_lr=5e-3, quiet=True, device="cpu")
    trainer = Trainer(net, cfg)
    head_ids = {id(p) for p in net.head.parameters()}
    assert trainer.phase == "head" and net.freeze == "backbone"
    assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} == head_ids
    assert {g["base_lr"] for g in trainer.optimizer.param_groups} == {5e-3}
    trainer.enter_phase("all")
    assert net.freeze == "bn" and all(p.requires_grad for p in net.parameters())
    lrs = {g["part"]: g["base_lr"] for g in trainer.optimizer.param_groups}
    assert lrs == {"backbone": 1e-4, "head": 1e-3}
    # each phase runs its own one-cycle schedule: the ramp restarts after the head-only epoch
    cfg = TrainConfig(epochs=3, freeze_epochs=1, schedule="onecycle")
    assert lr_factor(cfg, 0, 10) == pytest.approx(1 / 2)  # phase 1: 10 steps, a warm-up of 2
    assert lr_factor(cfg, 9, 10) < 0.2  # decayed by the end of the head-only epoch
    assert lr_factor(cfg, 10, 10) == pytest.approx(1 / 5)  # phase 2: 20 steps, a fresh warm-up of 5


def test_transfer_run_trains_head_then_all_with_bn_statistics_fixed(tmp_path, pretrained):
    start = load_file(str(pretrained))
    run = train(TINY, "fastnet_s", weights=str(pretrained), epochs=2, out=tmp_path / "r", **QUICK)
    cfg = run.config
    assert cfg["recipe"]["name"] == "transfer" and cfg["train"]["freeze_epochs"] == 1
    assert cfg["model_options"]["freeze"] == "bn" and cfg["train"]["backbone_lr"] == TRANSFER["backbone_lr"]
    end = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)["model"]  # the last epoch's weights
    stats = [k for k in start if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(start[k], end[k]) for k in stats)  # BN statistics fixed
    convs = [k for k in start if k.startswith("backbone") and k.endswith("weight") and start[k].ndim == 4]
    assert any(not torch.equal(start[k], end[k]) for k in convs)  # the backbone trained in epoch 2


def test_head_only_epoch_leaves_the_backbone_and_cached_equals_streaming(tmp_path, pretrained):
    common = dict(weights=str(pretrained), epochs=1, augment="basic", **QUICK)
    cached = train(TINY, "fastnet_s", out=tmp_path / "c", **common)
    streamed = train(TINY, "fastnet_s", out=tmp_path / "s", cache_features="off", **common)
    start = load_file(str(pretrained))
    a, b = load_file(str(tmp_path / "c" / "model.safetensors")), load_file(str(tmp_path / "s" / "model.safetensors"))
    assert all(torch.equal(a[k], start[k]) for k in start if k.startswith("backbone"))
    assert not torch.equal(a["head.classifier.weight"], start["head.classifier.weight"])
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    assert cached.history[0]["val_acc"] == pytest.approx(streamed.history[0]["val_acc"])


def test_resume_across_the_phase_boundary_is_exact(tmp_path, pretrained):
    common = dict(weights=str(pretrained), **QUICK)
    train(TINY, "fastnet_s", out=tmp_path / "full", epochs=2, **common)
    train(TINY, "fastnet_s", out=tmp_path / "part", epochs=1, **common)
    resume(tmp_path / "part", epochs=2, quiet=True)
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("full", "part"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_folded_batchnorm_is_detected_and_its_statistics_kept(tmp_path, capsys):
    net = create_model("fastnet_s", "gap", 4, img_size=16)
    assert batchnorm_is_folded(net.backbone)  # identity statistics, as folded weights have
    assert not batchnorm_is_folded(create_backbone("gapcnn"))  # no BatchNorm at all
    path = tmp_path / "folded.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    run = train(TINY, "fastnet_s", weights=str(path), recipe="none", epochs=1, out=tmp_path / "r",
                img_size=16, workers=0, in_memory="on")
    assert run.config["model_options"]["freeze"] == "bn"
    assert "folded" in capsys.readouterr().out
    with torch.no_grad():
        net.backbone.get_submodule(next(n for n, m in net.backbone.named_modules()
                                        if isinstance(m, nn.BatchNorm2d))).running_mean += 0.5
    assert not batchnorm_is_folded(net.backbone)


def test_nets_without_batchnorm_get_kaiming_init_that_keeps_the_signal():
    for name in ("gapcnn", "cifarcnn", "vgg11"):
        bb = create_backbone(name)
        convs = [m for m in bb.modules() if isinstance(m, nn.Conv2d)]
        for m in convs:
            fan_in = m.weight[0].numel()
            assert float(m.weight.detach().std()) == pytest.approx(math.sqrt(2 / fan_in), rel=0.15), name
            assert float(m.bias.detach().abs().max()) == 0.0
        bb.eval()
        with torch.no_grad():
            out = bb(torch.randn(4, 3, 64, 64))
        assert float(out.pow(2).mean().sqrt()) > 0.1, name  # PyTorch's default init shrinks it ~100x over the depth


def test_data_dependent_init_standardises_each_conv_by_its_relu_output_in_order():
    from gapvision.models.data_init import data_dependent_init

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Dropout2d(0.3),
                        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True))
    x = torch.rand(16, 3, 12, 12) * 2 + 1  # a large common mode, as images have
    expect = [net[0], net[4]]
    w = [expect[0].weight.detach().clone(), expect[1].weight.detach().clone()]
    b = [expect[0].bias.detach().clone(), expect[1].bias.detach().clone()]
    with torch.no_grad():  # the rule by hand: z <- (z - mean(relu z)) / std(relu z), channel by channel, in order
        z = torch.nn.functional.conv2d(x, w[0], b[0], padding=1)
        a = z.clamp_min(0)
        mu, sd = a.mean(dim=(0, 2, 3)), a.std(dim=(0, 2, 3))
        w[0], b[0] = w[0] / sd.view(-1, 1, 1, 1), (b[0] - mu) / sd
        h = torch.nn.functional.max_pool2d(torch.nn.functional.conv2d(x, w[0], b[0], padding=1).clamp_min(0), 2)
        a = torch.nn.functional.conv2d(h, w[1], b[1], padding=1).clamp_min(0)
        mu, sd = a.mean(dim=(0, 2, 3)), a.std(dim=(0, 2, 3))
        w[1], b[1] = w[1] / sd.view(-1, 1, 1, 1), (b[1] - mu) / sd
    net.train()
    assert data_dependent_init(net, x) == 2 and net.training  # both convs set (dropout off while measuring)
    for conv, wk, bk in zip(expect, w, b):
        assert torch.allclose(conv.weight, wk, atol=1e-5) and torch.allclose(conv.bias, bk, atol=1e-5)
    net.eval()
    with torch.no_grad():
        out = net(x)
    assert 0.05 < float((out > 0).float().mean()) < 0.5  # sparser than the Kaiming start's half, not dead


def test_data_dependent_init_leaves_1x1_convs_as_built():
    from gapvision.models.data_init import data_dependent_init

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.ReLU(),
                        nn.Conv2d(4, 8, 3, padding=1), nn.ReLU())
    pointwise = [p.clone() for p in net[2].parameters()]
    spatial = net[4].weight.clone()
    assert data_dependent_init(net, torch.randn(16, 3, 8, 8)) == 2  # the two 3 x 3 convs
    assert all(torch.equal(a, b) for a, b in zip(pointwise, net[2].parameters()))
    assert not torch.equal(spatial, net[4].weight)


def test_nets_without_batchnorm_start_from_the_data_and_others_as_built(tmp_path):
    def start(model, **kw):
        out = tmp_path / f"{model}-{kw.get('init', 'auto')}"
        run = train(TINY, model=model, out=out, epochs=1, seed=3, **QUICK, **kw)
        return run.config["model_options"]["init"]

    assert start("gapcnn") == "whiten+data"  # no normalisation layers: whitened first conv, then data-dependent
    assert start("gapcnn", init="default") == "default"
    assert start("gapcnn", init="whiten") == "whiten"
    assert start("fastnet_s") == "whiten"  # BatchNorm, no residual additions: only the first conv set from the data
    assert start("resnet20") == "whiten+residual"  # and the residual branches' last BatchNorm scaled to 0
    assert start("resnet20", init="residual") == "residual"
    assert start("fastnet_s", init="data") == "data"
    # the same seed gives the same data-dependent start (the batch it measures is seeded, the RNG left alone)
    from gapvision.train.pipeline import prepare_run

    def prepared():
        torch.manual_seed(3)
        return prepare_run(TINY, {"model": "gapcnn", **QUICK}, seed=3).net

    nets = [prepared(), prepared()]
    assert all(torch.equal(a, b) for a, b in zip(nets[0].state_dict().values(), nets[1].state_dict().values()))


def test_valley_suggests_the_steep_part_of_a_known_curve():
    lrs = list(np.logspace(-6, 0, 61))
    losses = [2.0] * 20 + list(np.linspace(2.0, 0.5, 30)) + list(np.linspace(0.6, 3.0, 11))
    s = valley(lrs, losses)
    assert lrs[20] < s < lrs[49]  # inside the falling stretch, not at its flat start or at the minimum


def test_sweep_grows_the_lr_exponentially_and_leaves_the_model_untouched():
    from gapvision.data.sources import load_data, resolve_preprocess

    splits = load_data(TINY)
    pre = resolve_preprocess(splits)
    net = create_model("fastnet_s", "gap", 4, img_size=16)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    batches = make_batches(splits.train, pre, 16, train=True, augment="none", in_memory="on")
    res = sweep(net, batches, TrainConfig(optimizer="sgd", lr=1.0), start_lr=1e-5, end_lr=10, steps=40)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    ratios = np.diff(np.log(res.lrs))
    assert np.allclose(ratios, ratios[0]) and res.lrs[0] == pytest.approx(1e-5)
    assert res.lrs[0] <= res.suggestion <= res.lrs[-1] and len(res.losses) == len(res.lrs)


def test_lr_find_cli_prints_a_suggestion_and_writes_the_plot(tmp_path, capsys):
    rc = main(["lr-find", "--data", TINY, "--model", "fastnet_s", "--img-size", "16", "--workers", "0",
               "--steps", "30", "--out", str(tmp_path / "lf")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "suggested lr" in out and (tmp_path / "lf" / "lr_find.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "lf" / "lr_find.json").read_text())
    assert saved["suggestion"] > 0 and len(saved["lrs"]) == len(saved["losses"]) > 10


def test_lr_auto_trains_with_the_suggestion(tmp_path):
    run = train(TINY, "fastnet_s", lr="auto", optimizer="sgd", epochs=1, out=tmp_path / "r", **QUICK)
    found = run.config["recipe"]["lr_find"]["suggestion"]
    assert run.config["train"]["lr"] == pytest.approx(found)


def test_a_run_that_does_not_learn_says_so_and_one_that_learns_does_not(tmp_path, capsys):
    rng = np.random.default_rng(0)
    y = np.arange(384) % 2  # enough steps (60) for BatchNorm's running statistics to settle before evaluation
    x = (rng.integers(0, 80, (384, 16, 16, 3)) + 150 * y[:, None, None, None]).astype(np.uint8)  # dark vs bright
    common = dict(model="fastnet_s", head="gap", optimizer="sgd", epochs=3, img_size=16, workers=0, in_memory="on")
    noise = rng.integers(0, 256, (96, 16, 16, 3)).astype(np.uint8)  # nothing to learn, and a tiny lr
    stuck = train((noise, np.arange(96) % 2), lr=1e-9, out=tmp_path / "stuck", **common)
    warnings = json.loads((tmp_path / "stuck" / "metrics.json").read_text())["warnings"]
    assert len(warnings) == 1 and "not learning" in warnings[0] and "lr-find" in warnings[0]
    assert "after 3 epochs" in warnings[0] and "warning: not learning" in capsys.readouterr().out
    assert stuck.metrics["status"] == "finished" and len(stuck.history) == 3  # training went on
    learns = train((x, y), lr=0.05, out=tmp_path / "ok", quiet=True, **common)
    assert learns.metrics["warnings"] == [] and learns.metrics["best_val_acc"] > 0.9


def test_stuck_at_chance_reads_the_loss_against_guessing_the_class_shares():
    targets = np.arange(400) % 4  # balanced: guessing the shares costs ln 4 = 1.386
    def history(losses, accs):
        return [{"train_loss": l, "val_acc": a} for l, a in zip(losses, accs)]
    # a first epoch whose loss rose above ln 4 and then came back to it: a move down of 13 %, but nothing learnt
    spiked = stuck_at_chance(history([1.60, 1.42, 1.39], [0.26, 0.25, 0.27]), targets)
    assert spiked and "guessing the class shares (1.386)" in spiked and "after 3 epochs" in spiked
    flat = stuck_at_chance(history([1.39, 1.388, 1.387], [0.25, 0.25, 0.25]), targets)
    assert flat and "barely moved (1.390 -> 1.387)" in flat
    assert stuck_at_chance(history([1.39, 1.1, 0.9], [0.25, 0.26, 0.27]), targets) is None  # training loss falls
    assert stuck_at_chance(history([1.39, 1.388, 1.387], [0.25, 0.25, 0.40]), targets) is None  # validation moved
    assert stuck_at_chance(history([1.39, 1.388], [0.25, 0.25]), targets) is None  # too early to say
    # a long run (the plain defaults give small sets up to 40 epochs) is not judged before a fifth of its epochs
    assert stuck_at_chance(history([1.39, 1.388, 1.387], [0.25, 0.25, 0.25]), targets, planned_epochs=40) is None
    assert stuck_at_chance(history([1.39] + [1.388] * 7, [0.25] * 8), targets, planned_epochs=40)
    assert stuck_at_chance(history([1.39, 1.388, 1.387], [0.25, 0.25, 0.25]), targets, planned_epochs=5)
    # unbalanced: the majority share (0.9) and its entropy (0.325 nats) are the reference
    skewed = np.array([0] * 90 + [1] * 10)
    assert stuck_at_chance(history([0.5, 0.34, 0.33], [0.9, 0.9, 0.9]), skewed)
    assert stuck_at_chance(history([0.5, 0.2, 0.1], [0.9, 0.9, 0.9]), skewed) is None


def test_deep_networks_without_normalisation_and_grouped_ones_get_their_plain_lr():
    from gapvision.train.pipeline import input_defaults

    names = ("vgg16", "vgg19", "vgg16_bn", "vgg11", "gapcnn", "mobilenet_v2", "squeezenet1_1", "resnet18")
    traits = {m: input_defaults({"model": m})[2] for m in names}
    assert [m for m in names if traits[m]["deep_no_norm"]] == ["vgg16", "vgg19"]
    assert [m for m in names if traits[m]["grouped_norm"]] == ["mobilenet_v2"]
    tuned = input_defaults({"model": "mobilenet_v2", "weights": "w.pth", "recipe": "none"})[2]
    assert not tuned["grouped_norm"]  # measured from scratch: fine-tuning keeps TrainConfig's lr


def test_convnext_from_scratch_takes_the_pooled_stem_and_keeps_its_tensor_names():
    """``--stem auto``: ConvNeXt trained from scratch gets the overlapping, max-pooled stem (same map size, same
    tensors, so pretrained weights still load); with weights, and for backbones without one, the builder's stem."""
    torch = pytest.importorskip("torch")
    from gapvision.errors import ConfigError
    from gapvision.models import create_model
    from gapvision.models.classifier import ModelConfig
    from gapvision.options import ModelOptions
    from gapvision.data.transforms import Preprocess
    from gapvision.train.pipeline import build_network

    native = create_model("convnext_tiny", num_classes=4, img_size=64)
    pooled = create_model("convnext_tiny", num_classes=4, img_size=64, stem="auto")
    assert native.config.stem == "native" and pooled.config.stem == "pooled"
    stem = pooled.backbone.features[0]
    assert [type(m).__name__ for m in stem] == ["Conv2d", "MaxPool2d", "LayerNorm2d"]
    assert stem[0].stride == (2, 2) and native.backbone.features[0][0].stride == (4, 4)
    shapes = {k: v.shape for k, v in native.state_dict().items()}
    assert {k: v.shape for k, v in pooled.state_dict().items()} == shapes  # the same names and shapes
    x = torch.randn(2, 3, 64, 64)
    assert pooled.features(x).shape == native.features(x).shape == (2, 768, 2, 2)
    again = create_model(**pooled.config.to_dict())  # a run rebuilds the same network from config.json
    again.load_state_dict(pooled.state_dict())
    assert torch.equal(again.eval()(x), pooled.eval()(x))
    grey = create_model("convnext_tiny", in_channels=1, img_size=64, stem="pooled")
    assert grey.backbone.features[0][0].in_channels == 1
    with pytest.raises(ConfigError, match="--stem pooled: resnet18 offers native$"):
        create_model("resnet18", stem="pooled")
    pre = Preprocess(img_size=64)
    assert build_network(ModelOptions(model="convnext_tiny"), 4, pre).config.stem == "pooled"
    assert build_network(ModelOptions(model="resnet18"), 4, pre).config.stem == "native"
    assert build_network(ModelOptions(model="convnext_tiny", stem="native"), 4, pre).config.stem == "native"
    assert ModelConfig.from_dict({"model": "convnext_tiny"}).stem == "native"  # runs saved before the option


def test_weights_from_a_run_directory_keep_that_runs_stem(tmp_path):
    """``--weights RUN_DIR`` of a ConvNeXt trained from scratch (pooled stem): ``--stem auto`` rebuilds that stem, as
    the weights were trained with it; a weights file keeps the builder's."""
    torch = pytest.importorskip("torch")
    import json

    from safetensors.torch import save_file

    from gapvision.models import create_model

    pooled = create_model("convnext_tiny", num_classes=4, img_size=64, stem="pooled").eval()
    run = tmp_path / "run"
    run.mkdir()
    save_file({k: v.contiguous() for k, v in pooled.state_dict().items()}, str(run / "model.safetensors"))
    (run / "config.json").write_text(json.dumps({"format_version": 1, "classes": list("abcd"), "preprocess": {},
                                                 "model": pooled.config.to_dict()}))
    again = create_model("convnext_tiny", num_classes=4, img_size=64, weights=str(run), stem="auto").eval()
    x = torch.randn(1, 3, 64, 64)
    assert again.config.stem == "pooled" and torch.equal(again(x), pooled(x))
    save_file({k: v.contiguous() for k, v in pooled.state_dict().items()}, str(tmp_path / "w.safetensors"))
    assert create_model("convnext_tiny", num_classes=4, weights=str(tmp_path / "w.safetensors"),
                        stem="auto").config.stem == "native"


def test_grouped_networks_without_residual_branches_to_zero_get_a_faster_backbone_and_a_slower_head():
    """ShuffleNetV2 (concatenations) has no residual branch that ends in a normalisation layer; the other grouped
    networks with BatchNorm do (zero_init_residual starts them as the identity). Only it gets
    PLAIN_GROUPED_NO_RESIDUAL_LR for the backbone and its head lr. ConvNeXt (LayerNorm) gets no grouped rule: 1e-3."""
    from gapvision.train import recipes
    from gapvision.train.pipeline import input_defaults

    names = ("shufflenet_v2_x1_0", "convnext_tiny", "mobilenet_v2", "mobilenet_v3_small", "mnasnet1_0",
             "regnet_y_400mf", "efficientnet_b0", "resnet18")
    traits = {m: input_defaults({"model": m})[2] for m in names}
    assert [m for m in names if traits[m]["grouped_no_residual"]] == ["shufflenet_v2_x1_0"]
    assert [m for m in names if not traits[m]["grouped_norm"]] == ["convnext_tiny", "resnet18"]
    options, note = recipes.apply_recipe({"model": "convnext_tiny"}, img_size=64, n_train=1600,
                                         **{k: v for k, v in traits["convnext_tiny"].items()})
    assert not {"lr", "backbone_lr"} & set(options)  # TrainConfig's lr
    from gapvision.train.config import TrainConfig
    assert TrainConfig.lr == 1e-3
    assert not input_defaults({"model": "shufflenet_v2_x1_0", "weights": "w.pth", "recipe": "none"})[2][
        "grouped_no_residual"]
    options, note = recipes.apply_recipe({"model": "shufflenet_v2_x1_0"}, img_size=64, n_train=1600,
                                         **{k: v for k, v in traits["shufflenet_v2_x1_0"].items()})
    assert options["lr"] == recipes.PLAIN_GROUPED_NO_RESIDUAL_HEAD_LR
    assert options["backbone_lr"] == recipes.PLAIN_GROUPED_NO_RESIDUAL_LR
    assert {"lr", "backbone_lr"} <= set(note["from_defaults"])
    options, _ = recipes.apply_recipe({"model": "mobilenet_v2"}, img_size=64, n_train=1600,
                                      **{k: v for k, v in traits["mobilenet_v2"].items()})
    assert options["lr"] == recipes.PLAIN_GROUPED_LR and "backbone_lr" not in options


def test_reading_the_models_input_defaults_leaves_the_random_state_alone():
    torch.manual_seed(0)
    a = create_model("fastnet_s", "gap", 4, img_size=32)
    torch.manual_seed(0)
    native_input("fastnet_s")  # builds the backbone once to read it
    b = create_model("fastnet_s", "gap", 4, img_size=32)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
