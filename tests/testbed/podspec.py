"""Turn a pod's spec into what a local process needs: env, argv, working directory, files.

The process node has no images, no mount namespaces and no container runtime, so a container
becomes ``command + args`` run on this machine. Its filesystem view is emulated by a *path
mapping*:

* every volume is materialised under ``<pod dir>/volumes/<volume>`` (ConfigMap and Secret keys
  as files, emptyDir as a directory, hostPath as the real path);
* every volumeMount gets a symlink at ``<pod dir>/root/<mountPath>`` (subPath honoured), so
  ``$FORGELINE_ROOT/<mountPath>`` is the mounted content;
* command, args, env values and workingDir that name a mount path (``/etc/cfg/x``, or
  ``--flag=/etc/cfg/x``) are rewritten to the materialised path, unless the path exists on
  this machine and not in the volume (then it is the host's own file); an exact
  terminationMessagePath is rewritten too, and also arrives as
  ``FORGELINE_TERMINATION_MESSAGE_PATH``.

Code that must run both here and in a real container can open
``Path(os.environ.get("FORGELINE_ROOT", "/")) / "etc/cfg/x"``; most code needs nothing, because
the paths it is given on its command line or in its env are already rewritten.
"""

from __future__ import annotations

import base64
import math
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Obj = dict[str, Any]
Lookup = Callable[[str, str, str], Obj | None]  # (kind "configmap"|"secret", namespace, name) -> data
DEFAULT_TERMINATION_PATH = "/dev/termination-log"


class PodSpecError(Exception):
    """The pod asks for something the process node cannot do; the message says what and where."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Launch:
    """Everything needed to start one container as a process."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    termination_path: Path
    log_path: Path


_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: known names are substituted, $$ escapes, the rest stays."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _REF.sub(sub, value)


def _field(pod: Obj, path: str) -> str:
    meta, status, spec = pod["metadata"], pod.get("status") or {}, pod["spec"]
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
        "status.podIPs": ",".join(ip["ip"] for ip in status.get("podIPs") or []),
        "status.hostIPs": ",".join(ip["ip"] for ip in status.get("hostIPs") or []),
    }
    if path not in simple:
        raise PodSpecError("CreateContainerConfigError", f"fieldRef.fieldPath {path!r} is not supported")
    return str(simple[path] or "")


def _resource(container: Obj, ref: Obj) -> str:
    from kubernetes.utils.quantity import parse_quantity

    kind, _, name = ref["resource"].partition(".")
    raw = ((container.get("resources") or {}).get(kind) or {}).get(name)
    if raw is None:
        return "0"
    divisor = parse_quantity(ref.get("divisor") or "1") or 1  # the API server defaults an unset divisor to "0"
    return str(math.ceil(parse_quantity(raw) / divisor))


