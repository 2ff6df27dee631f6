"""`python -m forgeline.jobs.launch [torchrun flags] -m forgeline.jobs.<stage> --config FILE`.

A drop-in for `torchrun` that keeps the contract's exit codes. torchrun itself exits 1 whenever a
worker fails, whatever the worker's code, so a bad config (2) or a missing input (3) would look
retryable to the operator and burn the retry budget. This wrapper runs torchrun's own launcher
in-process (same flags, same PET_* environment variables) and exits with the code of the first
failed worker when that code is a permanent one.

It also checks the config before importing torch or starting any worker: a malformed config then
fails in well under a second instead of after every rank has loaded torch. The same goes for the
data: the first records are read and checked for the fields the stage needs (records.preflight),
so a wrong field name exits 2 with the termination message written, before any worker races it.
"""

from __future__ import annotations

import sys

from forgeline.jobs.contract import (
    EXIT_BAD_CONFIG,
    EXIT_MISSING_INPUT,
    ConfigError,
    ContractError,
    error_summary,
    load_config,
    peek_termination_path,
    write_termination_message,
)

PERMANENT = (EXIT_BAD_CONFIG, EXIT_MISSING_INPUT)
STAGE_MODULE = "forgeline.jobs."


def exit_code_for(worker_codes: list[int]) -> int:
    """Permanent codes win (every rank sees the same config and inputs); else retryable 1."""
    for code in worker_codes:
        if code in PERMANENT:
            return code
    return 1 if any(worker_codes) else 0


def _option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def precheck(argv: list[str]) -> int | None:
    """Exit code 2 for a config the stage would reject anyway; None to go on and launch."""
    config = _option(argv, "--config")
    if config is None:
        return None
    try:
        cfg = load_config(config)
        module = _option(argv, "-m") or ""
        if module.startswith(STAGE_MODULE) and module[len(STAGE_MODULE) :] != cfg.stage:
            raise ConfigError("stage", f"is {cfg.stage!r} but the command runs {module}")
        if cfg.data.uri is not None:
            from forgeline.jobs.records import preflight_data
            from forgeline.jobs.storage import Storage

            algorithm = cfg.rlhf.algorithm if cfg.rlhf is not None else None
            preflight_data(cfg.data, cfg.stage, algorithm, Storage(cfg.storage.endpoint))
    except ContractError as exc:
        print(f"forgeline: not starting workers (exit {exc.exit_code}): {exc}", file=sys.stderr, flush=True)
        write_termination_message(error_summary(exc, exc.exit_code), peek_termination_path(config))
        return exc.exit_code
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    code = precheck(argv)
    if code is not None:
        return code
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(argv))
    except ChildFailedError as exc:
        return exit_code_for([f.exitcode for f in exc.failures.values()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
