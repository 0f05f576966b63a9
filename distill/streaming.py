"""Decoded pools larger than memory: batches read from the pool's image cache on disk.

`DiskImages` is the materialised cache (pool.materialize: one (N, H, W, 3) uint8 .npy) opened
for reading rows, not loaded. A batch's rows are read with `os.preadv` straight into the batch
array: the kernel's page cache keeps what fits in RAM, and the process itself holds only the
batches in flight, so its RSS is bounded by the prefetch depth, not by the pool (a memory map
would count every page it touched). Augmentation stays batched on the training device, as for
pools in memory (distill.data.Normalizer), so reading is the only work done per batch here.

Batches reach the trainer through a torchdata.nodes pipeline: reader threads (preadv and the
numpy copies release the GIL), pinned host buffers when the device is a GPU, and a prefetch
queue, so the next batches are read while the device trains on this one. Chosen over
- torch's DataLoader with worker processes: every batch would cross process boundaries through
  shared memory (one more copy of each batch), and Celery's pool processes are daemons, which
  may not start worker processes;
- WebDataset shards: they hold encoded images (a JPEG decode per image per epoch, the CPU work
  materialising once avoids) read in sequence with approximate shuffling;
- NVIDIA DALI: GPU hosts only, and its gain is GPU-side decoding, which a decoded cache skips.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torchdata.nodes as tn

from distill.errors import DistillError

# preadv threads per loader: one per core, at most 16 (reads wait on the disk, not the CPU)
READ_THREADS = max(2, min(16, os.cpu_count() or 1))
PREFETCH_BATCHES = 4  # batches read ahead of the one being trained on
IOV_MAX = 1024  # buffers per preadv call (Linux's limit)


class DiskImages:
    """A read-only uint8 (N, H, W, 3) .npy file, read by rows on demand.

    It stands in for an in-memory image tensor wherever the trainer uses one: `len`, `shape`,
    indexing with indices or a slice (a uint8 tensor of those rows), `split(n)` (consecutive
    batches, prefetched) and `to(device)` (itself: the images stay on disk; batches move).
    """

    def __init__(self, path: str | Path, rows: np.ndarray | None = None):
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            try:
                version = np.lib.format.read_magic(fh)
                read_header = {
                    (1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0,
                }.get(version)
                if read_header is None:
                    raise ValueError(f".npy format version {version}")
                shape, fortran, dtype = read_header(fh)
            except ValueError as exc:
                raise DistillError(f"{self.path}: not an image cache ({exc})") from None
            self.offset = fh.tell()
        if dtype != np.uint8 or fortran or len(shape) != 4 or shape[-1] != 3:
            raise DistillError(f"{self.path}: not a uint8 (N, H, W, 3) image cache")
        self.row_shape = tuple(shape[1:])
        self.row_bytes = int(np.prod(self.row_shape))
        if os.path.getsize(self.path) < self.offset + shape[0] * self.row_bytes:
            raise DistillError(f"{self.path}: truncated image cache")
        self.rows = np.arange(shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
        self._fd = os.open(self.path, os.O_RDONLY)  # shared by the reader threads (preadv)

    # -- what the trainer sees of an image tensor -----------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.row_shape)

    @property
    def nbytes(self) -> int:
        return len(self) * self.row_bytes

    device = torch.device("cpu")

    def to(self, device) -> DiskImages:
        return self

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, slice):
            index = np.arange(len(self))[index]
        return torch.from_numpy(self.read(index))

    def take(self, index) -> DiskImages:
        """The images at `index` (indices or a boolean mask), still on disk. It reads the file
        this one opened, even if that was since replaced or removed (another job on the same
        pool rebuilding its cache)."""
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        part = object.__new__(DiskImages)  # not copy.copy: that would reopen by path
        part.__dict__.update(self.__dict__)
        part.rows = self.rows[index.cpu().numpy()]
        part._fd = os.dup(self._fd)
        return part

    def split(self, size: int) -> Iterator[torch.Tensor]:
        """Consecutive batches of `size` images, read ahead in the background."""
        starts = range(0, len(self), size)
        return self.batches(torch.arange(s, min(s + size, len(self))) for s in starts)

    def batches(
        self, indices: Iterable[torch.Tensor], pin_memory: bool = False
    ) -> Iterator[torch.Tensor]:
        """The images of each index tensor of `indices`, in order, read by background threads
        (PREFETCH_BATCHES ahead); in pinned memory when `pin_memory` (for a GPU)."""
        node = tn.IterableWrapper(indices)
        node = tn.ParallelMapper(node, self.__getitem__, num_workers=READ_THREADS, in_order=True)
        if pin_memory:
            node = tn.PinMemory(node)
        return iter(tn.Loader(tn.Prefetcher(node, prefetch_factor=PREFETCH_BATCHES)))

    # -- reading ---------------------------------------------------------------------------------
    def read(self, index) -> np.ndarray:
        """The rows at `index` as a new (len(index), H, W, 3) array. Reads go in file order
        (one preadv per run of consecutive rows) straight into their places in the batch."""
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        if len(index) and (index.min() < -len(self) or index.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} images")
        out = np.empty((len(index), *self.row_shape), np.uint8)
        if not len(index):
            return out
        rows = self.rows[index]
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        # Runs of consecutive rows: one read each (IOV_MAX buffers at most).
        breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
        flat = out.reshape(len(index), -1)
        for run in np.split(np.arange(len(index)), breaks):
            for part in np.array_split(run, -(-len(run) // IOV_MAX)):
                buffers = [flat[order[j]] for j in part]
                offset = self.offset + int(sorted_rows[part[0]]) * self.row_bytes
                got = os.preadv(self._fd, buffers, offset)
                if got != len(part) * self.row_bytes:
                    raise DistillError(f"{self.path}: short read (the cache changed on disk?)")
        return out

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def __getstate__(self):  # a descriptor does not travel to another process: reopened there
        return {k: v for k, v in self.__dict__.items() if k != "_fd"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._fd = os.open(self.path, os.O_RDONLY)
