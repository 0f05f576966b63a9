"""Datasets kept decoded as uint8 tensors, and batched augmentation on tensors.

A pool directory is materialised once (pool.materialize) and an .npz is read once; the images
then live as one uint8 (N, H, W, 3) tensor, on the GPU when there is one. A pool whose decoded
images are over the memory budget stays in its cache on disk instead (distill.streaming), and
batches are read ahead as the trainer needs them. Augmentation
(RandomResizedCrop + flip + normalise) is one affine grid_sample call per batch: there is no
per-image Python in the training loop.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from distill.contract import ClassInfo, Mapping
from distill.errors import DistillError
from distill.options import MAX_INPUT_SIZE
from distill.streaming import DiskImages

# Bounds on what loading untrusted files may allocate. The byte limits are read from the
# environment at each load (a whole number of bytes), so bigger data needs no code change.
DATA_BYTES_ENV, DATA_BYTES_DEFAULT = "KD3_MAX_DATA_BYTES", 8 << 30  # an image set, decoded
MAX_IMAGE_PIXELS = 4096 * 4096  # one image of an npz's JPEG form, checked before decoding


def check_size(source, nbytes: int, env: str, default: int, error=DistillError) -> None:
    """Refuse to load `nbytes` when they exceed the limit: $`env` bytes, else `default`."""
    try:
        limit = int(os.environ.get(env, default))
    except ValueError:
        raise error(f"{env} must be a whole number of bytes") from None
    if nbytes > limit:
        raise error(
            f"{source}: refused: it would take {nbytes:,} bytes once loaded, over the limit of "
            f"{limit:,} ({env})"
        )


def default_memory_budget(device: torch.device) -> int:
    """Bytes of decoded images to hold in memory when the user sets no budget: a third of the
    GPU's memory (the models and activations need the rest), else a quarter of the host's."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 3
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


@dataclass
class ImageSet:
    images: torch.Tensor | DiskImages  # (N, H, W, 3) uint8, in memory or streamed from disk
    labels: torch.Tensor  # (N,) int64, -1 where unknown
    class_names: list[str] | None
    source: str

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device) -> ImageSet:
        return ImageSet(
            self.images.to(device), self.labels.to(device), self.class_names, self.source
        )

    @property
    def streamed(self) -> bool:
        return isinstance(self.images, DiskImages)

    def part(self, start: int, stop: int):
        """Images start to stop (a view: a tensor slice, or rows still on disk)."""
        if self.streamed:
            return self.images.take(torch.arange(start, stop))
        return self.images[start:stop]

    def subset(self, keep: torch.Tensor) -> ImageSet:
        """The images where the boolean mask `keep` is set."""
        images = self.images.take(keep) if self.streamed else self.images[keep]
        return ImageSet(images, self.labels[keep], self.class_names, self.source)

    def batches(self, indices, pin_memory: bool = False):
        """The uint8 images of each index tensor of `indices`, in turn: read ahead from disk
        when streamed (pinned for a GPU when `pin_memory`), else indexed on their device."""
        if self.streamed:
            return self.images.batches(indices, pin_memory)
        return (self.images[idx.to(self.images.device)] for idx in indices)

    @property
    def has_labels(self) -> bool:
        return bool((self.labels >= 0).any())

    @property
    def num_classes(self) -> int:
        """The classes its labels index: its class names, else the largest label + 1 (0 when
        it has neither)."""
        return len(self.class_names) if self.class_names else int(self.labels.max()) + 1

    def mapped(self, mapping: Mapping, names: list[str] | None) -> ImageSet:
        """The same images with labels in a model's classes (named `names`, when it has
        names), per `mapping` (distill.contract)."""
        labels = self.labels
        if mapping.index is not None:
            index = torch.tensor(mapping.index, dtype=torch.int64, device=labels.device)
            labels = torch.where(labels >= 0, index[labels.clamp_min(0)], labels)
        return ImageSet(self.images, labels, names or self.class_names, self.source)


def check_classes(
    data: ImageSet, num_classes: int, names: list[str] | None = None, need_labels: bool = True
) -> None:
    """`data` fits a `num_classes`-class model (named `names`) as it is: its labels index those
    classes and its class names (when both have names) are the model's; with need_labels, it
    has labels at all (evaluation data). The stages map data onto a model's classes before
    (distill.contract); this guards direct users of the Trainer."""
    if need_labels and not data.has_labels:
        raise DistillError(f"{data.source}: evaluation data needs labels ('y')")
    if int(data.labels.max()) >= num_classes:
        raise DistillError(
            f"{data.source}: label {int(data.labels.max())} out of range for a "
            f"{num_classes}-class model"
        )
    if names and data.class_names and list(data.class_names) != list(names):
        raise DistillError(
            f"{data.source}: class names {data.class_names} differ from the model's {names}"
        )


