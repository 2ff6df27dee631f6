"""Recovery time after a trainer's death, against the same gang's first start, in one run.

On the testbed's process node (real torchrun gangs over gloo, 2 pods of one process each), a
PretrainJob trains; each round SIGKILLs the trainer processes of one rank (alternating 0 and 1),
as an OOM kill or a segfault would, once the current attempt has committed a checkpoint. Measured
from client-side watches and rank 0's log, each on time.monotonic():

* recovery: the kill -> the new attempt's rank 0 logs its first training step after "resumed";
* the operator's part: the first watch event of the dead pod Failed -> the last pod of the new
  attempt created (the operator reads the failure, writes status, deletes the old Job, applies
  the new one; the Job controller makes the pods), and within it Failed -> the new batch Job;
* the kubelet's part: the kill -> the pod reported Failed (torchrun's agent sees the worker die);
* the gang's part: new pods created -> training again (start processes, import torch, rendezvous,
  fetch and load the checkpoint).

The baseline is the same gang's first start: PretrainJob created -> first training step logged
(and its operator part: created -> attempt 1's pods created). Every round's figures and the
ratios are printed.

    PYTHONSAFEPATH=1 .venv/bin/python bench/recovery.py [--rounds 3]   (make bench-recovery)
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from kubernetes import client  # noqa: E402
from testbed.gangs import WatchRecorder, trainer_processes  # noqa: E402
from testbed.kube import ON_PROCESS_NODE, apply_crds, new_namespace, wait_for  # noqa: E402
from testbed.launcher import Cluster, ClusterOptions, start_cluster  # noqa: E402
from testbed.operator import OperatorProcess  # noqa: E402
from testbed.processnode import PROCESS_NODE_LABEL  # noqa: E402

GROUP, VERSION = "forgeline.io", "v1alpha1"
NAME = "recover"


def pretrain(rounds: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PretrainJob",
        "metadata": {"name": NAME},
        "spec": {
            "model": {"config": {"layers": 2, "hiddenSize": 64, "heads": 4, "vocabSize": 512, "contextLength": 64}},
            "data": {"synthetic": {"examples": 400, "seed": 1}},
            # Long enough never to finish during the bench; checkpoints often, one log line a step.
            "training": {"maxSteps": 100000, "batchSize": 4, "checkpointInterval": 5, "logInterval": 1},
            "resources": {"nodes": 2, "gpusPerNode": 0, "procsPerNode": 1, **ON_PROCESS_NODE},
            "runPolicy": {"backoffLimit": rounds + 2},
        },
    }


def poll(check: Any, *, timeout: float, what: str) -> float:
    """Call check every 50 ms until it returns a time; wait_for's growing interval would blur it."""
    deadline = time.monotonic() + timeout
    while (found := check()) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)
    return float(found)


def events_of(cluster: Cluster, ns: str, pod: str) -> list[dict[str, Any]]:
    try:
        text = cluster.process_node.read_log(ns, pod)
    except FileNotFoundError:
        return []
    found = []
    for line in text.splitlines():
        at = line.find('{"event"')
        if at >= 0:
            try:
                found.append(json.loads(line[at:]))
            except json.JSONDecodeError:
                continue  # a line still being written
    return found


class Gang:
    """The pods of one attempt, from the watch stream, and what rank 0 has logged."""

    def __init__(self, cluster: Cluster, recorder: WatchRecorder, ns: str, attempt: int) -> None:
        self.cluster, self.recorder, self.ns, self.attempt = cluster, recorder, ns, attempt

    def pods(self) -> dict[str, tuple[str, float]]:
        """index -> (pod name, when its creation was seen)."""
        found: dict[str, tuple[str, float]] = {}
        for s in self.recorder.snapshot():
            if s.kind == "Pod" and s.job == NAME and s.attempt == self.attempt and s.index:
                found.setdefault(s.index, (s.name, s.t))
        return found

    def created(self) -> float | None:
        pods = self.pods()
        return max(t for _, t in pods.values()) if len(pods) == 2 else None

    def job_created(self) -> float | None:
        """When the watch first showed this attempt's batch Job (the operator applied it)."""
        for s in self.recorder.snapshot():
            if s.kind == "Job" and s.job == NAME and s.attempt == self.attempt:
                return s.t
        return None

    def hostname(self, index: int) -> str:
        return f"{NAME}-pretrain-a{self.attempt}-{index}"

    def first_step(self, after_resume: bool) -> float | None:
        """When rank 0's log first shows a training step (after "resumed" when asked); polled."""
        pod = self.pods().get("0")
        if pod is None:
            return None
        events = events_of(self.cluster, self.ns, pod[0])
        if after_resume:
            starts = [i for i, e in enumerate(events) if e["event"] == "resumed"]
            if not starts:
                return None
            events = events[starts[0] :]
        stepped = any(e["event"] == "progress" and e.get("loss") is not None for e in events)
        return time.monotonic() if stepped else None

    def checkpointed(self) -> bool:
        pod = self.pods().get("0")
        return pod is not None and any(e["event"] == "checkpoint" for e in events_of(self.cluster, self.ns, pod[0]))