def _key(lookup: Lookup, kind: str, ns: str, ref: Obj, where: str) -> str | None:
    data = lookup(kind, ns, ref["name"])
    optional = bool(ref.get("optional"))
    if data is None or ref["key"] not in data:
        if optional:
            return None
        what = f"{kind} {ns}/{ref['name']}" + ("" if data is None else f" key {ref['key']!r}")
        raise PodSpecError("CreateContainerConfigError", f"{where}: {what} not found")
    return _text(data[ref["key"]])


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def container_env(pod: Obj, container: Obj, lookup: Lookup) -> dict[str, str]:
    """The env a kubelet would give this container (envFrom first, then env in order)."""
    ns = pod["metadata"]["namespace"]
    env: dict[str, str] = {}
    for i, src in enumerate(container.get("envFrom") or []):
        prefix = src.get("prefix") or ""
        for kind, key in (("configmap", "configMapRef"), ("secret", "secretRef")):
            ref = src.get(key)
            if ref is None:
                continue
            data = lookup(kind, ns, ref["name"])
            if data is None and not ref.get("optional"):
                raise PodSpecError("CreateContainerConfigError", f"envFrom[{i}]: {kind} {ns}/{ref['name']} not found")
            env.update({prefix + k: _text(v) for k, v in (data or {}).items()})
    for i, var in enumerate(container.get("env") or []):
        where, name, src = f"env[{i}] ({var['name']})", var["name"], var.get("valueFrom")
        if src is None:
            env[name] = expand(var.get("value") or "", env)
        elif "fieldRef" in src:
            env[name] = _field(pod, src["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in src:
            env[name] = _resource(container, src["resourceFieldRef"])
        elif "configMapKeyRef" in src or "secretKeyRef" in src:
            kind = "configmap" if "configMapKeyRef" in src else "secret"
            value = _key(lookup, kind, ns, src.get("configMapKeyRef") or src["secretKeyRef"], where)
            if value is not None:
                env[name] = value
        else:
            raise PodSpecError("CreateContainerConfigError", f"{where}: unsupported valueFrom {sorted(src)}")
    return env


def _write_items(target: Path, data: Obj, items: list[Obj] | None, mode: int | None) -> None:
    target.mkdir(parents=True, exist_ok=True)
    chosen = [(i["key"], i["path"], i.get("mode")) for i in items] if items else [(k, k, None) for k in data]
    for key, rel, item_mode in chosen:
        if key not in data:
            continue
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        value = data[key]
        path.write_bytes(value if isinstance(value, bytes) else str(value).encode())
        path.chmod(item_mode or mode or 0o644)


def materialise_volumes(pod: Obj, pod_dir: Path, lookup: Lookup) -> dict[str, Path]:
    """Create every volume of the pod on disk; returns volume name -> directory (or host path)."""
    ns = pod["metadata"]["namespace"]
    out: dict[str, Path] = {}
    for vol in pod["spec"].get("volumes") or []:
        name, target = vol["name"], pod_dir / "volumes" / vol["name"]
        if "emptyDir" in vol:
            target.mkdir(parents=True, exist_ok=True)
        elif "hostPath" in vol:
            target = Path(vol["hostPath"]["path"])
        elif "configMap" in vol or "secret" in vol:
            kind = "configmap" if "configMap" in vol else "secret"
            src = vol.get("configMap") or vol["secret"]
            ref_name = src.get("name") or src.get("secretName")
            data = lookup(kind, ns, ref_name)
            if data is None and not src.get("optional"):
                raise PodSpecError("FailedMount", f"volume {name!r}: {kind} {ns}/{ref_name} not found")
            _write_items(target, data or {}, src.get("items"), src.get("defaultMode"))
        elif "projected" in vol:
            target.mkdir(parents=True, exist_ok=True)
            for source in vol["projected"].get("sources") or []:
                for kind, key, name_key in (("configmap", "configMap", "name"), ("secret", "secret", "name")):
                    if key in source:
                        data = lookup(kind, ns, source[key][name_key]) or {}
                        _write_items(target, data, source[key].get("items"), vol["projected"].get("defaultMode"))
                if "downwardAPI" in source:
                    _write_downward(target, pod, source["downwardAPI"].get("items") or [])
                # serviceAccountToken: training pods get no API access (DESIGN.md); left empty.
        elif "downwardAPI" in vol:
            target.mkdir(parents=True, exist_ok=True)
            _write_downward(target, pod, vol["downwardAPI"].get("items") or [])
        else:
            kinds = sorted(k for k in vol if k != "name")
            raise PodSpecError("FailedMount", f"volume {name!r}: type {kinds} is not supported on the process node")
        out[name] = target
    return out


def _write_downward(target: Path, pod: Obj, items: list[Obj]) -> None:
    data = {i["path"]: _field(pod, i["fieldRef"]["fieldPath"]) for i in items if "fieldRef" in i}
    _write_items(target, data, None, None)


def decode_secret(secret: Obj) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}


class PathMap:
    """Container paths -> host paths for one container (longest mount path wins)."""

    def __init__(self, pairs: list[tuple[str, Path]]) -> None:
        self.pairs = sorted(pairs, key=lambda p: len(p[0]), reverse=True)

    def rewrite(self, value: str) -> str:
        if value.startswith("-") and "=" in value:
            flag, _, rest = value.partition("=")
            return f"{flag}={self.rewrite(rest)}"
        for container_path, host_path in self.pairs:
            cp = container_path.rstrip("/") or "/"
            if value == cp or value.startswith(cp + "/"):
                mapped = str(host_path) + value[len(cp) :]
                # A host path that exists and has no counterpart in the volume is the host's own
                # (a mount at /work must not hijack /work/venv/bin/python): keep it.
                if os.path.exists(value) and not os.path.lexists(mapped):
                    return value
                return mapped
        return value


def prepare_container(
    pod: Obj, container: Obj, pod_dir: Path, volumes: dict[str, Path], lookup: Lookup, base_env: dict[str, str]
) -> Launch:
    """Build the argv/env/cwd of one container, creating its mount links under ``pod_dir/root``."""
    name = container["name"]
    root = pod_dir / "root"
    pairs: list[tuple[str, Path]] = []
    for mount in container.get("volumeMounts") or []:
        if mount["name"] not in volumes:
            raise PodSpecError(
                "CreateContainerConfigError", f"container {name}: volumeMount {mount['name']!r} has no volume"
            )
        source = volumes[mount["name"]] / (mount.get("subPath") or "")
        link = root / mount["mountPath"].lstrip("/")
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            if link.resolve() != source.resolve():
                raise PodSpecError(
                    "CreateContainerConfigError", f"container {name}: {mount['mountPath']} mounted twice"
                )
        else:
            link.symlink_to(source)
        pairs.append((mount["mountPath"], link))
    term_container = container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
    term_host = pod_dir / "termination" / name
    term_host.parent.mkdir(parents=True, exist_ok=True)
    term_host.write_bytes(b"")
    paths = PathMap(pairs)

    env = dict(base_env)
    for key, value in container_env(pod, container, lookup).items():
        env[key] = value if value == term_container else paths.rewrite(value)
    env = {k: str(term_host) if v == term_container else v for k, v in env.items()}
    env["FORGELINE_ROOT"] = str(root)
    env["FORGELINE_TERMINATION_MESSAGE_PATH"] = str(term_host)

    def arg(a: str) -> str:
        a = expand(a, env)
        return str(term_host) if a == term_container else paths.rewrite(a)

    command = [arg(a) for a in container.get("command") or []]
    argv = command + [arg(a) for a in container.get("args") or []]
    if not command:
        raise PodSpecError(
            "CreateContainerConfigError",
            f"container {name}: no command; the process node runs command+args and knows no image ENTRYPOINT",
        )
    exe = shutil.which(argv[0], path=env.get("PATH"))
    if exe is None and not os.path.isabs(argv[0]):
        raise PodSpecError("StartError", f'exec: "{argv[0]}": executable file not found in $PATH')
    argv[0] = exe or argv[0]
    workdir = container.get("workingDir")
    cwd = Path(paths.rewrite(workdir)) if workdir else root
    if workdir and not cwd.exists():
        cwd = root / workdir.lstrip("/")
    cwd.mkdir(parents=True, exist_ok=True)
    return Launch(argv, env, cwd, term_host, pod_dir / "logs" / f"{name}.log")


def default_base_env(pod_dir: Path, hostname: str) -> dict[str, str]:
    """The env every container starts from: this interpreter's bin dir first on PATH."""
    home = pod_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "/usr/bin:/bin")])
    env = {"PATH": path, "HOME": str(home), "HOSTNAME": hostname}
    for key in ("LANG", "LC_ALL", "TZ", "TMPDIR"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env
