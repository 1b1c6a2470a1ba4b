"""Command-line flags derived from the job spec: `--epochs`, `--batch-size`, `--no-augment`, ...

`trainyard train` adds the TrainingSpec's flags and `trainyard submit` the JobSpec's, so both
follow the spec as it is, with its descriptions as help. Flags only parse text into the
field's JSON type; the bounds are checked where the spec is validated (the trainer, or the
API), so there is one place that says what is allowed. Standard library and the spec only.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def add_spec_flags(
    parser: argparse.ArgumentParser,
    spec: type[BaseModel],
    short: dict[str, str] | None = None,
) -> None:
    """One flag per field of `spec` (and a short form from `short`, e.g. {"gpus": "-g"}).
    Flags not given are left out of the parsed namespace (default SUPPRESS), so the spec's
    own defaults, or a --config file, apply to them."""
    short = short or {}
    for name, info in spec.model_fields.items():
        names = [short[name], flag_name(name)] if name in short else [flag_name(name)]
        help_text = f"{info.description} (default: {_shown(info.default)}{_bounds(info)})"
        help_text = help_text.replace("%", "%%")
        if info.annotation is bool:
            parser.add_argument(
                *names,
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
            continue
        choices = _literal_choices(info.annotation)
        parser.add_argument(
            *names,
            dest=name,
            type=_parser_for(name, info.annotation),
            default=argparse.SUPPRESS,
            metavar="|".join(choices) if choices else name.upper(),
            help=help_text,
        )


def spec_values(namespace: argparse.Namespace, spec: type[BaseModel]) -> dict[str, Any]:
    """The spec fields given as flags, by field name."""
    return {
        name: getattr(namespace, name) for name in spec.model_fields if hasattr(namespace, name)
    }


def _members(annotation: Any) -> list[Any]:
    """The alternatives of a union annotation (Annotated wrappers removed), or itself."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _members(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        return [m for arg in typing.get_args(annotation) for m in _members(arg)]
    return [annotation]


def _literal_choices(annotation: Any) -> list[str]:
    members = _members(annotation)
    if all(typing.get_origin(m) is Literal for m in members):
        return [str(v) for m in members for v in typing.get_args(m)]
    return []


def _parser_for(name: str, annotation: Any) -> Callable[[str], Any]:
    """Text -> the first alternative of the field's type that reads it: a literal word, an
    int, a float, else the text itself (when the field takes strings)."""
    members = [m for m in _members(annotation) if m is not type(None)]

    def parse(text: str) -> Any:
        for member in members:
            if typing.get_origin(member) is Literal and text in map(str, typing.get_args(member)):
                return text
        for member in members:
            try:
                if member is int:
                    return int(text)
                if member is float:
                    return float(text)
            except ValueError:
                continue
            if member is str:
                return text
        raise ValueError(text)

    # argparse names the type in its message: "argument --epochs: invalid int value: 'x'".
    parse.__name__ = "|".join(_type_word(m) for m in members)
    return parse


def _type_word(member: Any) -> str:
    if typing.get_origin(member) is Literal:
        return "|".join(map(str, typing.get_args(member)))
    return getattr(member, "__name__", str(member))


def _shown(value: Any) -> str:
    return "none" if value is None else str(value)


def _bounds(info: FieldInfo) -> str:
    marks = []
    for item in info.metadata:
        for attribute, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            bound = getattr(item, attribute, None)
            if bound is not None:
                marks.append(f"{symbol} {bound}")
    return "; " + ", ".join(marks) if marks else ""
