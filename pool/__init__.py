"""The one contract between stages: the on-disk pool layout and its manifest.

The names below are imported on first use, so that `pool.cli`, `pool.options` and
`pool.errors` stay light (no numpy, pyarrow or Pillow) for `kd3 --help`.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "AddResult": "pool.store",
    "ClassInfo": "pool.classes",
    "ClassList": "pool.classes",
    "CompactResult": "pool.store",
    "ImageInfo": "pool.images",
    "InvalidImage": "pool.errors",
    "Materialized": "pool.materialize",
    "NewImage": "pool.store",
    "Pool": "pool.store",
    "PoolError": "pool.errors",
    "decode_rgb": "pool.images",
    "inspect_image": "pool.images",
    "materialize": "pool.materialize",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pool' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
