"""Leader election on the real control plane: the Lease contract in-process (two electors, one
API server), then two `forgeline operator --leader-elect` processes: only the leader reconciles,
SIGKILL of the leader mid-pipeline hands over to the standby (the failover time is recorded as
the `failover_seconds` test-suite property and written to failover.txt in the test's tmp dir), and a leader
paused past its lease stops without writing once it wakes.

The jobs live in namespaces of their own (lead-*), which the session operator of the other
operator tests does not watch.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from testbed import procs
from testbed.kube import OUTCOME_LABEL, new_namespace, wait_for
from testbed.operator import OperatorProcess, pretrain_manifest

from forgeline.operator.client import KubeClient
from forgeline.operator.leader import JITTER, LOST_LEASE_EXIT, FencedPort, LeaderElector, LeaseSettings, NotLeader

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

GROUP, VERSION = "forgeline.io", "v1alpha1"
PLURALS = {"PretrainJob": "pretrainjobs", "LoRAJob": "lorajobs"}
LEASE = "forgeline-operator"
# Short timings so the tests take seconds; the same ratios as the 15/10/2 defaults matter less
# than the order: lease duration > renew deadline > 1.2 x retry period.
SHORT = {"lease_duration": 4.0, "renew_deadline": 3.0, "retry_period": 0.5}


@pytest.fixture
def core(cluster: Any) -> Any:
    return client.CoreV1Api(cluster.client)


@pytest.fixture
def custom(cluster: Any) -> Any:
    return client.CustomObjectsApi(cluster.client)


@pytest.fixture
def lease_ns(core: Any) -> Iterator[str]:
    """A namespace for the in-process Lease tests (they need no CRDs and no kwok nodes)."""
    name = new_namespace(core, "lease")
    yield name
    core.delete_namespace(name)


@pytest.fixture
def ns(core: Any, custom: Any, crds: list[str]) -> Iterator[str]:
    name = new_namespace(core, "lead")
    yield name
    for plural in PLURALS.values():
        custom.delete_collection_namespaced_custom_object(GROUP, VERSION, name, plural)
    wait_for(
        lambda: not core.list_namespaced_pod(name, label_selector="forgeline.io/job").items,
        timeout=60,
        what=f"the pods in {name} to be deleted",
    )
    core.delete_namespace(name)


def lease_of(cluster: Any, ns: str) -> dict[str, Any]:
    return dict(client.CoordinationV1Api(cluster.client).read_namespaced_lease(LEASE, ns).to_dict()["spec"])


def elector(cluster: Any, ns: str, identity: str, api: Any = None, **timings: float) -> LeaderElector:
    settings = LeaseSettings(namespace=ns, name=LEASE, identity=identity, **{**SHORT, **timings})
    return LeaderElector(api or KubeClient(cluster.client), settings, exit_on_loss=False)


# -- the Lease contract, in-process ------------------------------------------------------------------
def test_two_candidates_racing_for_a_free_lease_yield_exactly_one_leader(cluster: Any, lease_ns: str) -> None:
    candidates = [elector(cluster, lease_ns, f"candidate-{i}") for i in range(4)]
    barrier = threading.Barrier(len(candidates))
    won: dict[str, bool] = {}

    def campaign(e: LeaderElector) -> None:
        barrier.wait()
        won[e.settings.identity] = e.try_acquire_or_renew()

    threads = [threading.Thread(target=campaign, args=(e,)) for e in candidates]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [name for name, ok in won.items() if ok]
    assert len(winners) == 1, won
    spec = lease_of(cluster, lease_ns)
    assert spec["holder_identity"] == winners[0] and spec["lease_transitions"] == 0
    assert [e.is_leader() for e in candidates].count(True) == 1
    # A second round changes nothing: the holder renews, the others see a live lease.
    assert [e.try_acquire_or_renew() for e in candidates].count(True) == 1
    assert lease_of(cluster, lease_ns)["holder_identity"] == winners[0]


def test_standby_takes_an_unrenewed_lease_only_after_a_lease_duration(cluster: Any, lease_ns: str) -> None:
    leader, standby = elector(cluster, lease_ns, "leader"), elector(cluster, lease_ns, "standby")
    assert leader.try_acquire_or_renew()
    renewed = time.monotonic()
    assert not standby.try_acquire_or_renew(), "a fresh lease belongs to its holder"
    wait_for(standby.try_acquire_or_renew, timeout=10, what="the standby to take the expired lease", interval=0.1)
    waited = time.monotonic() - renewed
    assert waited >= SHORT["lease_duration"], f"taken after {waited:.2f}s, before the lease expired"
    spec = lease_of(cluster, lease_ns)
    assert spec["holder_identity"] == "standby" and spec["lease_transitions"] == 1
    assert not leader.try_acquire_or_renew(), "the old holder sees a live lease of someone else"
    assert not leader.is_leader()


def test_a_released_lease_is_taken_at_the_next_try(cluster: Any, lease_ns: str) -> None:
    leader, standby = elector(cluster, lease_ns, "leader"), elector(cluster, lease_ns, "standby")
    assert leader.try_acquire_or_renew()
    leader.release()
    assert not leader.is_leader()
    assert standby.try_acquire_or_renew(), "no lease duration to wait after a release"
    assert lease_of(cluster, lease_ns)["holder_identity"] == "standby"


def test_leader_that_cannot_renew_stops_before_the_standby_starts(cluster: Any, lease_ns: str) -> None:
    from kubernetes.client import ApiClient, Configuration

    leading, lost, standby_leads = threading.Event(), threading.Event(), threading.Event()
    stopped_at: list[float] = []
    leader = elector(cluster, lease_ns, "leader")
    leader.start(on_started=leading.set, on_stopped=lambda: (stopped_at.append(time.monotonic()), lost.set()))
    try:
        assert leading.wait(10)
        fenced = FencedPort(KubeClient(cluster.client), leader.is_leader)
        # The API server becomes unreachable for the leader (a real refused connection).
        unreachable = Configuration()
        unreachable.host = f"https://127.0.0.1:{procs.free_port()}"
        leader.api = KubeClient(ApiClient(unreachable), timeout=1)
        standby = elector(cluster, lease_ns, "standby")
        started_at: list[float] = []
        standby.start(on_started=lambda: (started_at.append(time.monotonic()), standby_leads.set()))
        assert lost.wait(SHORT["renew_deadline"] + 2 * SHORT["retry_period"] + 2), "the leader never gave up"
        assert not leader.is_leader()
        with pytest.raises(NotLeader):
            fenced.patch_status("PretrainJob", lease_ns, "any", {}, "1")
        assert standby_leads.wait(SHORT["lease_duration"] + 3)
        gap = started_at[0] - stopped_at[0]
        assert gap > 0, f"the standby started {-gap:.2f}s before the old leader stopped"
        assert lease_of(cluster, lease_ns)["holder_identity"] == "standby"
        standby.stop()
    finally:
        leader.stop()


# -- two operator processes ----------------------------------------------------------------------------
class Replica(OperatorProcess):
    def leads(self) -> bool:
        return self._probe("/leader")

    def ready(self) -> bool:
        return self._probe("/readyz")

    def _probe(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=2) as r:
                return bool(r.status == 200)
        except urllib.error.HTTPError as exc:
            if exc.code == 503:
                return False
            raise

    def reconciles(self) -> float:
        lines = [ln for ln in self.metrics().splitlines() if ln.startswith("forgeline_operator_reconcile_total{")]
        return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines)


@pytest.fixture
def log_level() -> str:
    return "info"  # debug (which logs every fenced write) where a test needs it: it costs CPU


@pytest.fixture
def replicas(cluster: Any, ns: str, tmp_path: Path, log_level: str) -> Iterator[list[Replica]]:
    args = [
        f"--store=file://{tmp_path / 'store'}",
        "--resync-seconds=5",
        "--trainer-metrics-port=0",
        f"--namespace={ns}",
        "--leader-elect",
        f"--leader-election-namespace={ns}",
        f"--lease-duration={SHORT['lease_duration']}",
        f"--renew-deadline={SHORT['renew_deadline']}",
        f"--retry-period={SHORT['retry_period']}",
        f"--log-level={log_level}",
    ]
    started = [Replica(args, cluster.env(), tmp_path / f"replica-{i}", name=f"forgeline-replica-{i}") for i in (0, 1)]
    try:
        for r in started:
            r.start()
        yield started
    finally:
        for r in started:
            r.stop()


def leader_and_standby(replicas: list[Replica]) -> tuple[Replica, Replica]:
    def one_leads() -> tuple[Replica, Replica] | None:
        leading = [r.leads() for r in replicas]
        return (replicas[leading.index(True)], replicas[leading.index(False)]) if sorted(leading) == [0, 1] else None

    return wait_for(one_leads, timeout=20, what="exactly one replica to lead")


def create(custom: Any, ns: str, body: dict[str, Any]) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURALS[body["kind"]], body)


def status(custom: Any, ns: str, name: str, kind: str = "PretrainJob") -> dict[str, Any]:
    return dict(custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURALS[kind], name).get("status") or {})


def wait_state(
    custom: Any, ns: str, name: str, state: str, replicas: list[Replica], kind: str = "PretrainJob", timeout: float = 60
) -> None:
    try:
        wait_for(
            lambda: status(custom, ns, name, kind).get("state") == state,
            timeout=timeout,
            what=f"{kind}/{name} {state}",
        )
    except AssertionError as exc:
        report = [
            f"{r.name}: exit {r.proc.popen.poll() if r.proc else 'killed'}\n{r.log(30) if r.proc else ''}"
            for r in replicas
        ]
        raise AssertionError("\n".join([str(exc), *report])) from None


def tuned(upstream: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LoRAJob",
        "metadata": {"name": "tuned"},  # no outcome label: kwok completes its pod
        "spec": {
            "model": {"fromJob": {"kind": "PretrainJob", "name": upstream}},
            "data": {"synthetic": {"examples": 100}},
            "resources": {"nodes": 1, "gpusPerNode": 1},
        },
    }


def parse_micro(text: Any) -> float:
    return (text if isinstance(text, datetime) else datetime.fromisoformat(str(text))).astimezone(UTC).timestamp()


def test_sigkill_of_the_leader_mid_pipeline_hands_over_to_the_standby(
    cluster: Any,
    ns: str,
    core: Any,
    custom: Any,
    replicas: list[Replica],
    tmp_path: Path,
    record_testsuite_property: Any,
) -> None:
    leader, standby = leader_and_standby(replicas)
    assert leader.ready() and standby.ready(), "both ready: the standby can take over"
    assert "forgeline_operator_leader 1.0" in leader.metrics()
    assert "forgeline_operator_leader 0.0" in standby.metrics()
    create(custom, ns, pretrain_manifest("base", outcome="hang"))
    create(custom, ns, tuned("base"))
    wait_state(custom, ns, "base", "Running", replicas)
    assert standby.reconciles() == 0, "a standby dispatches no reconcile pass"
    assert leader.reconciles() > 0

    killed = time.time()
    leader.kill()
    (pod,) = core.list_namespaced_pod(ns, label_selector="forgeline.io/job=base").items
    core.patch_namespaced_pod(pod.metadata.name, ns, {"metadata": {"labels": {OUTCOME_LABEL: "complete"}}})
    wait_for(standby.leads, timeout=SHORT["lease_duration"] + 5, what="the standby to lead")
    noticed = time.time()
    wait_state(custom, ns, "base", "Succeeded", replicas)
    wait_state(custom, ns, "tuned", "Succeeded", replicas, kind="LoRAJob", timeout=90)
    spec = lease_of(cluster, ns)
    assert spec["lease_transitions"] == 1
    failover = parse_micro(spec["acquire_time"]) - killed
    # The standby saw the last renewal at most a retry period before the kill (or after it), and
    # tries every retry period (jittered): lease duration +- about 1.2 retry periods, plus latency.
    expected = (
        SHORT["lease_duration"] - SHORT["retry_period"],
        SHORT["lease_duration"] + 2.4 * SHORT["retry_period"] + 1,
    )
    assert expected[0] <= failover < expected[1], f"failover {failover:.2f}s, expected {expected}"
    assert standby.reconciles() > 0
    figures = {
        "failover_seconds": round(failover, 3),
        "kill_to_leads_seen_seconds": round(noticed - killed, 3),
        **{f"{k}_seconds": v for k, v in SHORT.items()},
    }
    for key, value in figures.items():
        record_testsuite_property(key, value)
    (tmp_path / "failover.txt").write_text(json.dumps(figures) + "\n")


def test_a_stopped_leader_releases_the_lease_and_the_standby_leads_within_a_retry_period(
    cluster: Any, ns: str, replicas: list[Replica], record_testsuite_property: Any
) -> None:
    leader, standby = leader_and_standby(replicas)
    holder = lease_of(cluster, ns)["holder_identity"]
    stopped = time.monotonic()
    assert leader.proc is not None
    code = leader.proc.stop(grace=10)  # SIGTERM: kopf's clean-up stops the workers, then releases
    leader.proc = None
    assert code == 0, leader.logs()
    wait_for(standby.leads, timeout=SHORT["lease_duration"], what="the standby to lead")
    handover = time.monotonic() - stopped
    spec = lease_of(cluster, ns)
    assert spec["holder_identity"] not in (None, holder) and spec["lease_transitions"] == 1
    assert handover < SHORT["lease_duration"], f"hand-over took {handover:.2f}s: the lease was not released"
    # From the release to the standby's next try: at most a jittered retry period (plus latency).
    released, leads = logged_at(leader.logs(), "released lease"), logged_at(standby.logs(), " leads (lease")
    assert 0 < leads - released < JITTER * SHORT["retry_period"] + 0.5, (released, leads)
    record_testsuite_property("release_to_standby_leads_seconds", round(leads - released, 3))


def logged_at(log: str, text: str) -> float:
    """The time of the first log line containing `text` (the operator's asctime, local time)."""
    line = next(ln for ln in log.splitlines() if text in ln)
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


@pytest.mark.parametrize("log_level", ["debug"])
def test_a_leader_paused_past_its_lease_stops_and_never_writes_after_the_takeover(
    cluster: Any, ns: str, custom: Any, replicas: list[Replica]
) -> None:
    leader, standby = leader_and_standby(replicas)
    create(custom, ns, pretrain_manifest("first", outcome="hang"))
    wait_state(custom, ns, "first", "Running", replicas)
    assert leader.proc is not None
    proc = leader.proc
    proc.signal_group(signal.SIGSTOP)
    wait_for(lambda: Path(f"/proc/{proc.pid}/stat").read_text().split(") ")[1][0] == "T", timeout=5, what="stopped")
    paused_log = leader.log_path.stat().st_size  # stopped: its log cannot grow until it wakes
    try:
        wait_for(standby.leads, timeout=SHORT["lease_duration"] + 5, what="the standby to take the lease")
        # Work the paused leader will see the moment it wakes: a new job and a resync of the first.
        create(custom, ns, pretrain_manifest("second", outcome="hang"))
        wait_state(custom, ns, "second", "Running", replicas)
    finally:
        proc.signal_group(signal.SIGCONT)
    wait_for(
        lambda: proc.popen.poll() is not None, timeout=SHORT["retry_period"] * 2 + 5, what="the old leader to exit"
    )
    assert proc.popen.returncode == LOST_LEASE_EXIT
    woke = leader.log_path.read_text()[paused_log:]
    assert "lost lease" in woke, woke[-3000:]
    assert "leader write:" not in woke, f"the old leader wrote after waking:\n{woke[-3000:]}"
    assert standby.leads() and lease_of(cluster, ns)["lease_transitions"] == 1
    standby_log = standby.log_path.read_text()
    assert "leader write: create Job" in standby_log and f"{ns}/second" in standby_log
    jobs = client.BatchV1Api(cluster.client).list_namespaced_job(ns, label_selector="forgeline.io/job=second").items
    assert [j.metadata.name for j in jobs] == ["second-pretrain-a1"], "one attempt, one batch Job"
