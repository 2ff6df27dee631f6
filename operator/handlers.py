"""kopf wiring, and nothing else: which watch events reach the controller, and kopf's settings.

Every handler is an `on.event` that only marks a job dirty (controller.py) and returns None,
so nothing kopf would write into .status exists. The handlers are coroutines: marking a job dirty
takes microseconds, and a sync handler would cost each event a hop to kopf's thread pool and back
(a 64-pod gang sends hundreds of pod events within seconds). kopf's INFO line per handled event
("Handler ... succeeded") is turned off unless the operator logs at DEBUG: at one per pod event it
was most of the log and a good part of the CPU a gang start cost. Watching events (not
on.create/update/resume) is deliberate: the first listing after a start plays the role of resume,
create and update are events like any other, and kopf keeps no per-object progress or diff-base
annotations for event handlers. Our own prefixes are configured anyway, so nothing kopf might
write says zalando.

kopf keeps a diff-base (the "last handled" essence of each object) for change handlers, and
builds one on every event, by deep-copying the whole body, whether or not any handler reads it.
With event handlers only, nothing does: `_NoDiffBase` builds an empty one and stores nothing.
That copy was most of what kopf spent per pod event (py-spy during gang starts: about 60% of
kopf's processing of an event).

The children, owned batch Jobs and pods, are not watched through kopf: a pod is about 10 KB and
changes five or more times on its way to Running, and kopf parsing and dispatching each change
was what the operator spent during a gang's start, on the CPUs the control plane was starting
that gang with (at 32 nodes, all pods Running took 1.6x the direct-Job floor with kopf's pod
watch, 1.0x without any). A child's change only says which job to look at, so their metadata is
watched instead (client.watch_metadata: labels, no spec or status), one thread per kind and
watched namespace, with a server-side label selector (forgeline.io/job); the pass lists the
children themselves. The operator never receives the rest of the cluster's pods or Jobs.

Every replica runs kopf, leader or standby (leader.py says why); kopf's liveness endpoint says
whether the process is alive, not whether it leads (its `leader` probe reports that).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any, cast

import kopf

from forgeline.api.kinds import GROUP, KINDS, VERSION
from forgeline.operator.client import KubeClient
from forgeline.operator.controller import Controller
from forgeline.operator.render import LABEL_JOB

PREFIX = "operator.forgeline.io"
FINALIZER = f"{PREFIX}/finalizer"
log = logging.getLogger(__name__)


class _NoDiffBase(kopf.DiffBaseStorage):
    """No diff-base: only change handlers (we have none) read it, and kopf builds it per event."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, {})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def children_watch_namespaces(namespaces: Iterable[str]) -> list[str | None]:
    """Where to watch Jobs and pods: each namespace --namespace names, when all are plain names (a
    Role in each is then enough); all namespaces (None) when there are none or any is one of
    kopf's patterns (globs, exclusions, lists). The controller keeps only children of jobs it
    serves."""
    names = list(namespaces)
    if names and not any(c in name for name in names for c in "!*?,"):
        return list(names)
    return [None]


def build_registry(
    controller: Controller, kube: KubeClient, *, namespaces: Iterable[str] = (), max_workers: int = 8
) -> kopf.OperatorRegistry:
    """kopf's handlers; the children's metadata watches start and stop with kopf."""
    registry = kopf.OperatorRegistry()
    stopped = threading.Event()

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
        settings.persistence.diffbase_storage = _NoDiffBase()
        settings.posting.level = logging.WARNING
        settings.posting.reporting_component = "forgeline-operator"
        settings.execution.max_workers = max_workers
        if not log.isEnabledFor(logging.DEBUG):
            logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        controller.start()
        for kind in ("Job", "Pod"):
            for namespace in children_watch_namespaces(namespaces):
                threading.Thread(
                    target=kube.watch_metadata,
                    args=(kind, namespace, LABEL_JOB, controller.child_changed, stopped),
                    name=f"forgeline-{kind.lower()}s-{namespace or 'all'}",
                    daemon=True,
                ).start()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # A registry of our own gets none of kopf's default login handlers: use the official
        # client's configuration (in-cluster service account, else the kubeconfig).
        return kopf.login_via_client(**kwargs)

    @kopf.on.cleanup(registry=registry)
    def stop(**_: Any) -> None:
        stopped.set()
        controller.stop()

    @kopf.on.probe(id="queued", registry=registry)
    def queued(**_: Any) -> int:
        return len(controller.queue)

    @kopf.on.probe(id="leader", registry=registry)
    def leader(**_: Any) -> bool:
        return controller.leading()

    for cls in KINDS.values():

        @kopf.on.event(GROUP, VERSION, cls.plural, id=f"{cls.plural}-event", registry=registry)
        async def job_event(body: kopf.Body, type: str | None = None, **_: Any) -> None:
            controller.job_changed(dict(body), deleted=type == "DELETED")

    return registry


def run(
    controller: Controller,
    kube: KubeClient,
    *,
    namespaces: list[str] | None = None,
    liveness: str | None = None,
    max_workers: int = 8,
) -> None:
    """Run kopf until SIGINT/SIGTERM (all namespaces unless `namespaces` names some)."""
    registry = build_registry(controller, kube, namespaces=namespaces or (), max_workers=max_workers)
    kopf.run(
        registry=registry,
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces or (),
        liveness_endpoint=liveness,
    )
