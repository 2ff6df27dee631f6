"""YAML scalars and keys as kubectl reads them: go-yaml v2's resolution, then the JSON round trip.

kubectl parses YAML with go-yaml v2, converts it to JSON and sends that. So a plain scalar is a
YAML 1.1 boolean (`y`, `yes`, `on`, `NO`, ...), an integer by Go's base-0 rules (`0755` is octal,
`0x1F` hex, `1_000` a thousand) or a float by YAML 1.2's pattern (`3e-4`), and anything else is
text: no sexagesimals (`1:30`), no timestamps, no `=`. After the JSON round trip, an integral
number is an integer (`2.0` is 2) and every mapping key is a string (`1:` is the field "1").
PyYAML's own YAML 1.1 rules differ on each point, which is why manifests.py does not use them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.resolver import BaseResolver

NUMBER_TAG = "tag:forgeline.io,2026:number"  # a plain scalar that go-yaml may read as a number
_INT64 = (-(2**63), 2**63 - 1)
_YAML_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")  # go-yaml's yamlStyleFloat
_GO_INT = re.compile(r"^([-+]?)(0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0[0-7]*|[1-9][0-9]*)$")
_SPECIAL_FLOATS = {
    **dict.fromkeys([".nan", ".NaN", ".NAN"], math.nan),
    **dict.fromkeys([".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"], math.inf),
    **dict.fromkeys(["-.inf", "-.Inf", "-.INF"], -math.inf),
}


def _go_int(plain: str) -> int | None:
    """strconv.ParseInt(plain, 0, 64), then ParseUint: None where Go's both fail."""
    match = _GO_INT.match(plain)
    if match is None:
        return None
    sign, digits = match.groups()
    prefix = digits[:2].lower()
    base = {"0x": 16, "0o": 8, "0b": 2}.get(prefix)
    if base is None:
        base, body = (8, digits) if digits.startswith("0") else (10, digits)
    else:
        body = digits[2:]
    value = int(body, base) * (-1 if sign == "-" else 1)
    if _INT64[0] <= value <= _INT64[1] or (not sign and value < 2**64):
        return value
    return None


def _as_json_number(value: float) -> int | float:
    """What the API server decodes from the JSON kubectl sends: integral numbers are integers."""
    if math.isfinite(value) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    return value


def go_yaml_scalar(text: str) -> Any:
    """A plain scalar starting with a digit, a sign or '.', resolved as go-yaml v2 resolves it."""
    if text in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[text]
    if text.startswith("."):
        return _as_json_number(float(text)) if _YAML_FLOAT.match(text) else text
    plain = text.replace("_", "")
    as_int = _go_int(plain)
    if as_int is not None:
        return as_int
    if _YAML_FLOAT.match(plain):
        number = float(plain)
        if math.isfinite(number):  # Go's ParseFloat fails on overflow; the text stays a string
            return _as_json_number(number)
    return text


class GoYamlResolver(BaseResolver):
    pass


GoYamlResolver.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$"),
    list("yYnNtTfFoO"),
)
GoYamlResolver.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)
GoYamlResolver.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])
GoYamlResolver.add_implicit_resolver(NUMBER_TAG, re.compile(r"^[-+.0-9]"), list("-+0123456789."))


class GoYamlConstructor(SafeConstructor):
    _BOOLS = {"y": True, "yes": True, "true": True, "on": True, "n": False, "no": False, "false": False, "off": False}

    def construct_yaml_bool(self, node: Any) -> bool:
        return self._BOOLS[self.construct_scalar(node).lower()]

    def construct_number(self, node: Any) -> Any:
        return go_yaml_scalar(self.construct_scalar(node))

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        # kubectl's YAML-to-JSON step turns every key into a string: `1:` is the field "1" (and
        # `true:` the field "true", not a second key 1, as Python's True == 1 would make it).
        self.flatten_mapping(node)
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    "found a key that is not a scalar",
                    key_node.start_mark,
                )
            mapping[_json_key(key)] = self.construct_object(value_node, deep=deep)
        return mapping


def _json_key(key: Any) -> Any:
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, int | float):
        return str(key)
    return key


GoYamlConstructor.add_constructor("tag:yaml.org,2002:bool", GoYamlConstructor.construct_yaml_bool)  # type: ignore[type-var]
GoYamlConstructor.add_constructor(NUMBER_TAG, GoYamlConstructor.construct_number)  # type: ignore[type-var]
