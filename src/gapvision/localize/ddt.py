"""``--method ddt``: where the object is, from the backbone's descriptors alone (Deep Descriptor Transforming, Wei et
al. 2017/2019; PSOL, Zhang et al. CVPR 2020), with the class from the classifier.

CAM-style maps show the part that tells the classes apart (a raccoon's face, a kangaroo's legs); the first principal
component of the backbone's feature descriptors over the training images of one class separates what those images
have in common -- the object -- from the background (DDT co-localises one category; over several classes the first
component can be the axis between two of them instead). A class's map is each location's descriptor, centred on that
class's training mean, projected on its direction; positive means object. The direction's sign is chosen to agree
with the descriptors' norm (objects activate a trained backbone more than background). Which classes get a map and a
box is decided by the classifier, as for ``cam``.

The statistics (per class: mean and direction, vectors of the feature width) are fitted once on up to
:data:`FIT_IMAGES` images of the run's training split at the training size and kept in ``RUN_DIR/ddt.safetensors``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .. import atomic
from ..data.transforms import normalize, to_uint8
from ..errors import GapvisionError
from ..runs import Run, to_pil

DDT_FILE = "ddt.safetensors"
FIT_IMAGES = 256


@dataclass
class DescriptorPCA:
    """Per class (rows): the training descriptors' mean and first principal direction (K x C; unit length, signed
    towards objects; a class without training images has a zero direction)."""

    mean: torch.Tensor
    direction: torch.Tensor
    images: int = 0

    def descriptors(self, net: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features, descriptors)`` of a batch: both the backbone's final map."""
        with torch.inference_mode():
            feats = net.features(x)  # type: ignore[operator]
        return feats, feats.float()

    def maps(self, descriptors: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """N x C x h x w feature maps and N x k class indices -> N x k x h x w projections (positive: object)."""
        idx = classes.to(self.mean.device).long()
        mean = self.mean[idx].to(descriptors.device, descriptors.dtype)  # N x k x C
        direction = self.direction[idx].to(descriptors.device, descriptors.dtype)
        proj = torch.einsum("nchw,nkc->nkhw", descriptors, direction)
        return proj - (mean * direction).sum(dim=-1)[:, :, None, None]


def fit_pca(descriptors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and signed first principal direction of M x C ``descriptors`` (rows: locations of the images)."""
    d = descriptors.double()
    mean = d.mean(dim=0)
    centred = d - mean
    _, vectors = torch.linalg.eigh(centred.T @ centred / max(1, len(d) - 1))
    direction = vectors[:, -1]
    proj = centred @ direction
    norm = d.norm(dim=1)
    if float(((proj - proj.mean()) * (norm - norm.mean())).sum()) < 0:
        direction = -direction
    return mean.float(), direction.float()


def fit_classes(per_image: Sequence[torch.Tensor], labels: Sequence[int], num_classes: int) -> DescriptorPCA:
    """:func:`fit_pca` of each class's descriptors (``per_image[i]``: h*w x C of image i, of class ``labels[i]``)."""
    width = per_image[0].shape[1]
    mean, direction = torch.zeros(num_classes, width), torch.zeros(num_classes, width)
    for k in range(num_classes):
        rows = [d for d, y in zip(per_image, labels) if int(y) == k]
        if rows:
            mean[k], direction[k] = fit_pca(torch.cat(rows))
    return DescriptorPCA(mean, direction, len(per_image))


def descriptors(net: torch.nn.Module, images: Sequence, pre, device: torch.device,
                batch_size: int = 16) -> list[torch.Tensor]:
    """Per image, its backbone descriptors (h*w x C) at the training view."""
    rows: list[torch.Tensor] = []
    for start in range(0, len(images), batch_size):
        x = torch.stack([to_uint8(to_pil(im), pre) for im in images[start:start + batch_size]])
        with torch.inference_mode():
            f = net.features(normalize(x.to(device), pre)).float()  # type: ignore[operator]
        rows.extend(f.permute(0, 2, 3, 1).reshape(len(x), -1, f.shape[1]).cpu().unbind(0))
    return rows


def descriptor_pca(run: Run, net: torch.nn.Module, device: torch.device, *, refit: bool = False) -> DescriptorPCA:
    """The run's saved statistics, or fitted on its training split now (and saved in the run directory)."""
    path = Path(run.path) / DDT_FILE if getattr(run, "path", None) else None
    if path is not None and path.is_file() and not refit:
        t = load_file(str(path))
        if t["mean"].ndim == 2 and len(t["mean"]) == len(run.classes):  # else from another model: fitted again
            return DescriptorPCA(t["mean"], t["direction"], int(t["images"].item()))
    images, labels = training_images(run)
    pca = fit_classes(descriptors(net, images, run.preprocess, device), labels, len(run.classes))
    if path is not None:
        tensors = {"mean": pca.mean.contiguous(), "direction": pca.direction.contiguous(),
                   "images": torch.tensor([pca.images])}
        atomic.write_with(path, lambda tmp: save_file(tensors, str(tmp)))
    return pca


def training_images(run: Run, limit: int = FIT_IMAGES) -> tuple[list, list[int]]:
    """Up to ``limit`` images (a seeded sample) of the split the run trained on, read as its config.json says, and
    their labels."""
    from ..data.sources import load_split

    cfg = run.config.get("data") if isinstance(run.config.get("data"), dict) else {}
    data = cfg.get("data")
    if run.path is None and not data:
        raise GapvisionError("--method ddt fits on a run's training images, and a pretrained --model has none here: "
                             "localise with --method cam, gradcam or fcn, or train a run on your images")
    if not data or data == "<arrays>":
        raise GapvisionError("--method ddt fits on the run's training images, and this run does not say where they "
                             "are (trained on in-memory arrays): localise with --method cam or fcn")
    try:
        train = load_split(data, "train", skip_bad=True, **run.split_options())
    except (GapvisionError, OSError) as e:
        raise GapvisionError(f"--method ddt fits on the run's training images ({data}), which cannot be read here "
                             f"({e}): localise with --method cam or fcn") from None
    index = {name: k for k, name in enumerate(run.classes)}  # the data's class names onto the run's indices
    known = [i for i in range(len(train)) if train.classes[int(train.labels[i])] in index]
    if not known:
        raise GapvisionError(f"--method ddt: no training image of {data} has one of the run's classes "
                             f"({', '.join(run.classes)}): localise with --method cam or fcn")
    pick = np.sort(np.random.default_rng(0).permutation(known)[:limit])
    return [train.load(int(i)) for i in pick], [index[train.classes[int(train.labels[i])]] for i in pick]
