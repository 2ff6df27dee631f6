"""The client port over the official `kubernetes` client: the only module that talks to the API.

Requests go through the generated client's ApiClient (its configuration, authentication and
connection pool) but skip its model classes: reconcile works on plain dicts, and turning a 64-pod
list into typed models and back costs more than the request. Children are written with
server-side apply under one field manager, so re-applying an unchanged object is a no-op and a
second operator replica cannot fight over fields silently.

Every request is counted by verb and resource (`on_request`, the operator's
forgeline_operator_api_requests_total): what a pass costs the API server is then a number on
/metrics, not a guess. kopf's own watches go through its own client and are not counted.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from forgeline.api.kinds import GROUP, KINDS, VERSION

Obj = dict[str, Any]
FIELD_MANAGER = "forgeline-operator"
COMPONENT = "forgeline-operator"
WATCH_SECONDS = 300  # a watch request's length; it then resumes from the last version it saw
WATCH_CHUNK = 64 * 1024
WATCH_RETRY_MAX = 5.0  # seconds between a broken watch's tries, at the most
log = logging.getLogger(__name__)

# kind -> (API prefix, plural) for what the operator touches.
_BUILTIN = {
    "Pod": ("/api/v1", "pods"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "Service": ("/api/v1", "services"),
    "Event": ("/api/v1", "events"),
    "Job": ("/apis/batch/v1", "jobs"),
    "PodGroup": ("/apis/scheduling.k8s.io/v1alpha2", "podgroups"),
    "Workload": ("/apis/kueue.x-k8s.io/v1beta2", "workloads"),  # read only (policies/kueue.py)
}


class _Expired(Exception):
    """A watch's resourceVersion is too old (410 Gone): list again."""


class ApiError(Exception):
    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        try:
            detail = json.loads(body).get("message", body)
        except ValueError:
            detail = body
        super().__init__(f"{method} {path}: {status} {detail}")
        self.status = status


def request_kind(method: str, path: str, query: dict[str, str] | None = None) -> tuple[str, str]:
    """(verb, resource) of a request, for counting: GET of a collection is LIST (WATCH with
    watch=true), the resource is the plural (a subresource counts as its object's; a discovery
    request is `discovery`)."""
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    # /api/v1/... or /apis/<group>/<version>/...; then [namespaces/<ns>/]<plural>[/<name>[/<sub>]]
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:]
    if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) != 2:
        rest = rest[2:]
    if not rest:
        return method.upper(), "discovery"
    verb = method.upper()
    if verb == "GET" and len(rest) == 1:
        verb = "WATCH" if (query or {}).get("watch") in ("true", "1") else "LIST"
    return verb, rest[0]


