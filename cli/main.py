"""The `forgeline` command. Each subcommand imports what it needs only when it runs, so
`forgeline validate` works on a machine with neither torch nor a cluster client."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from forgeline.api.torchrun import DEFAULT_TRAINER_IMAGE


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
    return _validate_data(jobs) if args.data else 0


def _validate_data(jobs: list[Any]) -> int:
    """`validate --data`: the stage's data preflight on each job's local (file://) data, offline."""
    from forgeline.api.kinds import RLHFJob
    from forgeline.api.stageconfig import DataConfig
    from forgeline.jobs.errors import ContractError
    from forgeline.jobs.records import TRAINING_STAGES, preflight_data
    from forgeline.jobs.storage import Storage

    failed = 0
    for job in jobs:
        name, data = f"{job.kind}/{job.metadata.name}", getattr(job.spec, "data", None)
        if data is None or job.stage not in TRAINING_STAGES:
            print(f"{name}: data not checked (not a training stage)")
            continue
        if data.uri is None or not data.uri.startswith("file://"):
            print(f"{name}: data not checked ({'synthetic' if data.uri is None else 'not a local file:// URI'})")
            continue
        algorithm = job.spec.rlhf.algorithm if isinstance(job, RLHFJob) else None
        config = DataConfig(**{**data.model_dump(exclude={"synthetic"}), "synthetic": None})
        try:
            read = preflight_data(config, job.stage, algorithm, Storage())
        except ContractError as exc:
            print(f"error: {name}: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{name}: data ok (first {read} record(s) of {data.uri} have what the {job.stage} stage reads)")
    return 1 if failed else 0


def _import(args: argparse.Namespace) -> int:
    from forgeline.jobs.errors import ContractError
    from forgeline.jobs.importer import as_uri, import_model
    from forgeline.jobs.storage import Storage

    src, dest = as_uri(args.src), as_uri(args.dest)
    tokenizer = as_uri(args.tokenizer) if args.tokenizer else None
    try:
        done = import_model(Storage(args.storage_endpoint), src, dest, tokenizer)
    except ContractError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"imported {done.files} file(s), {done.bytes} bytes, into {done.uri}")
    print(f"digest sha256:{done.digest}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from forgeline.local.runner import run_pipeline_file

    return run_pipeline_file(
        Path(args.pipeline), store=args.store, workdir=Path(args.workdir), max_procs=args.max_procs
    )


def _torchx(args: argparse.Namespace) -> int:
    from forgeline.components.pipeline import run_torchx_pipeline, site_for

    site, default_args = site_for(
        args.scheduler,
        workdir=Path(args.workdir),
        store=args.store,
        image=args.image,
        python=args.python,
        rdzv_port=args.rendezvous_port,
        storage_endpoint=args.storage_endpoint,
        credentials=args.storage_credentials,
    )
    return run_torchx_pipeline(
        Path(args.pipeline),
        scheduler=args.scheduler,
        site=site,
        scheduler_args=(default_args, args.scheduler_args),
        dryrun=args.dryrun,
    )


def _status(args: argparse.Namespace) -> int:
    from forgeline.cli.status import run

    return run(args)


def _pair(text: str, flag: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"{flag} {text!r}: expected KEY=VALUE")
    return key, value


def _uri_prefix(text: str) -> str:
    """An --allowed-uri-prefix: a store location (scheme://...), matched as a whole path prefix."""
    import re

    from forgeline.api.fields import URI

    if not re.match(URI, text) or ".." in text.split("/"):
        raise ValueError(f"--allowed-uri-prefix {text!r}: expected a URI such as s3://bucket/shared/ (no '..')")
    return text


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
    import dataclasses
    import logging
    import os

    from forgeline.operator import handlers
    from forgeline.operator.client import KubeClient
    from forgeline.operator.controller import Controller
    from forgeline.operator.leader import LeaderElector, LeaseSettings, default_identity
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
            allowed_uri_prefixes=tuple(_uri_prefix(u) for u in args.allowed_uri_prefix or ()),
        )
        lease = (
            LeaseSettings(
                namespace=args.leader_election_namespace or os.environ.get("POD_NAMESPACE") or "default",
                name=args.leader_election_id,
                identity=default_identity(),
                lease_duration=args.lease_duration,
                renew_deadline=args.renew_deadline,
                retry_period=args.retry_period,
            )
            if args.leader_elect
            else None
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    check_uri = None
    if args.check_uri_inputs:
        from forgeline.operator.artifacts import StoreProbe

        check_uri = StoreProbe(settings.storage_endpoint)
    metrics = OperatorMetrics()
    kube = KubeClient.from_environment()
    kube.on_request = metrics.api_request  # forgeline_operator_api_requests_total{verb,resource}
    # Gang placement where the cluster serves PodGroups; asked once, said once.
    settings = dataclasses.replace(settings, gang_scheduling=kube.serves_pod_groups())
    log = logging.getLogger("forgeline.operator")
    if settings.gang_scheduling:
        log.info("gang placement on: each attempt gets a scheduling.k8s.io/v1alpha2 PodGroup (minCount = nodes)")
    else:
        log.warning(
            "gang placement off: the cluster does not serve scheduling.k8s.io/v1alpha2 PodGroups, "
            "so the scheduler places each attempt's pods one by one (docs/operator.md, Gang placement)"
        )
    controller = Controller(
        kube,
        settings,
        metrics=metrics,
        workers=args.workers,
        resync_seconds=args.resync_seconds,
        check_uri=check_uri,
        # Lease requests time out within the renew deadline, as client-go's do.
        elector=LeaderElector(KubeClient(kube.api, timeout=lease.renew_deadline, on_request=metrics.api_request), lease)
        if lease
        else None,
    )
    if args.metrics_port:
        metrics.serve(args.metrics_port, addr=args.metrics_addr, ready=controller.ready, leading=controller.leading)
    handlers.run(controller, kube, namespaces=args.namespace or None, liveness=args.liveness or None)
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
    p.add_argument(
        "--data", action="store_true", help="also read the first records of each job's file:// data and check the "
        "fields its stage needs (the stage's own preflight)",
    )  # fmt: skip
    p.set_defaults(func=_validate)

    p = sub.add_parser(
        "import", help="copy a Hugging Face model directory into the store as a committed artifact; print its digest"
    )
    p.add_argument("src", help="the model directory: a path, file:// or s3:// URI (config.json, weights, tokenizer)")
    p.add_argument("dest", help="where the artifact goes: a path, file:// or s3:// URI (use it as model.uri)")
    p.add_argument("--tokenizer", default=None, help="a directory whose tokenizer files are added (and win)")
    p.add_argument("--storage-endpoint", default=None, help="S3-compatible endpoint URL (default: AWS)")
    p.set_defaults(func=_import)

    p = sub.add_parser("run", help="run a pipeline file locally, each stage under torchrun")
    p.add_argument("pipeline")
    p.add_argument("--store", default=None, help="artifact store URI (default: file://<workdir>/store)")
    p.add_argument("--workdir", default=".forgeline", help="logs, reports and the default store")
    p.add_argument("--max-procs", type=int, default=None, help="cap processes per stage (default: CPU cores)")
    p.set_defaults(func=_run)
    p = sub.add_parser("torchx", help="run a pipeline file through a torchx scheduler (Slurm, Kubernetes, local)")
    p.add_argument("pipeline")
    p.add_argument("--scheduler", required=True, help="a torchx scheduler: slurm, kubernetes, local_cwd, ...")
    p.add_argument("--dryrun", action="store_true", help="print what each stage would submit; submit nothing")
    p.add_argument(
        "--scheduler-args", default="", metavar="K=V,...", help="torchx scheduler options (`torchx runopts`)"
    )
    p.add_argument(
        "--store", default=None, help="artifact store URI (default: s3://forgeline; local_cwd: file://<workdir>/store)"
    )
    p.add_argument("--workdir", default=".forgeline", help="local_cwd: the default store and the torchx logs")
    p.add_argument("--image", default=DEFAULT_TRAINER_IMAGE, help="trainer image (resources.image wins)")
    p.add_argument("--python", default=None, help="the nodes' interpreter (default: python; local_cwd: this one)")
    p.add_argument("--rendezvous-port", type=int, default=None, help="node 0's port (default 29500; local_cwd: free)")
    p.add_argument("--storage-endpoint", default=None, help="S3 endpoint for jobs without spec.storage.endpoint")
    p.add_argument(
        "--storage-credentials",
        default=None,
        metavar="SECRET|env",
        help="for jobs without spec.storage.credentialsSecret: a Kubernetes secret with AWS_ACCESS_KEY_ID/"
        "AWS_SECRET_ACCESS_KEY (referenced by name), or `env`: both must be set where the job is submitted",
    )
    p.set_defaults(func=_torchx)
    p = sub.add_parser("operator", help="run the operator (kopf) against the current kubeconfig or in-cluster")
    p.add_argument("--namespace", action="append", help="watch this namespace (repeatable; default: all)")
    p.add_argument("--store", default="s3://forgeline", help="artifact store for jobs without spec.storage.outputUri")
    p.add_argument("--image", default=DEFAULT_TRAINER_IMAGE, help="trainer image (spec.resources.image wins)")
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
    p.add_argument(
        "--allowed-uri-prefix",
        action="append",
        metavar="URI",
        help="a store prefix every namespace's jobs may read and write besides <store>/<namespace>/ "
        "(repeatable; e.g. s3://models/shared/); default none (docs/trust-model.md)",
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
    p.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="reconcile only while holding a coordination.k8s.io Lease (run two or more replicas)",
    )
    p.add_argument(
        "--leader-election-namespace", default="", help="the Lease's namespace (default: $POD_NAMESPACE, else default)"
    )
    p.add_argument("--leader-election-id", default="forgeline-operator", help="the Lease's name")
    p.add_argument(
        "--lease-duration", type=float, default=15.0, help="seconds a standby waits on an unrenewed lease (15)"
    )
    p.add_argument(
        "--renew-deadline", type=float, default=10.0, help="seconds the leader may fail to renew before it stops (10)"
    )
    p.add_argument("--retry-period", type=float, default=2.0, help="seconds between lease reads and renewals (2)")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=_operator)

    p = sub.add_parser("status", help="print jobs as pipeline trees: state, progress, age, output or cause")
    where = p.add_mutually_exclusive_group()
    where.add_argument("-n", "--namespace", default=None, help="default: the kubeconfig context's, else default")
    where.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace; ends with totals by state")
    p.add_argument("--state", action="append", metavar="STATE", help="only jobs in this state (repeatable)")
    p.add_argument("--summary", action="store_true", help="only the counts of jobs by namespace and state")
    p.add_argument("--chunk-size", type=int, default=500, help="objects per LIST request, paged (default 500)")
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
