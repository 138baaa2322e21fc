"""``gapvision compare``: argument parsing only; the work is :func:`gapvision.compare.compare`."""
from __future__ import annotations

import argparse

from .. import options as opts
from ..errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``compare`` sub-command (called by gapvision.cli.build_parser)."""
    p = sub.add_parser("compare", help="train several heads (fc, gap, gmp...) on the same data and seeds; "
                       "writes a table, curves and a verdict")
    opts.add_data_args(p)
    opts.add_preprocess_args(p)
    opts.add_model_args(p, head=False)
    opts.add_train_args(p)
    g = p.add_argument_group("comparison")
    g.add_argument("--heads", default="fc,gap,gmp", help="heads to compare (default fc,gap,gmp; also avgmax, "
                   "catavgmax, conv)")
    g.add_argument("--seeds", help="seeds, e.g. 0,1,2 or 0-4 (default 0, or --seed)")
    g.add_argument("--no-augment", action="store_true", help="no training augmentation (same as --augment none); "
                   "with a frozen backbone each image's features are then computed once")
    g.add_argument("--features", choices=["auto", "cache", "stream"], default="auto",
                   help="auto: cache the feature maps when the backbone is frozen (--freeze backbone); cache: insist; "
                   "stream: run the backbone every step (the slow path)")
    g.add_argument("--max-images", type=int, help="use at most N training images (stratified; val/test N/4)")
    g.add_argument("--quick", action="store_true", help="a quick check: --epochs 2 --max-images 1000 unless given")
    g.add_argument("--out", help="folder for the runs and the summary (default runs/<time>-<model>-compare); "
                   "rerun the same command to continue an interrupted comparison")
    p.set_defaults(handler=cmd_compare)


def cmd_compare(a: argparse.Namespace) -> None:
    from .api import compare

    options = opts.collect(a)
    seed = options.pop("seed", None)
    if a.seeds and seed is not None:
        raise ConfigError("give --seeds 0,1,2 or --seed N, not both")
    if a.no_augment:
        if options.get("augment", "none") != "none":
            raise ConfigError(f"--no-augment contradicts --augment {options['augment']}")
        options["augment"] = "none"
    result = compare(a.data, a.model or "gapcnn", a.heads, a.seeds or (seed if seed is not None else 0), out=a.out,
                     features=a.features, max_images=a.max_images, quick=a.quick, **options)
    if not result.rows:  # torchrun ranks other than 0 helped train; rank 0 reports
        return
    print((result.path / "summary.md").read_text())
    print(result.report.split("\n\n")[1])  # the answer to "can GAP replace the FC layer?"

