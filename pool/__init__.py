"""The one contract between stages: the on-disk pool layout and its manifest."""

from pool.classes import ClassInfo, ClassList
from pool.errors import InvalidImage, PoolError
from pool.images import ImageInfo, decode_rgb, inspect_image
from pool.materialize import Materialized, materialize
from pool.store import AddResult, NewImage, Pool

__all__ = [
    "AddResult",
    "ClassInfo",
    "ClassList",
    "ImageInfo",
    "InvalidImage",
    "Materialized",
    "NewImage",
    "Pool",
    "PoolError",
    "decode_rgb",
    "inspect_image",
    "materialize",
]
