"""Datasets kept decoded as uint8 tensors, and batched augmentation on tensors.

A pool directory is materialised once (pool.materialize) and an .npz is read once; the images
then live as one uint8 (N, H, W, 3) tensor, on the GPU when there is one. Augmentation
(RandomResizedCrop + flip + normalise) is one affine grid_sample call per batch: there is no
per-image Python in the training loop.
"""

from __future__ import annotations

import io
import math
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from distill.errors import DistillError

# Bounds on what loading untrusted files may allocate. The byte limits are read from the
# environment at each load (a whole number of bytes), so bigger data needs no code change.
DATA_BYTES_ENV, DATA_BYTES_DEFAULT = "KD3_MAX_DATA_BYTES", 8 << 30  # an image set, decoded
MAX_INPUT_SIZE = 1024  # pixels per side of the images a model is trained or evaluated on
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


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, H, W, 3) uint8
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
    def has_labels(self) -> bool:
        return bool((self.labels >= 0).any())

    @property
    def num_classes(self) -> int:
        """The classes its labels index: its class names, else the largest label + 1 (0 when
        it has neither)."""
        return len(self.class_names) if self.class_names else int(self.labels.max()) + 1


def check_classes(
    data: ImageSet, num_classes: int, names: list[str] | None = None, need_labels: bool = True
) -> None:
    """`data` fits a `num_classes`-class model (named `names`): its labels index those classes,
    its class names (when both have names) are the model's, and, with need_labels, it has
    labels at all (evaluation data)."""
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


def load_images(path: str | Path, size: int | None = 32, progress: bool = False) -> ImageSet:
    """Load a pool directory (kept images) or an .npz (`x` or JPEG `jpeg`/`offsets`, optional `y`
    and `class_names`) as uint8 images of `size` x `size` (npz images are resized if needed;
    size None keeps an npz's own size, and means 32 for a pool)."""
    path = Path(path)
    if size is not None and not 1 <= size <= MAX_INPUT_SIZE:
        raise DistillError(f"image size {size} out of range: 1 to {MAX_INPUT_SIZE} pixels")
    if path.is_dir():
        data = _load_pool(path, size or 32, progress)
    elif not path.exists():
        raise DistillError(f"{path}: no such pool directory or .npz file")
    else:
        data = _load_npz(path, size)
    _check_labels(data)
    return data


def _check_labels(data: ImageSet) -> None:
    """Labels are -1 (unknown) or index the set's class names; names are distinct."""
    names, labels = data.class_names or None, data.labels
    if names is not None and len(set(names)) != len(names):
        raise DistillError(f"{data.source}: class names must be distinct, got {names}")
    low, high = int(labels.min()), int(labels.max())
    top = len(names) - 1 if names is not None else None
    if low < -1 or (top is not None and high > top):
        allowed = f"0 to {top} (one per class name)" if top is not None else "0 or more"
        raise DistillError(
            f"{data.source}: labels run from {low} to {high}; they must be -1 (unknown) or "
            f"{allowed}"
        )


def _load_pool(path: Path, size: int, progress: bool) -> ImageSet:
    from pool.errors import PoolError
    from pool.materialize import materialize
    from pool.store import Pool

    try:
        pool = Pool.open(path)
        mat = materialize(pool, size, progress=progress)
        classes = pool.classes()
    except PoolError as exc:
        raise DistillError(str(exc)) from None
    if len(mat.sha256) == 0:
        raise DistillError(f"{path}: the pool has no kept images")
    return ImageSet(
        images=torch.from_numpy(np.array(mat.images)),  # copy out of the memory map
        labels=torch.from_numpy(mat.class_index.astype(np.int64)),
        class_names=classes.names if classes else None,
        source=str(path),
    )


def _load_npz(path: Path, size: int | None) -> ImageSet:
    try:
        check_size(path, _npz_bytes(path), DATA_BYTES_ENV, DATA_BYTES_DEFAULT)
        archive = np.load(path, allow_pickle=False)
        keys = set(archive.files)
        if "x" in keys:
            x = archive["x"]
        elif {"jpeg", "offsets"} <= keys:
            x = _decode_jpegs(path, archive["jpeg"], archive["offsets"])
        else:
            raise DistillError(f"{path}: no 'x' (uint8 N,H,W,3) or 'jpeg'/'offsets' arrays")
        y = archive["y"] if "y" in keys else np.full(len(x), -1, np.int64)
        names = archive["class_names"] if "class_names" in keys else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DistillError(f"{path}: not a readable .npz ({type(exc).__name__})") from None
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3 or 0 in x.shape:
        raise DistillError(f"{path}: 'x' must be uint8 (N,H,W,3) with N>0, got {x.dtype} {x.shape}")
    if size is None and max(x.shape[1:3]) > MAX_INPUT_SIZE:
        raise DistillError(
            f"{path}: images of {x.shape[1]}x{x.shape[2]} pixels are over the "
            f"limit of {MAX_INPUT_SIZE}; give a smaller image size"
        )
    if y.dtype.kind not in "iu" or y.shape != (len(x),):
        raise DistillError(
            f"{path}: 'y' must be {len(x)} integer labels (-1: unknown), got {y.dtype} {y.shape}"
        )
    if names is not None and (names.dtype.kind != "U" or names.ndim != 1):
        raise DistillError(f"{path}: 'class_names' must be a list of strings")
    images = torch.from_numpy(np.ascontiguousarray(x))
    if size is not None and images.shape[1:3] != (size, size):
        check_size(path, len(images) * size * size * 3, DATA_BYTES_ENV, DATA_BYTES_DEFAULT)
        images = resize_uint8(images, size)
    labels = torch.from_numpy(y.astype(np.int64))
    return ImageSet(images, labels, None if names is None else names.tolist(), str(path))


def _npz_bytes(path: Path) -> int:
    """What the arrays of an npz take once loaded, from their .npy headers: numpy allocates
    each array from its header before it reads (and inflates) the data."""
    total = 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            with archive.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                read = np.lib.format.read_array_header_1_0
                if version != (1, 0):
                    read = np.lib.format.read_array_header_2_0
                shape, _, dtype = read(fh)
            total += math.prod(shape) * dtype.itemsize
    return total


def _decode_jpegs(path: Path, blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The JPEG form, decoded: all images of one size, refused before decoding when one is
    over MAX_IMAGE_PIXELS or all together would be over the data limit."""
    from pool.errors import PoolError
    from pool.images import split_concatenated

    try:
        files = split_concatenated(blob, offsets, str(path))
    except PoolError as exc:
        raise DistillError(str(exc)) from None
    images = []
    with warnings.catch_warnings():  # Pillow warns, then refuses, above its own pixel limits
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for i, data in enumerate(files):
            try:
                image = Image.open(io.BytesIO(data))
                w, h = image.size
            except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                w = h = MAX_IMAGE_PIXELS
            if w * h > MAX_IMAGE_PIXELS:
                raise DistillError(f"{path}: image {i} is over {MAX_IMAGE_PIXELS:,} pixels")
            if not images:
                first = (w, h)
                nbytes = len(files) * w * h * 3
                check_size(path, nbytes, DATA_BYTES_ENV, DATA_BYTES_DEFAULT)
            elif (w, h) != first:
                raise DistillError(f"{path}: image {i} is {w}x{h}, image 0 {first[0]}x{first[1]}")
            images.append(np.asarray(image.convert("RGB")))
    return np.stack(images)


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
