"""Building blocks of the API models: bounded field types, and rules that are both CEL and Python.

Every rule a manifest must obey is declared once, here or on a model, and used twice: as an
`x-kubernetes-validations` entry in the generated CRD (so the API server enforces it) and as a
Python check in `forgeline validate` (so a user hears the same message offline, before any cluster
is involved). Every string and list is bounded because the API server estimates CEL cost from the
bounds, and unbounded fields make a rule's cost unbounded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, GetJsonSchemaHandler, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError

# DNS-1035 label: what a Service name and a pod hostname must be. Job names become both.
DNS_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# A Kubernetes resource quantity (the apimachinery regex, as controller-gen emits it).
QUANTITY = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# The same without a minus sign: what a pod's requests and limits accept (the API server refuses
# negative resources on a Pod, so a negative one here would make a job that can never start).
NON_NEGATIVE_QUANTITY = QUANTITY.replace(r"^(\+|-)?", r"^\+?", 1)
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
# The schemes the trainer can read and write (forgeline.jobs.storage): the API accepts exactly these,
# so an input the pod cannot open is refused at admission, not after the gang is scheduled.
URI_SCHEMES = ("s3", "file")
URI = rf"^({'|'.join(URI_SCHEMES)})://\S+$"

# Longest job name: `<name>-a<attempt>-<index>` must stay a DNS label (63) for pod hostnames.
MAX_JOB_NAME = 40


def _int_to_str(value: Any) -> Any:
    """Quantities may be written as YAML numbers (`cpu: 4`); Kubernetes accepts int-or-string."""
    if isinstance(value, bool):
        return value
    return str(value) if isinstance(value, int) else value  # int-or-string: a float is neither


JobName = Annotated[str, Field(min_length=1, max_length=MAX_JOB_NAME, pattern=DNS_LABEL)]
ShortText = Annotated[str, Field(min_length=1, max_length=253)]
Label = Annotated[str, Field(min_length=1, max_length=63)]
Uri = Annotated[str, Field(min_length=1, max_length=2048, pattern=URI)]
Endpoint = Annotated[str, Field(min_length=1, max_length=2048, pattern=r"^https?://\S+$")]
EnvName = Annotated[str, Field(min_length=1, max_length=128, pattern=ENV_NAME)]
Quantity = Annotated[
    str,
    BeforeValidator(_int_to_str),
    Field(
        max_length=64,
        pattern=QUANTITY,
        json_schema_extra={
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY,  # pydantic leaves it out of the schema when the type is a union
        },
    ),
]

NonNegativeQuantity = Annotated[
    str,
    BeforeValidator(_int_to_str),
    Field(
        max_length=64,
        pattern=NON_NEGATIVE_QUANTITY,
        json_schema_extra={
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": NON_NEGATIVE_QUANTITY,  # strings; a negative integer is refused by a CEL rule (Resources)
        },
    ),
]


@dataclass(frozen=True)
class Rule:
    """One cross-field rule: `cel` for the API server, `check` for offline validation.

    `field` (camelCase, relative to the model) is where the message points: CEL's fieldPath and
    the offline error's location.
    """

    cel: str
    message: str
    check: Callable[[Any], bool]
    field: str | None = None

    def to_schema(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"rule": self.cel, "message": self.message}
        if self.field:
            entry["fieldPath"] = "." + self.field
        return entry


class ApiModel(BaseModel):
    """Base of every API model: camelCase on the wire, unknown fields rejected, rules checked."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=False,
        strict=True,
        frozen=True,
    )
    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> ApiModel:
        for rule in type(self).rules:
            if not rule.check(self):
                raise PydanticCustomError("forgeline_rule", "{message}", {"message": rule.message, "field": rule.field})
        return self

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        schema = handler(core_schema)
        if cls.rules:
            target = handler.resolve_ref_schema(schema)
            target["x-kubernetes-validations"] = [rule.to_schema() for rule in cls.rules]
        return schema

    def wire(self) -> dict[str, Any]:
        """The model as it appears in a manifest: camelCase, unset optional fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def exactly_one(*names: str) -> Rule:
    """Exactly one of the named optional fields is set."""
    cel = " + ".join(f"(has(self.{n}) ? 1 : 0)" for n in names) + " == 1"
    attrs = [snake_case(n) for n in names]
    return Rule(
        cel=cel,
        message=f"set exactly one of {', '.join(names)}",
        check=lambda m: sum(getattr(m, a) is not None for a in attrs) == 1,
    )


def snake_case(camel: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in camel)
