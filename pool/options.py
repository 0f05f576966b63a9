"""What `kd3 pool import` is asked to do: the one place its defaults are written.

Light imports only (stdlib, pydantic): `kd3 --help` reads it.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class ImportOptions(BaseModel, extra="forbid"):
    classes: list[str] | None = Field(
        None,
        description="class names in the teacher's output order",
        json_schema_extra={"default_help": "the sub-folders, or the npz's class_names"},
    )
    skip_invalid: bool = Field(
        False,
        description="leave out files that are not acceptable images (and list them) instead of "
        "refusing the whole import",
    )
    follow_symlinks: bool = Field(
        False,
        description="import symbolic links that point outside the imported folder",
    )
