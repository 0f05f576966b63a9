"""The class contract between a model and the data it meets, checked before any work.

A teacher's outputs are its classes, in order; a pool's labels index its classes.json, an
evaluation set's its class_names. They agree when every class of the data is one of the
model's, by name: the same names in any order, or fewer (a pool of 2 of a 10-class teacher's
classes), and the data's labels are then remapped to the model's indices (one line says so).
`class_map` (--class-map POOL_NAME=TEACHER_NAME) renames data classes first, for classes named
differently. Anything else is refused with one line naming both lists. Counts are compared
only where one side has no names: a dataset without names must index the model's classes
directly, a named dataset must have exactly the (unnamed) model's number of classes, and two
named datasets (pool, evaluation set) of an unnamed model must have the same names in the
same order.

No torch here: only names and counts.
"""

from __future__ import annotations

from dataclasses import dataclass

from distill.errors import DistillError

MAP_HINT = "give --class-map NAME=TEACHER_NAME (class_map in a config) for classes named otherwise"


@dataclass(frozen=True)
class ClassInfo:
    """What one side knows about its classes."""

    what: str  # "teacher", "pool pools/pets", "evaluation set test.npz"
    names: list[str] | None
    count: int  # len(names); a model's outputs; a nameless dataset's largest label + 1


@dataclass(frozen=True)
class Mapping:
    index: list[int] | None  # data class i is model class index[i]; None: the same indices
    note: str | None = None  # one line saying how the labels were remapped


def shown(names: list[str], limit: int = 8) -> str:
    """`[a, b, c]`, or the first `limit` names and how many there are in all."""
    if len(names) <= limit:
        return "[" + ", ".join(names) + "]"
    return "[" + ", ".join(names[:limit]) + f", ... {len(names)} in all]"


def match_classes(
    model: ClassInfo,
    datasets: list[ClassInfo],
    class_map: dict[str, str] | None = None,
    hint: str | None = MAP_HINT,
) -> list[Mapping]:
    """How each dataset's labels map onto the model's classes, or DistillError (one line,
    ending in `hint` when names differ)."""
    class_map = dict(class_map or {})
    _check_map(model, datasets, class_map)
    mappings = [_match(model, data, class_map, hint) for data in datasets]
    if model.names is None:
        named = [d for d in datasets if d.names is not None]
        for a, b in zip(named, named[1:], strict=False):
            if a.names != b.names:
                raise DistillError(
                    f"{b.what} classes {shown(b.names)} are not {a.what}'s {shown(a.names)} "
                    f"(the {model.what} has no class names, so both must index its "
                    f"{model.count} outputs the same way)"
                )
    return mappings


def _check_map(model: ClassInfo, datasets: list[ClassInfo], class_map: dict[str, str]) -> None:
    if not class_map:
        return
    if model.names is None:
        raise DistillError(
            f"--class-map needs class names for the {model.what}, and it has none "
            "(a bare state_dict: give them with --class-names)"
        )
    data_names = {n for d in datasets for n in d.names or ()}
    unknown = [name for name in class_map if name not in data_names]
    if unknown:
        raise DistillError(
            f"--class-map renames {shown(unknown)}, which are no classes of "
            + " or ".join(f"{d.what} {shown(d.names or [])}" for d in datasets)
        )
    targets = [target for target in class_map.values() if target not in model.names]
    if targets:
        raise DistillError(
            f"--class-map maps to {shown(targets)}, which are not the {model.what}'s classes "
            f"{shown(model.names)}"
        )


def _match(model: ClassInfo, data: ClassInfo, class_map: dict[str, str], hint) -> Mapping:
    if data.names is None:
        if data.count > model.count:
            names = f" {shown(model.names)}" if model.names else ""
            raise DistillError(
                f"{data.what} labels run to {data.count - 1}, beyond the {model.what}'s "
                f"{model.count} classes{names}"
            )
        return Mapping(None)
    renamed = [class_map.get(name, name) for name in data.names]
    if model.names is None:
        if len(renamed) != model.count:
            raise DistillError(
                f"{data.what} has {len(renamed)} classes {shown(renamed)}, the {model.what} "
                f"{model.count} (and no class names to match them by)"
            )
        return Mapping(None)
    missing = [name for name in renamed if name not in model.names]
    if missing:
        which = f" ({shown(missing)} not among them)" if len(missing) < len(renamed) else ""
        raise DistillError(
            f"{data.what} classes {shown(renamed)} are not the {model.what}'s "
            f"{shown(model.names)}{which}" + (f"; {hint}" if hint else "")
        )
    index = [model.names.index(name) for name in renamed]
    same = index == list(range(model.count))
    if same and renamed == data.names:
        return Mapping(None)
    how = "by name" if renamed == data.names else f"as {shown(renamed)}"
    return Mapping(
        None if same else index,
        f"{data.what}: its classes {shown(data.names)} are mapped {how} onto the "
        f"{model.what}'s {shown(model.names)}",
    )