def run(cluster: Cluster, rounds: int, workdir: Path) -> None:
    apply_crds(cluster, REPO / "crds")
    core, custom = client.CoreV1Api(cluster.client), client.CustomObjectsApi(cluster.client)
    ns = new_namespace(core, "recovery")
    args = [
        f"--namespace={ns}", f"--store=file://{workdir / 'store'}", "--trainer-metrics-port=0",
        f"--node-selector={PROCESS_NODE_LABEL}=true", f"--toleration={PROCESS_NODE_LABEL}:NoSchedule",
        "--resync-seconds=600",
    ]  # fmt: skip
    operator = OperatorProcess(args, cluster.env(), workdir / "operator")
    operator.start()
    recorder = WatchRecorder(cluster.api_client, ns).start()
    try:
        created = time.monotonic()
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, "pretrainjobs", pretrain(rounds))
        gang = Gang(cluster, recorder, ns, 1)
        pods_1 = wait_for(gang.created, timeout=60, what="attempt 1's pods")
        trained_1 = poll(lambda: gang.first_step(False), timeout=300, what="attempt 1 training")
        first_start, first_operator = trained_1 - created, pods_1 - created
        rows = []
        for r in range(rounds):
            wait_for(gang.checkpointed, timeout=300, what=f"a checkpoint of attempt {gang.attempt}")
            rank = r % 2
            victims = wait_for(
                lambda g=gang, k=rank: trainer_processes(ns, g.hostname(k)), timeout=30, what="the trainer processes"
            )
            killed = time.monotonic()
            for victim in victims:
                victim.send_signal(signal.SIGKILL)
            old = gang
            failed = wait_for(
                lambda o=old, k=killed: recorder.first(
                    lambda s: s.kind == "Pod" and s.attempt == o.attempt and s.phase == "Failed", after=k
                ),
                timeout=120,
                what=f"attempt {old.attempt}'s pod Failed",
            ).t
            gang = Gang(cluster, recorder, ns, old.attempt + 1)
            pods = wait_for(gang.created, timeout=120, what=f"attempt {gang.attempt}'s pods")
            trained = poll(lambda g=gang: g.first_step(True), timeout=300, what=f"attempt {gang.attempt} training")
            applied = gang.job_created() or pods
            rows.append((rank, trained - killed, pods - failed, failed - killed, trained - pods, applied - failed))
            print(
                f"round {r + 1}: killed rank {rank}; recovery {trained - killed:6.2f} s = pod Failed "
                f"{failed - killed:5.2f} s + operator {pods - failed:5.3f} s + gang {trained - pods:6.2f} s",
                flush=True,
            )
        status = custom.get_namespaced_custom_object(GROUP, VERSION, ns, "pretrainjobs", NAME).get("status") or {}
        recovery = statistics.mean(r[1] for r in rows)
        operator_part = statistics.mean(r[2] for r in rows)
        print(f"\n{rounds} trainer SIGKILLs of a 2-pod torchrun gang on the process node")
        print(f"first start (created -> first step)          {first_start:7.2f} s   (baseline)")
        print(f"first start, operator part (created -> pods)  {first_operator:7.3f} s")
        worst, worst_op = max(r[1] for r in rows), max(r[2] for r in rows)
        print(f"recovery (kill -> first step after resume)    mean {recovery:7.2f} s, max {worst:.2f} s")
        print(f"  kill -> pod Failed                          mean {statistics.mean(r[3] for r in rows):7.2f} s")
        print(f"  operator part (Failed seen -> new pods)     mean {operator_part:7.3f} s, max {worst_op:.3f} s")
        own = statistics.mean(r[5] for r in rows)
        print(f"    of which Failed seen -> new batch Job     mean {own:7.3f} s (the rest: the Job controller)")
        print(f"  new pods -> training again                  mean {statistics.mean(r[4] for r in rows):7.2f} s")
        print(f"ratio recovery / first start                  {recovery / first_start:7.2f}")
        print(f"ratio operator part / first-start operator    {operator_part / first_operator:7.2f}")
        print(f"operator part under 1 s every round           {worst_op < 1.0}")
        print(f"status: attempt {status.get('attempt')}, restarts {status.get('restarts')}")
    finally:
        recorder.stop()
        custom.delete_namespaced_custom_object(GROUP, VERSION, ns, "pretrainjobs", NAME)
        wait_for(
            lambda: not core.list_namespaced_pod(ns, label_selector="forgeline.io/job").items,
            timeout=60,
            what="the pods deleted",
        )
        operator.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="forgeline-bench-recovery-"))
    with start_cluster(ClusterOptions(gpu_nodes=1, workdir=workdir / "cluster")) as cluster:
        run(cluster, args.rounds, workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
