"""Command-line flags derived from the job spec: `--epochs`, `--batch-size`, `--augment`, ...

`trainyard train` adds the TrainingSpec's flags and `trainyard submit` the JobSpec's, so both
follow the spec as it is, with its descriptions, defaults and allowed values (as the README
states them: app/core/spec_doc.py) as help. Flags only parse text into the field's JSON
type; the bounds are checked where the spec is validated (the trainer, or the API), so there
is one place that says what is allowed.
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel

from app.core.spec_doc import allowed, members, shown_value


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
        default, accepted = shown_value(info.default), allowed(info)
        help_text = f"{info.description} (default: {default}; allowed: {accepted})"
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
    """The alternatives of a field's type a flag may take (the local .npz path included)."""
    return [member for member, _ in members(annotation, hidden=True) if member is not None]


def _literal_choices(annotation: Any) -> list[str]:
    members = _members(annotation)
    if all(typing.get_origin(m) is Literal for m in members):
        return [str(v) for m in members for v in typing.get_args(m)]
    return []


def _parser_for(name: str, annotation: Any) -> Callable[[str], Any]:
    """Text -> the first alternative of the field's type that reads it: a literal word, an
    int, a float, else the text itself (when the field takes strings)."""
    alternatives = _members(annotation)

    def parse(text: str) -> Any:
        for member in alternatives:
            if typing.get_origin(member) is Literal and text in map(str, typing.get_args(member)):
                return text
        for member in alternatives:
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
    parse.__name__ = "|".join(_type_word(m) for m in alternatives)
    return parse


def _type_word(member: Any) -> str:
    if typing.get_origin(member) is Literal:
        return "|".join(map(str, typing.get_args(member)))
    return getattr(member, "__name__", str(member))
