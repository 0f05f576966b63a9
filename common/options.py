"""Command-line flags generated from a stage's options model (pydantic), so that a default, a
bound or a help text is written once: in the model. `kd3 <stage>`, `kd3 submit <stage>`, the
YAML config and the worker all read the same model.

Per field, `json_schema_extra` may set:
    flag      the flag's name (default: --field-name)
    aliases   more names, e.g. ["-s"]
    metavar   shown in help
    repeat    True: a list is given by repeating the flag (--seed URL --seed URL) instead of
              comma-separated values (--sources a,b)
    cli       False: not a flag (set in the YAML config or the job spec only)
    default_help  what the default means when it is None ("the method's recipe")

Flags not given on the command line are left out of the values, so the model's defaults apply;
every value is checked by the model (pydantic converts the text), and a bad one is one line
naming the flag.

A small generator rather than a library (pydantic-settings' CLI, typer): those parse the whole
command line on their own terms and would make every `kd3` subcommand depend on them, where
kd3's commands also take positional arguments, paths and run-time flags that are not options.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from common.errors import UserError


class OptionsError(UserError):
    """A flag or config value the options model refuses; one line naming each."""


def _unwrap(annotation) -> tuple[Any, bool]:
    """(the annotation without `| None`, whether None is allowed)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True  # noqa: UP007
    return annotation, False


def _pair(text: str, form: str = "NAME=VALUE") -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected {form}, got {text!r}")
    return name.strip(), value.strip()


def _json_pair(text: str) -> tuple[str, Any]:
    name, value = _pair(text)
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value  # plain text


def words_pair(text: str, form: str = "NAME=VALUE") -> tuple[str, list[str]]:
    """NAME=W1;W2 (or W1,W2) as (NAME, [W1, W2]); an argparse type."""
    name, value = _pair(text, form)
    return name, csv_list(value.replace(";", ","))


def csv_list(text: str) -> list[str]:
    """A,B,C as [A, B, C], blanks dropped; an argparse type."""
    return [part.strip() for part in text.split(",") if part.strip()]


def _show(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "none"
    if isinstance(value, dict):
        return "none" if not value else ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def flag_name(name: str, field) -> str:
    return (field.json_schema_extra or {}).get("flag") or "--" + name.replace("_", "-")


def add_flags(parser, model: type[BaseModel], *, exclude: tuple[str, ...] = (), title=None):
    """Add one flag per field of `model` (a group titled `title` when given)."""
    target = parser.add_argument_group(title) if title else parser
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra or {}
        if name in exclude or extra.get("cli") is False:
            continue
        kind, optional = _unwrap(field.annotation)
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        help_text = field.description or ""
        if field.is_required():
            default_text = None
        elif field.default is None:
            default_text = extra.get("default_help")
        else:
            default_text = _show(field.default)
        if default_text:
            help_text += f" (default: {default_text})"
        kwargs: dict[str, Any] = {"dest": name, "help": help_text.replace("%", "%%")}
        if "metavar" in extra:
            kwargs["metavar"] = extra["metavar"]
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is Literal:
            kwargs["choices"] = list(args)
        elif origin is dict:
            value_kind = args[1] if args else Any
            kwargs["action"] = "append"
            kwargs["type"] = (
                _pair
                if value_kind is str
                else words_pair
                if value_kind == list[str]
                else _json_pair
            )
            kwargs.setdefault("metavar", "NAME=VALUE")
        elif origin in (list, tuple):
            if extra.get("repeat"):
                kwargs["action"] = "append"
            else:
                kwargs["type"] = csv_list
                kwargs.setdefault("metavar", "A,B")
        elif kind in (int, float):
            kwargs.setdefault("metavar", "N" if kind is int else "X")
        # Scalars stay text: the model converts and checks them, with the flag named on error.
        if field.is_required() and not optional:
            kwargs["required"] = True
        else:
            kwargs["default"] = argparse.SUPPRESS
        target.add_argument(flag_name(name, field), *extra.get("aliases", []), **kwargs)


def given(model: type[BaseModel], args: argparse.Namespace) -> dict[str, Any]:
    """The values of `model`'s flags that were given on the command line."""
    values = {}
    for name in model.model_fields:
        if name in vars(args):
            value = getattr(args, name)
            if isinstance(value, list) and value and isinstance(value[0], tuple):
                value = dict(value)  # repeated NAME=VALUE pairs
            values[name] = value
    return values


def parse(model: type[BaseModel], values: dict[str, Any], where: str, flags: bool = True):
    """`model` validated from `values`; every problem on one line, named as a flag (`flags`) or
    as a config field, prefixed by `where`."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise OptionsError(f"{where}: {describe(exc, model if flags else None)}") from None


def from_args(model: type[BaseModel], args: argparse.Namespace, where: str, **more):
    """`model` from the flags given (plus `more`), refused on one line naming the bad flags."""
    return parse(model, {**given(model, args), **more}, where)


def describe(exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    """A pydantic error as one line: `field: problem; field: problem` (flag names for a model)."""
    problems = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        if model is not None and loc and loc[0] in model.model_fields:
            loc[0] = flag_name(loc[0], model.model_fields[loc[0]])
        problems.append(f"{'.'.join(loc) or 'value'}: {err['msg']}")
    return "; ".join(problems)
