"""The `forgeline` command. Each subcommand imports what it needs only when it runs, so
`forgeline validate` works on a machine with neither torch nor a cluster client."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, cast


def _crds(args: argparse.Namespace) -> int:
    from forgeline.api.crd import render_crds, write_crds

    directories = [Path(args.out)]
    chart_copy = Path(args.chart_out) if args.chart_out else None
    if chart_copy is not None and (chart_copy.parents[1] / "Chart.yaml").is_file():
        # The chart templates these copies (behind crds.install); Helm never upgrades files in crds/.
        directories.append(chart_copy)
    if args.check:
        stale = [
            directory / n
            for directory in directories
            for n, text in render_crds().items()
            if not (directory / n).is_file() or (directory / n).read_text() != text
        ]
        for path in stale:
            print(f"{path}: stale; run `forgeline crds`", file=sys.stderr)
        return 1 if stale else 0
    for directory in directories:
        for path in write_crds(directory):
            print(path)
    return 0


def _validate(args: argparse.Namespace) -> int:
    from forgeline.api.manifests import iter_documents
    from forgeline.api.validate import validate_documents

    jobs, problems = validate_documents(iter_documents([Path(p) for p in args.files]))
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} error(s) in {len(args.files)} file(s)", file=sys.stderr)
        return 1
    print(f"ok: {len(jobs)} job(s) valid")
    return 0


def _run(args: argparse.Namespace) -> int:
    from forgeline.local.runner import run_pipeline_file

    return run_pipeline_file(
        Path(args.pipeline), store=args.store, workdir=Path(args.workdir), max_procs=args.max_procs
    )


def _status(args: argparse.Namespace) -> int:
    from kubernetes import client, config

    from forgeline.api.kinds import GROUP, KINDS, VERSION
    from forgeline.cli.status import render_tree

    try:
        config.load_kube_config(config_file=args.kubeconfig)
    except config.ConfigException as exc:
        print(f"error: cannot load a kubeconfig ({exc}); set KUBECONFIG or pass --kubeconfig", file=sys.stderr)
        return 1
    api = client.CustomObjectsApi()
    objects: list[dict[str, Any]] = []
    for cls in KINDS.values():
        listing = cast(dict[str, Any], api.list_namespaced_custom_object(GROUP, VERSION, args.namespace, cls.plural))
        objects.extend(listing.get("items", []))
    print(render_tree(objects))
    return 0


def _pair(text: str, flag: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"{flag} {text!r}: expected KEY=VALUE")
    return key, value


def _port_range(text: str, flag: str, *, allow_off: bool = False) -> tuple[int, int]:
    """PORT or LOW-HIGH (or 0: off, where allowed)."""
    low, _, high = text.partition("-")
    try:
        ports = (int(low), int(high or low))
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected PORT or LOW-HIGH") from None
    if allow_off and ports == (0, 0):
        return ports
    if not 1024 <= ports[0] <= ports[1] <= 65535:
        raise ValueError(f"{flag} {text!r}: expected 1024 <= LOW <= HIGH <= 65535")
    return ports


def _toleration(text: str) -> dict[str, str]:
    """KEY[=VALUE][:EFFECT] -> a toleration (operator Exists without a value, Equal with one)."""
    head, _, effect = text.partition(":")
    key, sep, value = head.partition("=")
    if not key or effect not in ("", "NoSchedule", "PreferNoSchedule", "NoExecute"):
        raise ValueError(f"--toleration {text!r}: expected KEY[=VALUE][:NoSchedule|PreferNoSchedule|NoExecute]")
    toleration = {"key": key, "operator": "Equal" if sep else "Exists"}
    if sep:
        toleration["value"] = value
    if effect:
        toleration["effect"] = effect
    return toleration


def _operator(args: argparse.Namespace) -> int:
    import logging

    from forgeline.operator import handlers
    from forgeline.operator.client import KubeClient
    from forgeline.operator.controller import Controller
    from forgeline.operator.metrics import OperatorMetrics
    from forgeline.operator.render import RenderSettings

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        metrics_ports = _port_range(str(args.trainer_metrics_port), "--trainer-metrics-port", allow_off=True)
        settings = RenderSettings(
            image=args.image,
            store=args.store,
            metrics_port=metrics_ports[0],
            metrics_port_high=metrics_ports[1],
            python=args.python,
            extra_env=dict(_pair(e, "--trainer-env") for e in args.trainer_env or ()),
            storage_endpoint=args.storage_endpoint or None,
            credentials_secret=args.storage_secret or None,
            node_selector=dict(_pair(e, "--node-selector") for e in args.node_selector or ()),
            tolerations=tuple(_toleration(t) for t in args.toleration or ()),
            rendezvous_ports=_port_range(args.rendezvous_ports, "--rendezvous-ports"),
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    check_uri = None
    if args.check_uri_inputs:
        from forgeline.operator.artifacts import StoreProbe

        check_uri = StoreProbe(settings.storage_endpoint)
    metrics = OperatorMetrics()
    if args.metrics_port:
        metrics.serve(args.metrics_port, addr=args.metrics_addr)
    controller = Controller(
        KubeClient.from_environment(),
        settings,
        metrics=metrics,
        workers=args.workers,
        resync_seconds=args.resync_seconds,
        check_uri=check_uri,
    )
    handlers.run(controller, namespaces=args.namespace or None, liveness=args.liveness or None)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forgeline", description="Multi-stage LLM training on Kubernetes.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("crds", help="write the CustomResourceDefinitions generated from the API models")
    p.add_argument("--out", default="crds", help="directory (default: crds)")
    p.add_argument(
        "--chart-out",
        default="charts/forgeline/files/crds",
        help="also write byte-identical copies here when the chart two levels up exists ('' to skip; "
        "default: charts/forgeline/files/crds)",
    )
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
    p = sub.add_parser("operator", help="run the operator (kopf) against the current kubeconfig or in-cluster")
    p.add_argument("--namespace", action="append", help="watch this namespace (repeatable; default: all)")
    p.add_argument("--store", default="s3://forgeline", help="artifact store for jobs without spec.storage.outputUri")
    p.add_argument(
        "--image", default="ghcr.io/forgeline/trainer:0.1.0", help="trainer image (spec.resources.image wins)"
    )
    p.add_argument("--python", default="python", help="the interpreter in the trainer image")
    p.add_argument(
        "--storage-endpoint", default="", help="S3 endpoint URL for jobs without spec.storage.endpoint (e.g. MinIO)"
    )
    p.add_argument(
        "--storage-secret",
        default="",
        help="secret (in each job's namespace) with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for jobs without "
        "spec.storage.credentialsSecret",
    )
    p.add_argument(
        "--rendezvous-ports",
        default="29500",
        metavar="PORT|LOW-HIGH",
        help="rank 0's rendezvous port; a range spreads gangs that share a network namespace (hostNetwork)",
    )
    p.add_argument(
        "--check-uri-inputs",
        action="store_true",
        help="read each direct uri input's _MANIFEST.json before creating pods (needs read access to the "
        "store: AWS_* in the operator's env); off: the stage checks it and exits 3",
    )
    p.add_argument(
        "--trainer-env", action="append", metavar="NAME=VALUE", help="extra trainer env (repeatable; a job's own wins)"
    )
    p.add_argument(
        "--node-selector", action="append", metavar="KEY=VALUE", help="trainer pod nodeSelector default (repeatable)"
    )
    p.add_argument(
        "--toleration",
        action="append",
        metavar="KEY[=VALUE][:EFFECT]",
        help="toleration added to every trainer pod (repeatable)",
    )
    p.add_argument("--metrics-port", type=int, default=8080, help="the operator's /metrics (0: off)")
    p.add_argument("--metrics-addr", default="0.0.0.0")
    p.add_argument(
        "--trainer-metrics-port",
        default="9400",
        metavar="PORT|LOW-HIGH",
        help="rank 0's metrics port (0: off); a range spreads gangs that share a network namespace",
    )
    p.add_argument("--liveness", default="http://0.0.0.0:8081/healthz", help="kopf's liveness endpoint ('' off)")
    p.add_argument("--workers", type=int, default=4, help="jobs reconciled in parallel")
    p.add_argument("--resync-seconds", type=float, default=60.0, help="look at every job at least this often")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=_operator)

    p = sub.add_parser("status", help="print a namespace's jobs as a pipeline tree")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("--kubeconfig", default=None)
    p.set_defaults(func=_status)
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
