"""The `forgeline` command. Each subcommand imports what it needs only when it runs, so
`forgeline validate` works on a machine with neither torch nor a cluster client."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _crds(args: argparse.Namespace) -> int:
    from forgeline.operator.api.crd import render_crds, write_crds

    directory = Path(args.out)
    if args.check:
        stale = [
            n
            for n, text in render_crds().items()
            if not (directory / n).is_file() or (directory / n).read_text() != text
        ]
        for name in stale:
            print(f"{directory / name}: stale; run `forgeline crds`", file=sys.stderr)
        return 1 if stale else 0
    for path in write_crds(directory):
        print(path)
    return 0


def _validate(args: argparse.Namespace) -> int:
    from forgeline.operator.manifests import iter_documents
    from forgeline.operator.validate import validate_documents

    jobs, problems = validate_documents(iter_documents([Path(p) for p in args.files]))
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} error(s) in {len(args.files)} file(s)", file=sys.stderr)
        return 1
    print(f"ok: {len(jobs)} job(s) valid")
    return 0


def _run(args: argparse.Namespace) -> int:
    from forgeline.operator.local.runner import run_pipeline_file

    return run_pipeline_file(
        Path(args.pipeline), store=args.store, workdir=Path(args.workdir), max_procs=args.max_procs
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forgeline", description="Multi-stage LLM training on Kubernetes.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("crds", help="write the CustomResourceDefinitions generated from the API models")
    p.add_argument("--out", default="crds", help="directory (default: crds)")
    p.add_argument("--check", action="store_true", help="exit 1 if the files differ from the models")
    p.set_defaults(func=_crds)

    p = sub.add_parser("validate", help="check manifests offline; print every error with its field path")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=_validate)

    p = sub.add_parser("run", help="run a pipeline file locally, each stage under torchrun")
    p.add_argument("pipeline")
    p.add_argument("--store", default=None, help="artifact store URI (default: file://<workdir>/store)")
    p.add_argument("--workdir", default=".forgeline", help="logs, reports and the default store")
    p.add_argument("--max-procs", type=int, default=None, help="cap processes per stage (default: CPU cores)")
    p.set_defaults(func=_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