def resource_path(kind: str, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
    if kind in KINDS:
        prefix, plural = f"/apis/{GROUP}/{VERSION}", KINDS[kind].plural
    elif kind in _BUILTIN:
        prefix, plural = _BUILTIN[kind]
    else:
        raise ValueError(f"the operator does not manage kind {kind}")
    path = f"{prefix}/namespaces/{quote(namespace)}/{plural}"
    if name:
        path += f"/{quote(name)}"
    if subresource:
        path += f"/{subresource}"
    return path


class KubeClient:
    """ClusterPort (reconcile.py) over kubernetes.client.ApiClient."""

    def __init__(
        self, api_client: Any, *, timeout: float = 30.0, on_request: Callable[[str, str], None] | None = None
    ) -> None:
        self.api = api_client
        self.timeout = timeout
        self.on_request = on_request  # (verb, resource) of every request sent, answered or not

    @classmethod
    def from_environment(cls) -> KubeClient:
        """In-cluster service account if there is one, else $KUBECONFIG / ~/.kube/config."""
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        return cls(client.ApiClient())

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
        accept: str = "application/json",
        missing_ok: bool = False,
    ) -> Obj | None:
        response = self._send(method, path, body=body, query=query, content_type=content_type, accept=accept)
        data = response.read()
        if response.status == 404 and missing_ok:
            return None
        if response.status >= 300:
            raise ApiError(response.status, method, path, data.decode(errors="replace") if data else "")
        return json.loads(data) if data else {}

    def _send(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
        accept: str = "application/json",
        timeout: float | tuple[float, float] | None = None,
    ) -> Any:
        """The request sent, counted; its answer not yet read (the REST layer never preloads)."""
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = content_type
        _, url, headers, _, _ = self.api.param_serialize(
            method, path, header_params=headers, auth_settings=["BearerToken"]
        )
        if query:
            url += "?" + urlencode(query)
        if self.on_request is not None:
            self.on_request(*request_kind(method, path, query))
        # The REST layer serialises dict bodies itself, for JSON and for apply's YAML content type.
        return self.api.call_api(
            method, url, header_params=headers, body=body, _request_timeout=timeout or self.timeout
        )

    def watch_metadata(
        self,
        kind: str,
        namespace: str | None,
        selector: str,
        on_change: Callable[[Obj], None],
        stopped: threading.Event,
    ) -> None:
        """List, then watch, the metadata of one kind's objects (all namespaces when namespace is
        None) and call `on_change` with each one that is listed, added, changed or deleted, until
        `stopped`. Only metadata travels (PartialObjectMetadata: names, labels, versions): a pod
        is about 10 KB and changes five or more times on its way to Running, while its labels are
        all a watcher needs to say which job to look at. A watch that ends or breaks resumes from
        the last version it saw; one whose version has expired (410) lists again."""
        prefix, plural = _BUILTIN[kind]
        path = f"{prefix}/namespaces/{quote(namespace)}/{plural}" if namespace else f"{prefix}/{plural}"
        version: str | None = None
        failures = 0
        while not stopped.is_set():
            try:
                if version is None:
                    accept = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
                    listed = self.request("GET", path, query={"labelSelector": selector}, accept=accept) or {}
                    version = str(listed["metadata"]["resourceVersion"])
                    for item in listed.get("items") or []:
                        on_change(item)
                version = self._follow(path, selector, version, on_change, stopped)
                failures = 0
            except _Expired:
                version = None
            except Exception as exc:  # the API server away, a broken stream: wait and resume
                failures += 1
                # At most WATCH_RETRY_MAX apart: a watch still waiting long after the API server
                # is back would leave pods unnoticed until the next resync.
                delay = min(0.25 * 2**failures, WATCH_RETRY_MAX)
                log.log(logging.WARNING if failures == 1 else logging.DEBUG,
                        "watch of %s (%s) broke: %s; resuming in %.1fs", plural, namespace or "all namespaces",
                        exc, delay)  # fmt: skip
                stopped.wait(delay)

    def _follow(
        self, path: str, selector: str, version: str, on_change: Callable[[Obj], None], stopped: threading.Event
    ) -> str:
        """One watch request from `version`, until the server ends it; returns the last version seen."""
        query = {
            "labelSelector": selector,
            "watch": "true",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_SECONDS),
        }
        accept = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
        response = self._send("GET", path, query=query, accept=accept, timeout=(self.timeout, WATCH_SECONDS + 30))
        if response.status == 410:
            raise _Expired()
        if response.status >= 300:
            data = response.read()
            raise ApiError(response.status, "GET", path, data.decode(errors="replace") if data else "")
        stream = response.response  # urllib3's, unread: events arrive one JSON document per line
        pending, ended = b"", False
        try:
            for chunk in stream.stream(WATCH_CHUNK):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        if obj.get("code") == 410:
                            raise _Expired()
                        raise ApiError(int(obj.get("code") or 500), "WATCH", path, json.dumps(obj))
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                    if event.get("type") != "BOOKMARK":
                        on_change(obj)
                if stopped.is_set():
                    break
            else:
                ended = True
        finally:
            # Back to the pool only when read to its end; else its connection holds unread data.
            if ended:
                stream.release_conn()
            else:
                stream.close()
        return version

    def serves_pod_groups(self) -> bool:
        """Whether the API server serves scheduling.k8s.io/v1alpha2 PodGroups (the in-tree gang
        scheduling of KEP-4671: 1.36+ with the GenericWorkload and GangScheduling gates)."""
        try:
            found = self.request("GET", _BUILTIN["PodGroup"][0], missing_ok=True)
        except ApiError:  # discovery of an absent or forbidden group: no gangs, as before
            return False
        return any(r.get("name") == "podgroups" for r in (found or {}).get("resources") or [])

    # -- the port ---------------------------------------------------------------------------
    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        return self.request("GET", resource_path(kind, namespace, name), missing_ok=True)

    def apply(self, obj: Obj) -> None:
        meta = obj["metadata"]
        self.request(
            "PATCH",
            resource_path(obj["kind"], meta["namespace"], meta["name"]),
            body=obj,
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
            content_type="application/apply-patch+yaml",
        )

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        self.request("DELETE", resource_path(kind, namespace, name), body=body, missing_ok=True)

    def create(self, obj: Obj) -> str | None:
        """Create, never adopt: a 409 if the name is taken. Returns the resourceVersion made."""
        meta = obj["metadata"]
        made = self.request("POST", resource_path(obj["kind"], meta["namespace"]), body=obj)
        return _version_of(made)

    def list_children(
        self, kind: str, namespace: str, selector: dict[str, str], since: str | None = None
    ) -> tuple[list[Obj], str | None]:
        """(the objects, the listing's resourceVersion). `since` None reads the latest state (a
        quorum read, which the API server may hold until its watch cache has caught up with
        etcd: up to its 100 ms progress-request period); a version reads from the watch cache,
        at once, a state at least that new ("0": any)."""
        query = {"labelSelector": ",".join(f"{k}={v}" for k, v in sorted(selector.items()))}
        if since is not None:
            query["resourceVersion"] = since
            if since != "0":
                query["resourceVersionMatch"] = "NotOlderThan"
        found = self.request("GET", resource_path(kind, namespace), query=query) or {}
        return list(found.get("items") or []), _version_of(found)

    def list_jobs(self, kind: str, namespace: str | None = None) -> list[Obj]:
        """Every object of one of our kinds (all namespaces when namespace is None)."""
        cls = KINDS[kind]
        path = (
            f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace)}/{cls.plural}"
            if namespace
            else f"/apis/{GROUP}/{VERSION}/{cls.plural}"
        )
        return list((self.request("GET", path) or {}).get("items") or [])

    def patch_status(self, kind: str, namespace: str, name: str, status: Obj, resource_version: str) -> str | None:
        """Replace .status (merge patch; null clears), guarded by resourceVersion: a 409 means
        someone changed the object since we read it, and the pass is retried on fresh data.
        Returns the resourceVersion the write made (its watch event carries the same)."""
        body: Obj = {"status": _with_nulls(status), "metadata": {"resourceVersion": resource_version}}
        if not resource_version:
            del body["metadata"]
        written = self.request(
            "PATCH",
            resource_path(kind, namespace, name, "status"),
            body=body,
            content_type="application/merge-patch+json",
        )
        return _version_of(written)

    def event(self, involved: Obj, type_: str, reason: str, message: str) -> None:
        meta = involved["metadata"]
        namespace = meta.get("namespace", "default")
        now = datetime.now(UTC)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}", "namespace": namespace},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta["name"],
                "namespace": namespace,
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
        }
        try:
            self.request("POST", resource_path("Event", namespace), body=body)
        except ApiError as exc:  # an event lost is not worth failing a reconcile for
            log.warning("event %s for %s/%s not recorded: %s", reason, involved.get("kind"), meta["name"], exc)

    def scrape(self, url: str) -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return str(response.read().decode())
        except (OSError, ValueError):
            return None


def _version_of(obj: Obj | None) -> str | None:
    version = ((obj or {}).get("metadata") or {}).get("resourceVersion")
    return str(version) if version else None


def _with_nulls(status: Obj) -> Obj:
    """A merge patch only adds keys; the fields a pass dropped must be sent as null."""
    return {**{k: None for k in ("progress", "output", "completionTime", "replicas")}, **status}
