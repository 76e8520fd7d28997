"""Keeps the node's policy table in step with the cluster: three watches (Pods, Namespaces,
NetworkPolicies) hand their objects to `update`; `run` syncs once all three have been listed,
then once per burst of changes (a short settle time folds an event storm into one transaction),
and at least every `every` seconds (which repairs drift, e.g. a flushed ruleset).

Until the first full sync the table the kernel already holds stays in force: an agent restart
leaves no gap, and the first sync reconciles."""

from __future__ import annotations

import threading
import time
from typing import Callable

from cni.agent.policy import enforce
from cni.agent.policy.objects import (Policy, PolicyError, Selector, parse_namespace, parse_pod, parse_policy,
                                      parse_selector)
from cni.agent.watch import follow_objects, lister
from cni.spec.log import log

KINDS = ("pods", "namespaces", "networkpolicies")


def _policy(obj: dict) -> Policy | None:
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
        return Policy(meta.get("namespace") or "default", meta.get("name") or "?", selector, (), ())


def parse_all(objects: dict[str, dict]) -> tuple[list, list, dict]:
    policies = [p for p in map(_policy, objects["networkpolicies"].values()) if p is not None]
    pods = []
    for obj in objects["pods"].values():
        try:
            pod = parse_pod(obj)
        except PolicyError as e:
            log.error(f"agent: ignoring a pod: {e}")
            continue
        if pod is not None:
            pods.append(pod)
    namespaces = dict(parse_namespace(o) for o in objects["namespaces"].values())
    return policies, pods, namespaces


class PolicyLoop:
    def __init__(self, node: str, state_dir: str, every: float = 60.0, settle: float = 0.02,
                 on_sync: Callable[[enforce.Outcome], None] | None = None, metrics=None,
                 mine: Callable[[], enforce.Local] = enforce.Local):
        self.node, self.state_dir, self.every, self.settle = node, state_dir, every, settle
        self.objects: dict[str, dict | None] = {k: None for k in KINDS}
        self.cond = threading.Condition()
        self.changed = False
        self.changed_at: float | None = None     # the first change not in the kernel yet
        self.on_sync = on_sync
        self.metrics = metrics
        self.mine = mine        # this node's ranges and IPAM holdings, read at each sync

    def update(self, kind: str, objects: dict) -> None:
        with self.cond:
            self.objects[kind] = objects
            self.changed = True
            if self.changed_at is None:
                self.changed_at = time.monotonic()
            self.cond.notify()

    def run(self, stop: Callable[[], bool] = lambda: False) -> None:
        last = 0.0
        while not stop():
            with self.cond:
                self.cond.wait_for(lambda: self.changed or stop(), timeout=max(0.1, self.every - (time.monotonic() - last)))
                if stop():
                    return
                if any(v is None for v in self.objects.values()):
                    continue        # not everything listed yet: the kernel's table stays as it is
                if not self.changed and time.monotonic() - last < self.every:
                    continue
            time.sleep(self.settle)
            with self.cond:
                snapshot = dict(self.objects)
                self.changed = False
                changed_at, self.changed_at = self.changed_at, None
            m = self.metrics
            try:
                outcome = enforce.sync(self.state_dir, self.node, *parse_all(snapshot), mine=self.mine())
            except Exception as e:      # the table in the kernel stays; try again soon
                if m is not None:
                    m.sync_errors.labels("network policy").inc()
                with self.cond:
                    self.changed_at = min(changed_at or time.monotonic(), self.changed_at or time.monotonic())
                log.error(f"agent: network policy sync failed: {type(e).__name__}: {e}")
                print(f"agent: network policy sync failed: {e}", flush=True)
                with self.cond:
                    self.changed = True
                time.sleep(1.0)
                continue
            last = time.monotonic()
            if m is not None:
                c = outcome.compiled
                m.sync_seconds.labels("network policy").observe(outcome.seconds)
                if changed_at is not None:
                    m.policy_latency.observe(last - changed_at)
                m.policies.set(c.policies)
                m.policy_rules.set(c.rule_count())
                m.policy_elements.set(c.element_count())
                m.policy_pending.set(outcome.pending)
                m.ready["network policy"] = True
            if self.on_sync is not None:
                self.on_sync(outcome)


def start(node: str, state_dir: str, stop: Callable[[], bool] = lambda: False, metrics=None,
          mine: Callable[[], enforce.Local] = enforce.Local) -> PolicyLoop:
    """The watches and the loop, each in a daemon thread (the API client must be configured)."""
    loop = PolicyLoop(node, state_dir, on_sync=lambda outcome: print(outcome.summary(), flush=True),
                      metrics=metrics, mine=mine)
    for kind in KINDS:
        threading.Thread(target=follow_objects, name=f"watch-{kind}", daemon=True,
                         args=(lister(kind), lambda objs, k=kind: loop.update(k, objs), stop, kind)).start()
    thread = threading.Thread(target=loop.run, name="policy", daemon=True, args=(stop,))
    thread.start()
    if metrics is not None:
        metrics.alive["network policy"] = thread.is_alive
    return loop
