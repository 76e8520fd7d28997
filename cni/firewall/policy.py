"""The plugin's half of NetworkPolicy: at ADD a pod's addresses join the nftables sets the agent
computed for it, before the ADD returns (so the pod is enforced from its first packet and
reachable as its policies allow without waiting for the API to publish its address); at DEL they
leave them, so a reused address never inherits a former pod's verdicts.

The state directory (`networkPolicy` in the config, the agent's `--policy-dir`, default
/run/pycni/policy) is shared with the agent, under one flock (`lock`):

    enforcing               exists while the agent's table (TABLE) is in place
    pods/<ns>/<name>        the sets a pod belongs to, [[family, set, suffix], ...] (agent-written)
    open-namespaces/<ns>    the namespace exists and no policy is in it (agent-written)
    attachments/<hash>      what ADD added for an attachment: pod, addresses, elements (plugin-
                            written; the agent rewrites the elements whenever it changes them)

A pod the agent has not classified yet goes to the `pending` sets (denied both ways) unless its
namespace is open: enforcement fails closed. Nothing happens for a call without
K8S_POD_NAMESPACE/K8S_POD_NAME (not a Kubernetes pod: no policy can select it).
"""

from __future__ import annotations

import os

from cni.linux import flock
from cni.spec import jsonio, names
from cni.spec.errors import CNIError, TryAgainLater
from cni.spec.log import log

TABLE = "inet pycni-policy"
DEFAULT_DIR = "/run/pycni/policy"
LOCK_WAIT = 30.0
PENDING = ((4, "pending4", ""), (6, "pending6", ""))


def safe_name(text: str) -> bool:
    """A Kubernetes object name fit to be one path component."""
    return bool(text) and len(text) <= 253 and "/" not in text and text not in (".", "..") \
        and "\0" not in text


def record_name(network: str, container_id: str, ifname: str) -> str:
    return names.attachment_hash(network, container_id, ifname)


class Locked:
    """The state directory's flock, held for one read-modify-apply."""

    def __init__(self, state_dir: str, wait: float = LOCK_WAIT):
        self.dir, self.wait = state_dir, wait
        self.fd = -1

    def __enter__(self) -> "Locked":
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self.fd = os.open(os.path.join(self.dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if not flock.acquire(self.fd, self.wait):
            os.close(self.fd)
            raise TryAgainLater("network policy state is busy", f"waited {self.wait:.0f} s for {self.dir}/lock")
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


def read_json(path: str):
    try:
        with open(path, "rb") as f:
            return jsonio.loads(f.read())
    except FileNotFoundError:
        return None
    except ValueError as e:
        log.warning(f"network policy: unreadable {path}: {e}")
        return None


def write_json(path: str, value) -> None:
    """Atomic replace: a reader sees the old file or the new one."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(jsonio.dumps(value).encode())
    os.replace(tmp, path)


def elements_of(members, ips) -> list[list[str]]:
    return [[s, f"{ip}{suffix}"] for fam, s, suffix in members for ip in ips if ip.version == fam]


def render_add(elements) -> str:
    return "".join(f"add element {TABLE} {s} {{ {e} }}\n" for s, e in elements)


def render_remove(elements) -> str:
    """Re-add, then delete: the transaction succeeds whether or not an element is still there."""
    return "".join(f"add element {TABLE} {s} {{ {e} }}\ndelete element {TABLE} {s} {{ {e} }}\n"
                   for s, e in elements)


def admit(state_dir: str, network: str, container_id: str, ifname: str, args, ips) -> None:
    ns, pod = args.get("K8S_POD_NAMESPACE", ""), args.get("K8S_POD_NAME", "")
    if not (safe_name(ns) and safe_name(pod)) or not ips:
        return
    from cni.firewall import nft  # lazy: nft only when a policy set is written

    with Locked(state_dir):
        members = read_json(os.path.join(state_dir, "pods", ns, pod))
        if not isinstance(members, list):
            open_ns = os.path.exists(os.path.join(state_dir, "open-namespaces", ns))
            members = [] if open_ns else PENDING
        elements = elements_of(members, ips)
        write_json(os.path.join(state_dir, "attachments", record_name(network, container_id, ifname)),
                   {"pod": [ns, pod], "network": network, "ips": [str(ip) for ip in ips], "elements": elements})
        if elements and os.path.exists(os.path.join(state_dir, "enforcing")):
            proc = nft.transaction(render_add(elements), check=False)
            if proc.returncode != 0:
                raise CNIError("cannot apply network policy to the pod",
                               f"{TABLE}: {proc.stderr.decode(errors='replace').strip()[:500]}")
        log.info(f"network policy: {ns}/{pod} in {len(elements)} set elements"
                 + (" (pending: not classified yet)" if members is PENDING else ""))


def forget_start(state_dir: str, network: str, container_id: str, ifname: str, also: str = ""):
    """Start removing the attachment's elements; returns `finish()`, which waits until the removal
    is in force and drops the record. Started before the veth is deleted, the two overlap.
    `also`: more nft commands for the same transaction (DEL's port unbinding: one kernel wait
    instead of two); `finish()` says whether they were committed (else the caller runs them)."""
    return forget_start_by_name(state_dir, record_name(network, container_id, ifname), also)


def forget_start_by_name(state_dir: str, name: str, also: str = ""):
    path = os.path.join(state_dir, "attachments", name)
    if not os.path.exists(path):
        return lambda: False
    from cni.firewall import nft  # lazy: nft only when a policy set is written

    lock = Locked(state_dir).__enter__()
    try:
        record = read_json(path)
        elements = (record.get("elements") or []) if isinstance(record, dict) else []
        wait = None
        if elements and os.path.exists(os.path.join(state_dir, "enforcing")):
            wait = nft.start_transaction(render_remove(elements) + also, "policy-del")
    except BaseException:
        lock.__exit__(None, None, None)
        raise

    def finish() -> bool:
        """Returns once the removal is done (see `nft.start_transaction`): whether `also` was
        committed with it."""
        done = False
        try:
            if wait is not None:
                status = wait()
                done = status == 0 and bool(also)
                if status != 0:         # a set gone (table flushed by hand?): each element alone
                    log.warning(f"network policy: removing {len(elements)} elements failed ({status}): "
                                "one at a time")
                    for element in elements:
                        nft.transaction(render_remove([element]), check=False)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        finally:
            lock.__exit__(None, None, None)
        return done

    return finish


def forget(state_dir: str, network: str, container_id: str, ifname: str) -> None:
    forget_start(state_dir, network, container_id, ifname)()


def read_records(state_dir: str, network: str | None = None) -> dict[str, dict]:
    """The attachment records (name -> record) in the state dir, of `network` when given (records
    written before they named their network count as any network's)."""
    base = os.path.join(state_dir, "attachments")
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return {}
    out = {}
    for name in names:
        if name.endswith(".tmp"):
            continue
        rec = read_json(os.path.join(base, name))
        if not (isinstance(rec, dict) and isinstance(rec.get("pod"), list) and len(rec["pod"]) == 2):
            continue
        if network is None or rec.get("network") in (None, network):
            out[name] = rec
    return out


def gc(state_dir: str, network: str, keep: set[str]) -> None:
    """Forget the attachments of `network` whose record is not in `keep` (attachment hashes):
    a DEL that never came must not leave a pod's verdicts on an address IPAM hands out again."""
    for name, record in read_records(state_dir, network).items():
        if name not in keep:
            log.info(f"gc: network policy record {name[:16]} ({'/'.join(record['pod'])})")
            forget_start_by_name(state_dir, name)()
