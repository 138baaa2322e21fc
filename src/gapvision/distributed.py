"""Scale out with torchrun: data-parallel training (DDP) and sharded batch inference.

``torchrun --nproc_per_node N -m gapvision train ...`` starts N processes; each calls :func:`setup`, which reads
torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` and joins the process group (gloo on CPU, NCCL for CUDA tensors).
Outside torchrun everything here is a no-op and training is the plain single-process loop.

Global batch semantics: ``--batch-size B`` is the *global* batch. Rank ``r`` of ``N`` gets the r-th slice (B/N images)
of every global batch of exactly the order a single process would use, and each rank's gradient is weighted by its
share of the global batch before the all-reduce. So DDP with batch B follows single-process training with batch B step
for step (same weights up to float summation order), as long as nothing depends on which process handles an image.
Augmentation does not (each image's is seeded by (seed, epoch, index)); dropout masks do (they are drawn per process
batch), and so do BatchNorm statistics unless they are those of the global batch: on CUDA, BatchNorm layers become
SyncBatchNorm; on CPU PyTorch has no SyncBatchNorm, so each process normalises with its own slice's statistics
(standard DDP behaviour). Models without BatchNorm and dropout (e.g. cifarcnn) match single-process training exactly.

Only rank 0 writes the run directory. Resuming (``--resume``) reads the run directory on every rank, so under
multi-node training it must be on a filesystem all nodes share; so must the ``--output`` of sharded prediction.
"""
from __future__ import annotations

import atexit
import copy
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Sampler

from . import atomic
from .devices import uses_cuda
from .errors import ConfigError, GapvisionError

T = TypeVar("T")


# -- the process group -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Context:
    """This process's place in the job: rank 0 of 1 outside torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False  # started by torchrun (WORLD_SIZE set), even with one process

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """True once the process group is up (collectives are needed)."""
        return self.launched and dist.is_available() and dist.is_initialized()


def detect() -> Context:
    """Read torchrun's environment variables (absent: a single plain process)."""
    if "WORLD_SIZE" not in os.environ:
        return Context()
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (they are set by torchrun)") from None
    if not 0 <= rank < world:
        raise ConfigError(f"RANK {rank} is outside WORLD_SIZE {world}: start the job with torchrun")
    return Context(rank, world, local, launched=True)


