"""Keeps the node's policy table in step with the cluster. Followers (cni.agent.watch) of
NetworkPolicies and Namespaces, and of Pods only while some NetworkPolicy exists, hold their
objects already parsed; `run` syncs once what it needs has been listed, then once per burst of
changes (a short settle time folds an event storm into one transaction), and at least every
`every` seconds (which repairs any drift); every `check_every` seconds in between it only asks
whether the table is still in the kernel (a flushed ruleset is put back then, not minutes later):
at 30,000 pods a full sync costs ~0.5-1 s of CPU, the look ~1 ms.

No NetworkPolicy in the cluster: no pod is isolated, so no Pod is needed. The Pod watch starts
with the first policy (that first policy is enforced once the Pods are listed) and stops `linger`
seconds after the last one is gone: a cluster without policies costs the agent nothing per pod.

Until the first full sync the table the kernel already holds stays in force: an agent restart
leaves no gap, and the first sync reconciles."""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable

from cni.agent.policy import enforce
from cni.agent.policy.objects import (Policy, PolicyError, Selector, parse_namespace, parse_pod,
                                      parse_policy, parse_selector)
from cni.agent.shutdown import Stopping, Writers
from cni.agent.watch import Follower
from cni.spec.log import log

KINDS = ("pods", "namespaces", "networkpolicies")
LINGER = 60.0       # seconds the Pod watch outlives the last policy (a policy re-created soon after)
EVERY = 300.0       # a full sync at least this often, changes or not (repairs any drift)
CHECK_EVERY = 60.0  # between those, this often a cheap look: is the table still there (a flushed ruleset)?


def policy_value(obj: dict) -> Policy:
    try:
        return parse_policy(obj)
    except PolicyError as e:
        # fail closed: a policy we cannot read isolates what it selects, in both directions
        meta = obj.get("metadata") or {}
        try:
            selector = parse_selector((obj.get("spec") or {}).get("podSelector"), "podSelector")
        except PolicyError:
            selector = Selector()
        log.error(f"agent: network policy {meta.get('namespace')}/{meta.get('name')}: {e}: "
                  "enforced as deny-all for the pods it selects")
        return Policy(sys.intern(meta.get("namespace") or "default"), meta.get("name") or "?", selector, (), ())


PARSE = {"pods": parse_pod, "namespaces": parse_namespace, "networkpolicies": policy_value}


