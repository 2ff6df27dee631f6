"""Exit codes and the errors a user can cause: the pod-to-operator language.

2 and 3 are permanent (the operator does not retry them); any other non-zero code is retryable.
Kept apart from the schema so the storage layer and the launcher can raise and map them without
importing the config dataclasses.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_BAD_CONFIG = 2
EXIT_MISSING_INPUT = 3
# The codes the operator and the local runner never retry, with the condition reason each maps to.
PERMANENT_EXIT_REASONS = {EXIT_BAD_CONFIG: "InvalidConfig", EXIT_MISSING_INPUT: "MissingInput"}
PERMANENT_EXIT_CODES = tuple(PERMANENT_EXIT_REASONS)


class ContractError(Exception):
    """An error the user caused; `exit_code` is permanent, so the operator will not retry it."""

    exit_code = 1


class ConfigError(ContractError):
    """The config is malformed; the message names the field path (exit 2)."""

    exit_code = EXIT_BAD_CONFIG

    def __init__(self, field_path: str, problem: str) -> None:
        self.field_path = field_path
        super().__init__(f"bad config: field '{field_path}': {problem}")


class InputError(ContractError):
    """An input artifact is missing or incomplete; the message names the URI (exit 3)."""

    exit_code = EXIT_MISSING_INPUT

    def __init__(self, uri: str, problem: str) -> None:
        self.uri = uri
        super().__init__(f"input {uri}: {problem}")