def setup(device: str = "auto") -> Context:
    """Join the torchrun process group once (idempotent; a no-op outside torchrun).

    CUDA: each process uses GPU ``LOCAL_RANK`` and the group runs NCCL for CUDA tensors and gloo for CPU objects.
    CPU: gloo.
    """
    ctx = detect()
    if not ctx.launched or dist.is_initialized():
        return ctx
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed: run without torchrun")
    if "MASTER_ADDR" not in os.environ:
        raise ConfigError("WORLD_SIZE is set but MASTER_ADDR is not: start multi-process jobs with torchrun "
                          "(or unset WORLD_SIZE)")
    if uses_cuda(device):
        if ctx.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {ctx.local_rank} but only {torch.cuda.device_count()} GPU(s): "
                              "use --nproc_per_node <= the number of GPUs per node")
        torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group("cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group("gloo")
    atexit.register(cleanup)
    return ctx


def cleanup() -> None:
    """Leave the process group (registered at exit by :func:`setup`)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def current() -> Context:
    """The context of this process (rank 0 of 1 unless the group is up)."""
    ctx = detect()
    return ctx if ctx.active else Context()


def barrier() -> None:
    if current().active:
        dist.barrier()


def broadcast(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (any picklable object)."""
    if not current().active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all ranks (the Trainer's ``reduce`` hook for its metric sums)."""
    if current().active:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def per_rank_config(cfg: T) -> T:
    """This rank's view of a TrainConfig: the global batch must divide, ``cuda:N`` becomes this rank's GPU (``cuda``
    after :func:`setup` picked GPU LOCAL_RANK), and ranks other than 0 run quietly."""
    ctx = current()
    if not ctx.active:
        return cfg
    local_batch_size(cfg.batch_size, ctx.world_size)  # type: ignore[attr-defined]
    changes: dict[str, Any] = {}
    if str(cfg.device).startswith("cuda:"):  # type: ignore[attr-defined]
        changes["device"] = "cuda"
    if not ctx.is_main:
        changes["quiet"] = True
    return dataclasses.replace(cfg, **changes) if changes else cfg  # type: ignore[type-var]


# -- global batches ------------------------------------------------------------------------------------------------
def local_batch_size(global_batch: int, world_size: int | None = None) -> int:
    """Images per process and step for a global ``--batch-size``; it must divide evenly."""
    world = current().world_size if world_size is None else world_size
    if global_batch % world:
        raise ConfigError(f"--batch-size {global_batch} is the global batch and must be divisible by the "
                          f"{world} processes: use a multiple of {world}")
    return global_batch // world


class GlobalBatchSampler(Sampler[int]):
    """Rank ``rank``'s slice of each global batch of the single-process order (shuffled or not).

    The order is drawn from the DataLoader's ``generator`` exactly as ``RandomSampler`` draws it, so every rank sees
    the permutation a single process would. A short last batch is split as evenly as possible; a rank left without an
    image gets one repeated image whose gradient weight is 0 (all ranks must take the same number of steps).
    """

    def __init__(self, n: int, global_batch: int, rank: int, world_size: int, *, shuffle: bool = True,
                 generator: torch.Generator | None = None):
        self.n, self.global_batch, self.rank, self.world = n, global_batch, rank, world_size
        self.local = local_batch_size(global_batch, world_size)
        self.shuffle = shuffle
        self.generator = generator
        self.epoch = 0
        self.steps_done = 0  # backward passes in this epoch (advanced by the gradient hook)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.steps_done = 0

    def _slice(self, size: int, rank: int) -> tuple[int, int, float]:
        """(start, stop, gradient weight) of ``rank``'s part of a global batch of ``size`` images."""
        if size == self.global_batch:
            return rank * self.local, (rank + 1) * self.local, self.local / size
        base, extra = divmod(size, self.world)
        start = rank * base + min(rank, extra)
        count = base + (rank < extra)
        if count == 0:
            return 0, 1, 0.0  # a stand-in image with no weight
        return start, start + count, count / size

    def weight(self, step: int) -> float:
        """This rank's share of global batch ``step`` (the factor for its gradient before summing)."""
        size = min(self.global_batch, self.n - step * self.global_batch)
        return self._slice(size, self.rank)[2] if size > 0 else 0.0

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.n, generator=self.generator).tolist() if self.shuffle else list(range(self.n))
        for begin in range(0, self.n, self.global_batch):
            batch = order[begin: begin + self.global_batch]
            lo, hi, _ = self._slice(len(batch), self.rank)
            yield from batch[lo:hi]

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.global_batch)
        if not rest:
            return full * self.local
        lo, hi, _ = self._slice(rest, self.rank)
        return full * self.local + hi - lo


class ShardSampler(Sampler[int]):
    """A contiguous, unpadded shard of ``range(n)`` for evaluation (sums of metrics stay exact).

    With fewer items than ranks every rank takes all of them: summed counts then grow N-fold but ratios are exact.
    """

    def __init__(self, n: int, rank: int, world_size: int):
        if n < world_size:
            self.start, self.stop = 0, n
        else:
            self.start, self.stop = rank * n // world_size, (rank + 1) * n // world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


class SamplerFactory:
    """``sampler_factory`` for StreamingBatches; keeps the sampler it made (the gradient hook needs it)."""

    def __init__(self, make: Callable[[int, torch.Generator], Sampler]):
        self.make = make
        self.sampler: Sampler | None = None

    def __call__(self, dataset: Dataset, generator: torch.Generator) -> Sampler:
        self.sampler = self.make(len(dataset), generator)  # type: ignore[arg-type]
        return self.sampler


def train_sampler(global_batch: int) -> SamplerFactory | None:
    """Training slices of each global batch for this rank, or None outside a DDP job."""
    ctx = current()
    if not ctx.active:
        return None
    return SamplerFactory(lambda n, g: GlobalBatchSampler(n, global_batch, ctx.rank, ctx.world_size, generator=g))


def eval_sampler() -> SamplerFactory | None:
    """Evaluation shards for this rank, or None outside a DDP job."""
    ctx = current()
    if not ctx.active:
        return None
    return SamplerFactory(lambda n, g: ShardSampler(n, ctx.rank, ctx.world_size))