class ImageSource:
    """A pool directory or an .npz, opened: its class names and labels are known (for the
    class contract, distill.contract), its images not yet decoded or resized."""

    def __init__(self, path: str | Path):
        from pool.errors import PoolError
        from pool.npz import loaded_bytes, read_npz
        from pool.store import Pool

        self.path = Path(path)
        self.pool = self.npz = None
        try:
            if self.path.is_dir():
                self.pool = Pool.open(self.path)
                classes = self.pool.classes()
                self.class_names = classes.names if classes else None
            elif not self.path.exists():
                raise DistillError(f"{self.path}: no such pool directory or .npz file")
            else:
                check_size(self.path, loaded_bytes(self.path), DATA_BYTES_ENV, DATA_BYTES_DEFAULT)
                self.npz = read_npz(self.path)
                self.class_names = self.npz.class_names
        except PoolError as exc:
            raise DistillError(str(exc)) from None

    def max_label(self) -> int:
        """The largest class index of its images; -1 when none is labelled."""
        if self.npz is not None:
            labels = self.npz.labels
            return -1 if labels is None else int(labels.max())
        import pyarrow.compute as pc

        top = pc.max(self.pool.manifest()["class_index"]).as_py()
        return -1 if top is None else int(top)

    def classes(self, what: str) -> ClassInfo:
        """Its side of the class contract, called `what` in messages ("pool PATH")."""
        names = self.class_names
        count = len(names) if names else self.max_label() + 1
        return ClassInfo(f"{what} {self.path}", names, count)

    def load(
        self, size: int | None = 32, progress: bool = False, memory_budget: int | None = None
    ) -> ImageSet:
        """Its images as uint8 `size` x `size` (npz images are resized if needed; size None
        keeps an npz's own size, and means 32 for a pool). A pool over `memory_budget` bytes
        decoded is streamed from its cache on disk (no budget: always in memory); an npz is
        always loaded whole (within KD3_MAX_DATA_BYTES)."""
        if size is not None and not 1 <= size <= MAX_INPUT_SIZE:
            raise DistillError(f"image size {size} out of range: 1 to {MAX_INPUT_SIZE} pixels")
        from pool.errors import PoolError

        try:
            if self.pool is not None:
                return self._load_pool(size or 32, progress, memory_budget)
            return self._load_npz(size, progress)
        except PoolError as exc:
            raise DistillError(str(exc)) from None

    def _load_pool(self, size: int, progress: bool, memory_budget: int | None) -> ImageSet:
        from pool.materialize import materialize

        mat = materialize(self.pool, size, progress=progress)
        if len(mat.sha256) == 0:
            raise DistillError(f"{self.path}: the pool has no kept images")
        if memory_budget is not None and mat.images.nbytes > memory_budget:
            images = DiskImages(mat.path)
        else:
            images = torch.from_numpy(np.array(mat.images))  # copy out of the memory map
        return ImageSet(
            images=images,
            labels=torch.from_numpy(mat.class_index.astype(np.int64)),
            class_names=self.class_names,
            source=str(self.path),
        )

    def _load_npz(self, size: int | None, progress: bool) -> ImageSet:
        npz, path = self.npz, self.path
        x = npz.pixels if npz.pixels is not None else _decode_files(npz, progress)
        if size is None and max(x.shape[1:3]) > MAX_INPUT_SIZE:
            raise DistillError(
                f"{path}: images of {x.shape[1]}x{x.shape[2]} pixels are over the "
                f"limit of {MAX_INPUT_SIZE}; give a smaller image size"
            )
        images = torch.from_numpy(np.ascontiguousarray(x))
        if size is not None and images.shape[1:3] != (size, size):
            check_size(path, len(images) * size * size * 3, DATA_BYTES_ENV, DATA_BYTES_DEFAULT)
            images = resize_uint8(images, size)
        y = npz.labels if npz.labels is not None else np.full(len(npz), -1, np.int64)
        return ImageSet(images, torch.from_numpy(y), npz.class_names, str(path))


def open_images(path: str | Path) -> ImageSource:
    return ImageSource(path)


def load_images(path: str | Path, size: int | None = 32, progress: bool = False) -> ImageSet:
    """Load a pool directory (kept images) or an .npz (pool.npz's forms) as uint8 images of
    `size` x `size`; see ImageSource.load."""
    return ImageSource(path).load(size, progress)


def _decode_files(npz, progress: bool) -> np.ndarray:
    """The JPEG form, decoded as a pool's images are (EXIF orientation, transparency): all of
    one size, refused before the rest are decoded when one is over MAX_IMAGE_PIXELS or all
    together would be over the data limit."""
    first = np.asarray(npz.rgb(0, max_pixels=MAX_IMAGE_PIXELS))
    check_size(npz.path, len(npz) * first.nbytes, DATA_BYTES_ENV, DATA_BYTES_DEFAULT)
    out = np.empty((len(npz), *first.shape), np.uint8)
    out[0] = first
    for i in tqdm(range(1, len(npz)), disable=not progress, desc="decode", leave=False):
        image = npz.rgb(i, max_pixels=MAX_IMAGE_PIXELS)
        if image.size[::-1] != first.shape[:2]:
            w, h = image.size
            raise DistillError(
                f"{npz.path}: image {i} is {w}x{h}, image 0 {first.shape[1]}x{first.shape[0]}; "
                "the images of an npz must be of one size"
            )
        out[i] = np.asarray(image)
    return out


