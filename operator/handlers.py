"""kopf wiring, and nothing else: which watch events reach the controller, and kopf's settings.

Every handler is a sync `on.event` that only marks a job dirty (controller.py) and returns None,
so nothing kopf would write into .status exists. Watching events (not on.create/update/resume)
is deliberate: the first listing after a start plays the role of resume, create and update are
events like any other, and kopf keeps no per-object progress or diff-base annotations for event
handlers. Our own prefixes are configured anyway, so nothing kopf might write says zalando.

Owned batch Jobs and pods are watched with a server-side label selector (forgeline.io/job), so
the operator never receives the rest of the cluster's pods.

Every replica runs kopf, leader or standby (leader.py says why); kopf's liveness endpoint says
whether the process is alive, not whether it leads (its `leader` probe reports that).
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from forgeline.api.kinds import GROUP, KINDS, VERSION
from forgeline.operator.controller import Controller
from forgeline.operator.render import LABEL_JOB

PREFIX = "operator.forgeline.io"
FINALIZER = f"{PREFIX}/finalizer"
log = logging.getLogger(__name__)


def build_registry(controller: Controller, *, max_workers: int = 8) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=PREFIX, key="last-handled-configuration"
        )
        settings.posting.level = logging.WARNING
        settings.posting.reporting_component = "forgeline-operator"
        settings.execution.max_workers = max_workers
        settings.watching.label_selectors[("batch", "v1", "jobs")] = LABEL_JOB
        settings.watching.label_selectors[("v1", "pods")] = LABEL_JOB
        controller.start()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # A registry of our own gets none of kopf's default login handlers: use the official
        # client's configuration (in-cluster service account, else the kubeconfig).
        return kopf.login_via_client(**kwargs)

    @kopf.on.cleanup(registry=registry)
    def stop(**_: Any) -> None:
        controller.stop()

    @kopf.on.probe(id="queued", registry=registry)
    def queued(**_: Any) -> int:
        return len(controller.queue)

    @kopf.on.probe(id="leader", registry=registry)
    def leader(**_: Any) -> bool:
        return controller.leading()

    for cls in KINDS.values():

        @kopf.on.event(GROUP, VERSION, cls.plural, id=f"{cls.plural}-event", registry=registry)
        def job_event(body: kopf.Body, type: str | None = None, **_: Any) -> None:
            controller.job_changed(dict(body), deleted=type == "DELETED")

    @kopf.on.event("batch", "v1", "jobs", labels={LABEL_JOB: kopf.PRESENT}, registry=registry)
    def child_job_event(body: kopf.Body, **_: Any) -> None:
        controller.child_changed(dict(body))

    @kopf.on.event("v1", "pods", labels={LABEL_JOB: kopf.PRESENT}, registry=registry)
    def pod_event(body: kopf.Body, **_: Any) -> None:
        controller.child_changed(dict(body))

    return registry


def run(
    controller: Controller,
    *,
    namespaces: list[str] | None = None,
    liveness: str | None = None,
    max_workers: int = 8,
) -> None:
    """Run kopf until SIGINT/SIGTERM (all namespaces unless `namespaces` names some)."""
    registry = build_registry(controller, max_workers=max_workers)
    kopf.run(
        registry=registry,
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces or (),
        liveness_endpoint=liveness,
    )