# -- the model -----------------------------------------------------------------------------------------------------
def _weighted_allreduce(sampler, bucket):  # no annotations: DDP checks them against real (not string) types
    """DDP communication hook: sum over ranks of (share of the global batch) x (local mean gradient)."""
    buf = bucket.buffer()
    buf.mul_(sampler.weight(sampler.steps_done))
    if bucket.is_last():
        sampler.steps_done += 1
    fut = dist.all_reduce(buf, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


def wrap(trainer: Any, sampler_factory: SamplerFactory | None) -> Any:
    """Put ``trainer.net`` under DistributedDataParallel (SyncBatchNorm on CUDA); a no-op outside a DDP job.

    Call after the Trainer is built (its optimizer holds the plain module's parameters) and after a checkpoint is
    loaded; DDP then broadcasts rank 0's weights so every rank starts identical.
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    if not current().active or isinstance(trainer.net, DDP):
        return trainer
    net: nn.Module = trainer.net
    cuda = trainer.device.type == "cuda"
    if cuda:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    ddp = DDP(net, device_ids=[trainer.device.index or torch.cuda.current_device()] if cuda else None)
    if sampler_factory is not None and isinstance(sampler_factory.sampler, GlobalBatchSampler):
        ddp.register_comm_hook(sampler_factory.sampler, _weighted_allreduce)
    trainer.net = ddp
    return trainer


def alone(trainer: Any) -> Any:
    """A shallow copy of ``trainer`` that evaluates on this rank only (plain module, no all-reduce)."""
    solo = copy.copy(trainer)
    solo.net = getattr(trainer.net, "module", trainer.net)
    solo.reduce = None
    return solo


# -- sharded inference -----------------------------------------------------------------------------------------------
def _read_jsonl(path: Path) -> list[dict]:
    """Records of a JSONL file; a torn last line (an interrupted write) is ignored. A file that holds anything
    else (another command's output, a report...) is an error, so that it is never overwritten."""
    out: list[dict] = []
    if not path.exists():
        return out

    def not_ours(line: int) -> GapvisionError:
        return GapvisionError(f"{path} already exists and is not this command's JSONL output (line {line} is not a "
                              "record): choose another --output, or remove that file")

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise not_ours(1) from None
    for n, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        if isinstance(rec, dict) and "image" in rec:
            out.append(rec)
        elif n < len(lines) or not out and line.strip() and not line.lstrip().startswith("{"):
            raise not_ours(n)  # only a torn last line (an interrupted record) is forgiven
    return out


def parts_dir(output: str | Path) -> Path:
    """Where each rank appends its shard of ``output`` until rank 0 merges them."""
    output = Path(output)
    return output.with_name(output.name + ".parts")


def _open_part(path: Path):
    """Open a rank's shard for appending, first cutting a torn last line left by an interrupted run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
    return open(path, "a", encoding="utf-8")


@dataclass
class ShardedResult:
    output: Path
    total: int  # images in the input
    done_before: int  # skipped: already in the output or in a shard of an interrupted run
    computed: int  # by all ranks together in this call

    def records(self) -> list[dict]:
        """The records of the output file, in input order."""
        return _read_jsonl(self.output)

    def summary(self) -> str:
        world = current().world_size
        by = f" by {world} processes" if world > 1 else ""
        return (f"{self.output}: {self.total} records ({self.computed} computed now{by}, "
                f"{self.done_before} already done)")


def map_to_jsonl(names: Sequence[str], fn: Callable[[list[str]], list[dict]], output: str | Path,
                 batch_size: int = 64) -> ShardedResult:
    """Run ``fn`` over ``names`` in chunks, shared across the ranks of a torchrun job, into one JSONL file.

    Each record is ``fn``'s dict for one name and must hold ``"image": name``. Rank r appends records of every N-th
    pending name to ``<output>.parts/part-<r>.jsonl``; at the end rank 0 merges output and parts in input order and
    removes the parts. Names already in ``output`` or in a part (an interrupted run, any number of ranks) are skipped,
    so a rerun only does what is missing. Records of names no longer in the input are dropped from the output.
    """
    output = Path(output)
    ctx = current()
    parts = parts_dir(output)
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()
    if broadcast(digest) != digest:
        raise ConfigError("the processes found different input images: on several nodes the inputs must be on a "
                          "filesystem they share")
    todo = None
    if ctx.is_main:  # rank 0 decides what is left; the others get one byte per name
        done = {r["image"] for p in [output, *sorted(parts.glob("part-*.jsonl"))] for r in _read_jsonl(p)}
        todo = bytes(n not in done for n in names)
    todo = broadcast(todo)
    pending = [n for n, left in zip(names, todo) if left]
    mine = pending[ctx.rank:: ctx.world_size]
    if mine:
        with _open_part(parts / f"part-{ctx.rank:05d}.jsonl") as f:
            for i in range(0, len(mine), batch_size):
                for rec in fn(list(mine[i: i + batch_size])):
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                f.flush()
    barrier()
    if ctx.is_main:
        merge_jsonl(names, output)
    barrier()
    return ShardedResult(output, len(names), len(names) - len(pending), len(pending))


def merge_jsonl(names: Sequence[str], output: str | Path) -> None:
    """Write ``output`` (atomically) with one record per name in ``names`` order, from output and its parts."""
    output = Path(output)
    parts = parts_dir(output)
    found: dict[str, dict] = {}
    for p in [output, *sorted(parts.glob("part-*.jsonl"))]:
        for rec in _read_jsonl(p):
            found.setdefault(rec["image"], rec)
    lines = [json.dumps(found[n], ensure_ascii=False) + "\n" for n in names if n in found]
    atomic.write_text(output, "".join(lines))
    for p in parts.glob("part-*.jsonl"):
        p.unlink()
    if parts.exists() and not any(parts.iterdir()):
        parts.rmdir()


def inference_inputs(paths: Sequence[str | Path]) -> list[str]:
    """Image names for batch inference: folders (walked by the rules of data/files.py), manifests (.csv/.tsv: their
    image column, relative paths resolved against the manifest's folder) and image files, in the order given."""
    from .data.sources import load_images
    from .runs import list_images

    names: list[str] = []
    for p in map(Path, paths):
        if p.is_file() and p.suffix.lower() in (".csv", ".tsv"):
            names.extend(str(item) for item in load_images(p).items)
        else:
            names.extend(str(f) for f in list_images([p]))
    return names


expand_inputs = inference_inputs  # the name scripts and tests know


def _sharded_inputs(inputs: Sequence[str | Path]) -> list[str]:
    setup()
    names = inference_inputs(inputs)
    if not names:
        raise ConfigError("no images found in " + ", ".join(map(str, inputs)))
    return names


def predict_to_jsonl(run: Any, inputs: Sequence[str | Path], output: str | Path, *, topk: int = 3,
                     batch_size: int = 64, skip_bad: bool = False) -> ShardedResult:
    """``gapvision predict --output FILE.jsonl``: top-k records (as ``--json`` prints them) for every input image,
    computed by all torchrun ranks together and merged in input order; a rerun skips images already done.
    ``skip_bad``: an image file that does not decode gets an ``{"image", "error"}`` record (done, like the rest)."""
    names = _sharded_inputs(inputs)  # joins the process group first: --device auto is then this rank's GPU
    return map_to_jsonl(names, lambda chunk: run.predict(chunk, topk=topk, skip_bad=skip_bad), output,
                        batch_size=batch_size)


def localize_to_jsonl(run: Any, inputs: Sequence[str | Path], output: str | Path, *, batch_size: int = 16,
                      skip_bad: bool = False, **options: Any) -> ShardedResult:
    """``gapvision localize --output FILE.jsonl``: one localisation record per input image (as ``--json`` prints
    them), shared across torchrun ranks like :func:`predict_to_jsonl` (``skip_bad`` as there). ``options`` go to
    the Localizer."""
    from .data.images import records_of_readable
    from .localize.api import Localizer, as_run
    from .localize.video import is_video

    names = _sharded_inputs(inputs)
    videos = [n for n in names if is_video(n)]
    if videos:
        raise ConfigError(f"--output takes still images, not videos ({videos[0]}): localize videos without --output")
    if current().active and str(options.get("device") or "").startswith("cuda:"):
        options["device"] = "cuda"  # this rank's GPU, selected by setup()
    loc = Localizer(as_run(run), **options)

    def records(pils: list, chunk: list[str]) -> list[dict]:
        return [r.to_dict() for r in loc(pils, chunk, batch_size)]

    return map_to_jsonl(names, lambda chunk: records_of_readable(chunk, chunk, records) if skip_bad
                        else records(chunk, chunk), output, batch_size=batch_size)
