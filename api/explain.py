"""Pydantic's errors rewritten for someone editing YAML: the field path, what was wrong, what to do.

Pydantic's messages are written for programmers ("Input should be a valid string"). Each error
here names the field as the manifest spells it (camelCase, `[i]` for list items), the value found,
and the fix: the nearest known field for a typo, camelCase for a Python name, quotes for a YAML 1.1
boolean or octal where text was meant, the look-alike character in a name that only seems ASCII.
"""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic.alias_generators import to_camel

from forgeline.api.fields import DNS_LABEL, ENV_NAME, NON_NEGATIVE_QUANTITY, QUANTITY, URI
from forgeline.api.podspec import DATA_KEY, LABEL_VALUE, OBJECT_NAME, QUALIFIED_NAME

_PATTERN_HINTS = {
    DNS_LABEL: "must be a DNS label: lowercase letters, digits and '-', starting with a letter "
    "and ending with a letter or digit",
    QUANTITY: "must be a Kubernetes quantity such as 4, 500m, 16Gi",
    NON_NEGATIVE_QUANTITY: "must be a non-negative Kubernetes quantity such as 4, 500m, 16Gi",
    URI: "must be a URI with a scheme the trainer reads: s3://bucket/prefix or file:///path",
    ENV_NAME: "must be a valid environment variable name (letters, digits, '_', '-', '.'; not starting with a digit)",
    r"^https?://\S+$": "must be an http:// or https:// URL",
    QUALIFIED_NAME: "must be a qualified name: an optional DNS prefix and '/', then at most 63 letters, digits, "
    "'-', '_' or '.', starting and ending with a letter or digit (e.g. example.com/pool)",
    LABEL_VALUE: "must be a label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a "
    "letter or digit (or empty)",
    OBJECT_NAME: "must be a plain object name (lowercase letters, digits, '-' and '.'; no '/': a Secret or "
    "ConfigMap is always the one in this job's namespace)",
    DATA_KEY: "must be a key of a Secret or ConfigMap (letters, digits, '-', '_' and '.')",
    r"^\S+$": "must not contain whitespace",
}


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


Implicit = Mapping[tuple[str | int, ...], str]  # source text of scalars YAML typed, by field path


def show_invisible(text: str) -> str:
    """Invisible characters (zero-width spaces, control characters) written as escapes."""
    return "".join(
        f"\\u{ord(c):04x}" if unicodedata.category(c) in ("Cf", "Cc", "Zl", "Zp") or (c.isspace() and c != " ") else c
        for c in text
    )


def field_path(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + show_invisible(str(part))
    return out


def odd_characters(text: str) -> str:
    """'' for plain ASCII; else which characters are not what they seem, and where."""
    odd = [(i, c) for i, c in enumerate(text) if not (c.isascii() and c.isprintable())]
    if not odd:
        return ""
    shown = ", ".join(
        f"U+{ord(c):04X} {unicodedata.name(c, 'unnamed character')} at position {i + 1}" for i, c in odd[:3]
    )
    return f"; it contains {shown}, which is not the ASCII character it may look like: retype it"


def quote_hint(source: str | None, value: Any) -> str:
    """Why a plain YAML scalar is not a string, and the fix (kubectl reads YAML 1.1 booleans and octals)."""
    if source is None or isinstance(value, str):
        return ""
    if isinstance(value, bool):
        return f"; YAML reads {source} as {str(value).lower()}: quote it ('{source}') if you mean the text"
    return f"; YAML reads {source} as a number: quote it ('{source}') if you mean the text"


def describe_value(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return str(value).lower()
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fields_of(model: Any, loc: tuple[Any, ...]) -> list[str]:
    """The field names accepted at `loc` of a job model, for 'did you mean'."""
    from pydantic import BaseModel

    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = next((f for n, f in current.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return []
        current = field.annotation
        for arg in getattr(current, "__args__", ()) or ():
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                current = arg
                break
        origin_args = getattr(current, "__args__", None)
        if origin_args and getattr(current, "__origin__", None) is list:
            current = origin_args[0]
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or n for n, f in current.model_fields.items()]
    return []


def _unknown_field(loc: tuple[Any, ...], model: type[Any]) -> str:
    name = str(loc[-1])
    known = _fields_of(model, loc[:-1])
    odd = odd_characters(name)
    if to_camel(name) in known and to_camel(name) != name:
        return f"unknown field; fields are camelCase: write {to_camel(name)}"
    clean = "".join(c for c in name if c.isascii() and c.isprintable())
    close = difflib.get_close_matches(clean if odd else name, known, n=1)
    hint = f"did you mean {close[0]}?" if close else f"remove it (known fields: {', '.join(known)})"
    return f"unknown field; {hint}{odd}"


def explain(error: dict[str, Any], model: type[Any], implicit: Implicit | None = None) -> FieldError:
    """One pydantic error -> a message a YAML author can act on."""
    loc = tuple(error["loc"])
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    path = field_path(loc)
    quote = quote_hint((implicit or {}).get(loc), value) if kind in ("string_type", "literal_error") else ""
    if kind == "forgeline_rule":
        field = ctx.get("field")
        return FieldError(field_path((*loc, *field.split("."))) if field else path, ctx["message"])
    if kind == "missing":
        return FieldError(path, "required field is missing; add it")
    if kind == "extra_forbidden":
        return FieldError(path, _unknown_field(loc, model))
    if kind == "string_pattern_mismatch":
        hint = _PATTERN_HINTS.get(ctx.get("pattern", ""), f"must match {ctx.get('pattern')}")
        return FieldError(path, f"{hint} (got {describe_value(value)}){odd_characters(str(value))}")
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bound = next(iter(ctx.values()))
        word = {
            "greater_than_equal": "at least",
            "greater_than": "greater than",
            "less_than_equal": "at most",
            "less_than": "less than",
        }[kind]
        return FieldError(path, f"must be {word} {bound} (got {describe_value(value)})")
    if kind == "string_too_long":
        return FieldError(path, f"is too long ({len(str(value))} characters; at most {ctx['max_length']})")
    if kind == "string_too_short":
        return FieldError(path, "must not be empty")
    if kind == "too_long":
        return FieldError(path, f"has too many entries ({ctx.get('actual_length')}; at most {ctx['max_length']})")
    if kind == "too_short":
        return FieldError(path, f"needs at least {ctx['min_length']} entr{'y' if ctx['min_length'] == 1 else 'ies'}")
    if kind == "literal_error":
        return FieldError(path, f"must be one of {ctx['expected']} (got {describe_value(value)}){quote}")
    type_words = {
        "int_type": "an integer",
        "int_from_float": "an integer",
        "float_type": "a number",
        "bool_type": "true or false",
        "string_type": "a string",
        "model_type": "a mapping of fields",
        "model_attributes_type": "a mapping of fields",
        "dict_type": "a mapping",
        "list_type": "a list",
    }
    if kind in type_words:
        return FieldError(path, f"must be {type_words[kind]} (got {describe_value(value)}){quote}")
    return FieldError(path, error["msg"])


__all__ = [
    "FieldError",
    "Implicit",
    "describe_value",
    "explain",
    "field_path",
    "odd_characters",
    "quote_hint",
    "show_invisible",
]
