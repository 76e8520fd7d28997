"""The policy loop's timing (cni.agent.policy.loop.PolicyLoop) with stand-in followers and sync:
a full sync after a change, nothing when nothing changed and the table is in place, a sync as
soon as the cheap look finds the table gone; Pods followed only while a policy exists."""

from __future__ import annotations

import threading
import time

from cni.agent.policy.loop import PolicyLoop


class Follower:
    def __init__(self, kind, on_change, objects):
        self.kind, self.on_change, self.objects = kind, on_change, objects
        self.listed, self.stopped = True, False

    def snapshot(self):
        return list(self.objects.values())

    def stop(self):
        self.stopped = True


def make(policies: dict, present, **kw):
    made: dict[str, Follower] = {}
    syncs: list[tuple] = []

    def follow(kind, on_change):
        f = made[kind] = Follower(kind, on_change, {"namespaces": {("", "x"): ("x", {})},
                                                    "networkpolicies": policies, "pods": {}}[kind])
        on_change()
        return f

    loop = PolicyLoop("me", "/nonexistent", follow, settle=0.0, sync=lambda *parts: syncs.append(parts),
                      present=present, **kw).start()
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop.is_set,), daemon=True)
    thread.start()
    return loop, made, syncs, stop


def wait(cond, timeout=3.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    return cond()


def test_a_gone_table_is_written_again_at_the_next_look_and_nothing_else_is_done():
    there = [True]
    looks = []

    def present():
        looks.append(time.monotonic())
        return there[0]

    loop, made, syncs, stop = make({}, present, every=3600, check_every=0.2)
    try:
        assert wait(lambda: len(syncs) == 1)          # the first sync, once everything is listed
        assert wait(lambda: len(looks) >= 3)
        assert len(syncs) == 1                        # looks only: the table is there
        there[0] = False
        assert wait(lambda: len(syncs) == 2)          # gone: written again
        there[0] = True
        made["namespaces"].on_change()                # a change: synced at once
        assert wait(lambda: len(syncs) == 3)
    finally:
        stop.set()


def test_pods_are_followed_while_a_policy_exists():
    policies: dict = {}
    loop, made, syncs, stop = make(policies, lambda: True, every=3600, check_every=3600, linger=0.2)
    try:
        assert wait(lambda: len(syncs) == 1) and "pods" not in made
        assert syncs[0][1] == []
        policies[("x", "p")] = "a policy"
        made["networkpolicies"].on_change()
        assert wait(lambda: "pods" in made and len(syncs) == 2)
        pods = made["pods"]
        policies.clear()
        made["networkpolicies"].on_change()
        assert wait(lambda: pods.stopped) and loop.followers["pods"] is None
    finally:
        stop.set()