def resize_uint8(images: torch.Tensor, size: int, chunk: int = 1024) -> torch.Tensor:
    """Resize uint8 NHWC images to size x size (antialiased bilinear), in chunks."""
    out = []
    for part in images.split(chunk):
        f = part.permute(0, 3, 1, 2).float()
        f = F.interpolate(f, size=(size, size), mode="bilinear", antialias=True)
        out.append(f.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1))
    return torch.cat(out).contiguous()


class Normalizer:
    """uint8 NHWC batch -> normalised float NCHW, optionally resized to the model's input."""

    def __init__(self, mean, std, size: int, device, channels_last: bool = False):
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255
        self.size = size
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def _to_float(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.mean.device, non_blocking=True).permute(0, 3, 1, 2).float()
        return x

    def eval(self, batch: torch.Tensor) -> torch.Tensor:
        x = self._to_float(batch)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=self.memory_format)

    def train(
        self,
        batch: torch.Tensor,
        generator: torch.Generator,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        augment: str = "rrc",
    ) -> torch.Tensor:
        """A training view of every image, batched: augment "rrc" is RandomResizedCrop(size,
        scale, ratio) + horizontal flip; "padcrop" is the CIFAR recipe, a random crop of the
        image zero-padded by size/8 pixels (4 at 32 px) + horizontal flip. Then normalise."""
        if augment == "padcrop":
            return self._pad_crop(batch, generator)
        x = self._to_float(batch)
        theta = random_resized_crop_theta(
            x.shape[0], x.shape[-1], x.shape[-2], scale, ratio, generator
        ).to(x.device)
        grid = F.affine_grid(theta, [x.shape[0], 3, self.size, self.size], align_corners=False)
        x = F.grid_sample(
            (x - self.mean) / self.std,
            grid,
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )
        return x.contiguous(memory_format=self.memory_format)

    def _pad_crop(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = self._to_float(batch)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True)
        theta = pad_crop_theta(x.shape[0], self.size, max(1, self.size // 8), generator)
        grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
        # Integer shifts sample exact pixels; outside the image is black, as torchvision's pad.
        x = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=self.memory_format)


def pad_crop_theta(n: int, size: int, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Affine matrices (n, 2, 3): a shift by a whole number of pixels in [-pad, pad] on each
    axis (RandomCrop(size, padding=pad)) and a random horizontal flip."""
    shift = torch.randint(-pad, pad + 1, (n, 2), generator=generator).double()
    flip = torch.rand(n, generator=generator, dtype=torch.float64) < 0.5
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = torch.where(flip, -1.0, 1.0)
    theta[:, 1, 1] = 1.0
    theta[:, :, 2] = 2 * shift / size
    return theta.float()


def random_resized_crop_theta(
    n: int,
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
    tries: int = 10,
) -> torch.Tensor:
    """Affine matrices (n, 2, 3) for torchvision's RandomResizedCrop box sampling plus a random
    horizontal flip: `tries` candidate boxes per image, the first that fits wins, else the
    central crop clipped to `ratio` (torchvision's fallback)."""
    area = width * height
    u = torch.rand(n, tries, 4, generator=generator, dtype=torch.float64)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[..., 1]
    aspect = torch.exp(log_r)
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((n,), -1))
    rows = torch.arange(n)
    pick = first.clamp_min(0)
    w, h = w[rows, pick], h[rows, pick]
    x0 = torch.floor(u[rows, pick, 2] * (width - w + 1))
    y0 = torch.floor(u[rows, pick, 3] * (height - h + 1))
    # Fallback: central crop with the aspect ratio clamped into `ratio`.
    in_ratio = width / height
    fw = float(width) if ratio[0] <= in_ratio <= ratio[1] else None
    if fw is None:
        if in_ratio < ratio[0]:
            fw, fh = float(width), round(width / ratio[0])
        else:
            fh, fw = float(height), round(height * ratio[1])
    else:
        fh = float(height)
    miss = first < 0
    w = torch.where(miss, torch.full_like(w, fw), w)
    h = torch.where(miss, torch.full_like(h, fh), h)
    x0 = torch.where(miss, torch.full_like(x0, (width - fw) // 2), x0)
    y0 = torch.where(miss, torch.full_like(y0, (height - fh) // 2), y0)
    flip = torch.rand(n, generator=generator, dtype=torch.float64) < 0.5
    # Map output coordinates in [-1, 1] to the crop box in input coordinates (align_corners=False).
    cx = (2 * x0 + w) / width - 1
    cy = (2 * y0 + h) / height - 1
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = torch.where(flip, -w / width, w / width)
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = cy
    return theta.float()
