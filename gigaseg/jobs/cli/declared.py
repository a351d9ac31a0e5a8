"""Click options derived from a dataclass's declared fields (:func:`gigaseg.jobs.options.option`).

The flag, type, choices, default, help and parsing of each option come from
its one declaration; nothing about an option is written here.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any, Literal, Union, get_args, get_origin

import click

from gigaseg.errors import GigasegError, InputError
from gigaseg.jobs.options import Option, declared, flag_of


def declared_options(cls: type, *, skip: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Decorate a click command with an option for every field of ``cls`` the CLI reaches."""

    def decorate(command: Callable) -> Callable:
        for name, kind, default, how in reversed(declared(cls)):
            if how.cli and name not in skip:
                command = click.option(flag_of(cls, name), name, **click_settings(kind, default, how))(command)
        return command

    return decorate


def click_settings(kind: Any, default: Any, how: Option) -> dict[str, Any]:
    """``click.option`` keywords for a field of type ``kind``."""
    text = how.help + (f" [{how.shown}]" if how.shown else "")
    base = _without_none(kind)
    if base is bool:
        return {"is_flag": True, "default": default, "help": text}
    settings: dict[str, Any] = {"default": default, "help": text, "show_default": default is not None}
    if get_origin(base) is Literal:  # checked by the library (check_options): one line, by flag
        values = get_args(base)
        settings["metavar"] = "[" + "|".join(str(v) for v in values) + "]"
        settings["default"] = None if default is None else str(default)
        settings["callback"] = _converter(lambda text: next((v for v in values if str(v) == text), text))
    elif how.parse is not None:
        settings["callback"] = _converter(how.parse)
    elif base is int:  # parsed here, bounds checked by the library (check_options): one line, by flag
        settings["metavar"] = "INTEGER"
        settings["callback"] = _converter(int)
    elif base is float:
        settings["type"] = float
    return settings


def _without_none(kind: Any) -> Any:
    if get_origin(kind) in (Union, types.UnionType):
        rest = [a for a in get_args(kind) if a is not type(None)]
        return rest[0] if len(rest) == 1 else kind
    return kind


def _converter(parse: Callable[[str], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback: text -> value; a bad value raises the library's error (one line, by flag)."""

    def convert(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        try:
            return parse(value) if isinstance(value, str) else value
        except ValueError as e:
            if isinstance(e, GigasegError):
                raise
            name = param.name or "value"
            raise InputError(f"{name} must be a whole number, got {value!r}", parameters=(name,)) from None

    return convert