class PolicyLoop:
    """`follow(kind, on_change)` makes and starts a follower of `kind` (cni.agent.watch.Follower,
    or a test's); `sync(policies, pods, namespaces)` applies one state (default: enforce.sync)."""

    def __init__(self, node: str, state_dir: str, follow: Callable, every: float = EVERY, settle: float = 0.02,
                 on_sync: Callable[[enforce.Outcome], None] | None = None, metrics=None,
                 sync: Callable | None = None, linger: float = LINGER, writers: Writers | None = None,
                 check_every: float = CHECK_EVERY, present: Callable[[], bool] | None = None,
                 mine: Callable[[], enforce.Local] = enforce.Local):
        self.node, self.state_dir, self.every, self.settle, self.linger = node, state_dir, every, settle, linger
        self.check_every = check_every
        self.present = present or enforce.table_present
        self.follow = follow
        self.sync = sync or (lambda *parts: enforce.sync(self.state_dir, self.node, *parts, mine=self.mine()))
        self.writers = writers or Writers()
        self.cond = threading.Condition()
        self.changed = False
        self.changed_at: float | None = None     # the first change not in the kernel yet
        self.on_sync = on_sync
        self.metrics = metrics
        self.followers: dict[str, object | None] = {k: None for k in KINDS}
        self.no_policies_since: float | None = None
        self.pod_watches = 0                      # Pod watches started (for the tests)
        self.mine = mine        # this node's ranges and IPAM holdings, read at each sync

    def start(self) -> "PolicyLoop":
        for kind in ("namespaces", "networkpolicies"):
            self.followers[kind] = self.follow(kind, self.on_change)
        return self

    def on_change(self) -> None:
        with self.cond:
            self.changed = True
            if self.changed_at is None:
                self.changed_at = time.monotonic()
            self.cond.notify()

    def _steer_pods(self) -> float | None:
        """Start or stop the Pod watch as policies come and go; returns when to look again."""
        pols = self.followers["networkpolicies"]
        if pols is None or not pols.listed:
            return None
        pods = self.followers["pods"]
        if pols.objects:
            self.no_policies_since = None
            if pods is None:
                self.pod_watches += 1
                print("agent: a NetworkPolicy exists: watching Pods", flush=True)
                self.followers["pods"] = self.follow("pods", self.on_change)
            return None
        if pods is None:
            return None
        now = time.monotonic()
        if self.no_policies_since is None:
            self.no_policies_since = now
        if now - self.no_policies_since < self.linger:
            return self.no_policies_since + self.linger - now
        pods.stop()
        self.followers["pods"] = None
        print(f"agent: no NetworkPolicy for {self.linger:.0f} s: Pods no longer watched", flush=True)
        return None

    def inputs(self) -> tuple[list, list, dict] | None:
        """What a sync needs, or None while some of it has not been listed yet."""
        pols, nss, pods = (self.followers[k] for k in ("networkpolicies", "namespaces", "pods"))
        if pols is None or nss is None or not pols.listed or not nss.listed:
            return None
        policies = pols.snapshot()
        if pods is None:
            if policies:
                return None          # the Pod watch is about to start
            pod_list = []
        elif not pods.listed:
            return None
        else:
            pod_list = pods.snapshot()
        return policies, pod_list, dict(nss.snapshot())

    def run(self, stop: Callable[[], bool] = lambda: False) -> None:
        last = checked = 0.0
        try:
            while not stop():
                with self.cond:
                    look_again = self._steer_pods()
                    now = time.monotonic()
                    wait = max(0.1, min(self.every - (now - last), self.check_every - (now - checked)))
                    if look_again is not None:
                        wait = min(wait, max(0.1, look_again))
                    self.cond.wait_for(lambda: self.changed or stop(), timeout=wait)
                    if stop():
                        return
                    self._steer_pods()
                    if self.inputs() is None:
                        continue        # not everything listed yet: the kernel's table stays as it is
                    due = self.changed or time.monotonic() - last >= self.every
                if not due and last and time.monotonic() - checked >= self.check_every:
                    checked = time.monotonic()
                    due = not self.present()
                    if due:
                        log.error("agent: the network policy table is gone from the kernel: writing it again")
                if not due:
                    continue
                time.sleep(self.settle)
                with self.cond:
                    self._steer_pods()
                    parts = self.inputs()
                    if parts is None:
                        continue
                    self.changed = False
                    changed_at, self.changed_at = self.changed_at, None
                if not self._sync(parts, changed_at):
                    time.sleep(1.0)
                    continue
                last = checked = time.monotonic()
        except Stopping:
            return

    def _sync(self, parts, changed_at: float | None) -> bool:
        with self.writers.writing():     # a SIGTERM now waits for it, its report included
            return self._sync_once(parts, changed_at)

    def _sync_once(self, parts, changed_at: float | None) -> bool:
        m = self.metrics
        try:
            outcome = self.sync(*parts)
        except Exception as e:      # the table in the kernel stays; try again soon
            if m is not None:
                m.sync_errors.labels("network policy").inc()
            log.error(f"agent: network policy sync failed: {type(e).__name__}: {e}")
            print(f"agent: network policy sync failed: {e}", flush=True)
            with self.cond:
                self.changed = True
                self.changed_at = min(changed_at or time.monotonic(), self.changed_at or time.monotonic())
            return False
        done = time.monotonic()
        if m is not None and outcome is not None:
            c = outcome.compiled
            m.sync_seconds.labels("network policy").observe(outcome.seconds)
            if changed_at is not None:
                m.policy_latency.observe(done - changed_at)
            m.policies.set(c.policies)
            m.policy_rules.set(c.rule_count())
            m.policy_elements.set(c.element_count())
            m.policy_pending.set(outcome.pending)
            m.ready["network policy"] = True
        if self.on_sync is not None:
            self.on_sync(outcome)
        return True


def start(cluster, node: str, state_dir: str, stop: Callable[[], bool] = lambda: False, metrics=None,
          writers: Writers | None = None, linger: float = LINGER,
          mine: Callable[[], enforce.Local] = enforce.Local) -> PolicyLoop:
    """The followers and the loop, each in a daemon thread. `mine()`: this node's pod ranges and
    the addresses its IPAM holds, read at each sync (an API address counts only while held)."""
    def follow(kind: str, on_change: Callable[[], None]):
        return Follower(cluster, kind, PARSE[kind], on_change, until=stop).start()

    loop = PolicyLoop(node, state_dir, follow, on_sync=lambda outcome: print(outcome.summary(), flush=True),
                      metrics=metrics, writers=writers, linger=linger, mine=mine).start()
    thread = threading.Thread(target=loop.run, name="policy", daemon=True, args=(stop,))
    thread.start()
    if metrics is not None:
        metrics.alive["network policy"] = thread.is_alive
    return loop
