"""The bridge plugin's verbs, top to bottom. Read ADD first:

    parse config -> reserve addresses (IPAM) -> plan -> apply, pushing an undo for each thing
    made -> on success drop the undos and return the result; on any error the undos run.

Rule: handlers take a `request.Request` and return a `Result` or None; they never print or exit.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable

from cni.bandwidth import ifb
from cni.bandwidth.options import describe as describe_shaping
from cni.bridge import apply, config
from cni.linux import links
from cni.bridge import ipam_client
from cni.spec import names
from cni.linux import netns
from cni.spec.errors import CNIError, InvalidConfig, InvalidEnvironment
from cni.spec.log import log
from cni.bridge.plan import final_dns, plan_add, result_routes
from cni.spec.result import Interface, IPConfig, Result
from cni.spec.request import Request, valid_attachments


def _undo(fn: Callable, *args: Any) -> None:
    try:
        fn(*args)
    except Exception as e:  # an undo must never hide the error that triggered it
        log.warning(f"rollback step {getattr(fn, '__name__', fn)} failed: {e}")


def _open_pod_netns(path: str) -> tuple[Any, int]:
    fd = -1
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return links.open_rtnl_in(path), fd
    except BaseException as e:
        if fd >= 0:
            os.close(fd)
        if isinstance(e, OSError):
            raise InvalidEnvironment("invalid CNI_NETNS",
                                     f"{path} is not a network namespace: {e.strerror}") from None
        raise


class _Problems:
    """DEL's record of what failed: every step runs whatever failed before it; the first failure is
    reported, the others are logged (nothing is lost)."""

    def __init__(self, what: str):
        self.what = what
        self.seen: list[tuple[str, Exception]] = []

    def run(self, step: str, fn: Callable, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as e:
            self.seen.append((step, e))
            return None

    def raise_first(self) -> None:
        if not self.seen:
            return
        for step, e in self.seen[1:]:
            log.warning(f"{self.what}: {step} also failed: {e}")
        step, first = self.seen[0]
        if isinstance(first, CNIError):
            raise first
        log.error(f"{self.what}: {step} failed: {first!r}")
        raise CNIError(f"failed to {step}", str(first)) from first


def firewall_spec(conf: config.NetConf, req: Request, pod_ips: list, deleting: bool = False) -> Any:
    """The attachment's firewall data. For DEL (`deleting`) the config may not name what ADD made
    (a DEL without the capability args ADD had): teardown also finds the elements by their tag,
    and removes what the reference plugins made for the pod."""
    from cni.firewall.rules import FirewallSpec  # lazy: per call, only what this command and config need

    return FirewallSpec(conf.name, req.container_id, req.ifname, tuple(pod_ips), conf.port_mappings,
                        conf.ip_masq, conf.firewall, exhaustive=conf.complete and not deleting,
                        reference=deleting)


def _may_map_ports(conf: config.NetConf, req: Request) -> bool:
    """Whether ADD may have made firewall elements for the pod: masquerade, mappings now, or a
    config that declares the portMappings capability (its DEL may come without them)."""
    caps = req.config.get("capabilities")
    return conf.wants_firewall or not conf.complete or (isinstance(caps, dict) and bool(caps.get("portMappings")))


class BridgePlugin:
    def add(self, req: Request) -> Result:
        if req.ifname == "lo":
            raise InvalidEnvironment("invalid interface name",
                                     "CNI_IFNAME lo is the pod's loopback; the bridge plugin adds a new interface")
        conf = config.parse(req.config, req.args)
        # `undo` unwinds first (rollback on error, emptied on success); `opened` always closes.
        with contextlib.ExitStack() as opened, contextlib.ExitStack() as undo:
            ipam = Result()
            if conf.ipam_type:
                ipam = ipam_client.add(conf, req)
                undo.callback(_undo, ipam_client.rollback, conf, req, ipam)
            plan = plan_add(conf, req.container_id, req.netns, req.ifname, ipam)

            pod, pod_fd = _open_pod_netns(req.netns)
            opened.callback(os.close, pod_fd)
            opened.callback(pod.close)
            if links.lookup(pod, req.ifname) is not None:
                raise CNIError(f"container already has an interface named {req.ifname}", req.netns)
            host = links.open_rtnl()
            opened.callback(host.close)

            bridge = apply.ensure_bridge(host, plan)
            apply.create_veth(host, plan, pod_fd)
            undo.callback(_undo, links.delete_link, host, plan.host_veth)
            veth = apply.attach_host_veth(host, plan, bridge)
            apply.ensure_bridge_addresses(host, bridge, plan)
            if conf.binds_port:
                from cni.firewall import portbind  # lazy: per call, only what this command and config need

                if conf.binds_port == portbind.STRICT:
                    portbind.harden_pod(req.netns, req.ifname)
            ctr = apply.configure_container(plan, pod)
            if conf.binds_port:
                undo.callback(_undo, _unbind, conf, req, ctr.mac, ipam)
                portbind.bind(portbind.Binding(conf.name, req.container_id, req.ifname, plan.host_veth,
                                               ctr.mac.lower(), tuple(ip.address.ip for ip in ipam.ips),
                                               conf.binds_port))
            apply.wait_port_up(host, veth.index)
            shaped = None
            if conf.shaping.any:
                from cni.bandwidth import apply as shaping  # lazy: pyroute2's tc messages only when shaping

                shaped = shaping.shape(host, veth.index, veth.name, veth.mtu, conf.shaping, conf.name,
                                    req.container_id, req.ifname, undo)
            if conf.wants_firewall:
                spec = firewall_spec(conf, req, [ip.address for ip in ipam.ips])
                # lazy: per call, only what this command and config need
                from cni.firewall import rules as firewall

                undo.callback(_undo, firewall.teardown, spec)
                firewall.setup(spec)
                if conf.port_mappings and conf.firewall.snat and spec.ips(4):
                    firewall.enable_route_localnet(conf.bridge)
            if conf.policy_dir:
                from cni.firewall import policy  # lazy: per call, only what this command and config need

                undo.callback(_undo, policy.forget, conf.policy_dir, conf.name, req.container_id, req.ifname)
                policy.admit(conf.policy_dir, conf.name, req.container_id, req.ifname, req.args,
                             [ip.address.ip for ip in ipam.ips])
            undo.pop_all()

        out = Result(
            interfaces=(
                Interface(bridge.name, bridge.mac, mtu=bridge.mtu or None),
                Interface(veth.name, veth.mac, mtu=veth.mtu or None),
                Interface(ctr.name, ctr.mac, sandbox=req.netns, mtu=ctr.mtu or None),
            ) + ((shaped,) if shaped else ()),
            ips=tuple(IPConfig(ip.address, ip.gateway, interface=2) for ip in ipam.ips),
            routes=result_routes(conf, ipam),
            dns=final_dns(conf, ipam),
        )
        log.info(f"added {req.ifname} {[str(i.address) for i in out.ips]} on {conf.bridge}"
                 + (f", shaped {describe_shaping(conf.shaping)}" if conf.shaping.any else ""))
        return out

    def delete(self, req: Request) -> None:
        conf = config.parse_for_delete(req.config, req.args)
        problems = _Problems(f"DEL {req.container_id}/{req.ifname}")
        pod_ips = [ip.address for ip in conf.prev_result.ips] if conf.prev_result else []
        # the pod is only read when prevResult does not give its addresses (the firewall and the
        # neighbour entries need them) or the host veth has another plugin's name: its interface
        # goes with the host veth
        pod: list = []
        if not pod_ips and netns.exists(req.netns):
            pod.append(problems.run("look at the pod interface", apply.pod_end, req.netns, req.ifname))
            pod_ips = [a for a in pod[0].addresses if not a.ip.is_link_local] if pod[0] else []
        # the veth first: a veth unregistered while an nftables commit that deletes elements
        # waits for the kernel's RCU readers (5-15 ms) waits with it; the two transactions after
        # it run side by side
        problems.run("delete the host veth", _delete_host_veth, conf, req, pod, pod_ips)
        finish_firewall = None
        if _may_map_ports(conf, req):
            # lazy: per call, only what this command and config need
            from cni.firewall import rules as firewall

            finish_firewall = problems.run("remove firewall rules", firewall.teardown_start,
                                           firewall_spec(conf, req, pod_ips, deleting=True))
        # the port's binding goes in the policy removal's transaction when it can be named (one
        # kernel wait, not two), else in its own
        unbind = (problems.run("unbind the bridge port", _unbind_script, conf, req) or "") if conf.binds_port else ""
        finish_policy = None
        if conf.policy_dir:     # before the addresses are released: a reused one starts clean
            from cni.firewall import policy  # lazy: per call, only what this command and config need

            finish_policy = problems.run("leave network policy sets", policy.forget_start, conf.policy_dir,
                                         conf.name, req.container_id, req.ifname, unbind)
        finish_binding = None
        if conf.binds_port and finish_policy is None:
            finish_binding = problems.run("unbind the bridge port", _unbind_start, conf, req)
        unbound = False
        if finish_policy is not None:
            unbound = problems.run("leave network policy sets", finish_policy) is True
        if finish_firewall is not None:
            problems.run("remove firewall rules", finish_firewall)
        if conf.binds_port and finish_policy is not None and not unbound:
            finish_binding = problems.run("unbind the bridge port", _unbind_start, conf, req)
        if finish_binding is not None:
            problems.run("unbind the bridge port", finish_binding)
        if conf.ipam_type:
            problems.run("release addresses", ipam_client.delete, conf, req)
        problems.raise_first()
        log.info(f"deleted {req.ifname}")

    def check(self, req: Request) -> None:
        conf = config.parse(req.config, req.args)
        prev = conf.prev_result
        if prev is None:
            raise InvalidConfig("Required prevResult missing", "CHECK needs the result of ADD")
        # lazy: per call, only what this command and config need
        from cni.bridge.check import check_attachment

        ours = check_attachment(conf, req, prev)
        _check_shaping(conf, req)
        if conf.wants_firewall and not ours:    # the reference made the pod: its chains
            from cni.firewall import reference  # lazy: per call, only what this command and config need

            reference.check(conf.name, req.container_id, conf.ip_masq, bool(conf.port_mappings))
        elif conf.wants_firewall:
            # lazy: per call, only what this command and config need
            from cni.firewall import rules as firewall

            firewall.check(firewall_spec(conf, req, [ip.address for ip in prev.ips]))
        if conf.ipam_type:
            ipam_client.check(conf, req, [ip.address.ip for ip in prev.ips])

    def status(self, req: Request) -> None:
        conf = config.parse(req.config, req.args)
        from cni.firewall import hostcheck  # lazy: per call, only what this command and config need

        problems = hostcheck.kernel_problems(ipv6=_configures_ipv6(conf.ipam))
        capabilities = req.config.get("capabilities")
        maps_ports = isinstance(capabilities, dict) and capabilities.get("portMappings") is True
        if conf.ip_masq or maps_ports:
            problems += hostcheck.firewall_problems(conf.firewall.backend)
        hostcheck.require(problems)
        if conf.ipam_type:
            ipam_client.status(conf, req)
        log.info(f"ready; helper {req.helper_state()}")

    def gc(self, req: Request) -> None:
        conf = config.parse(req.config, req.args)
        valid = valid_attachments(req.config)
        host = links.open_rtnl()
        try:
            keep = {names.attachment_hash(conf.name, cid, ifname) for cid, ifname in valid}
            for veth, att in apply.attachments_on_host(host, conf.name):
                if att not in keep:
                    log.info(f"gc: removing {veth} (attachment {att[:16]})")
                    links.delete_link(host, veth)
            ifb.gc(host, conf.name, keep)
        finally:
            host.close()
        from cni.firewall import rules as firewall  # lazy: per call, only what this command and config need

        firewall.gc(conf.name, valid)
        from cni.firewall import portbind  # lazy: per call, only what this command and config need

        portbind.gc(conf.name, keep)
        if conf.policy_dir:
            from cni.firewall import policy  # lazy: per call, only what this command and config need

            policy.gc(conf.policy_dir, conf.name, keep)
        if conf.ipam_type:
            ipam_client.gc(conf, req, sorted(valid))


def _binding_args(conf: config.NetConf, req: Request, mac: str = "", ipam: Result | None = None) -> tuple:
    """(network, id, ifname, MAC, addresses, level) of the port's binding: the pod's MAC and
    addresses from prevResult (or ADD's rollback); empty when unknown (found by tag then)."""
    prev = ipam or conf.prev_result
    ips = tuple(ip.address.ip for ip in prev.ips) if prev else ()
    if not mac and conf.prev_result:
        mac = next((i.mac for i in conf.prev_result.interfaces
                    if i.sandbox and i.name == req.ifname and i.mac), "")
    return conf.name, req.container_id, req.ifname, mac or "", ips, conf.binds_port


def _unbind_script(conf: config.NetConf, req: Request) -> str:
    from cni.firewall import portbind  # lazy: per call, only what this command and config need

    return portbind.delete_script(*_binding_args(conf, req))


def _unbind_start(conf: config.NetConf, req: Request, mac: str = "", ipam: Result | None = None):
    """Start removing the port's binding (named, or found by its tag)."""
    from cni.firewall import portbind  # lazy: per call, only what this command and config need

    return portbind.unbind_start(*_binding_args(conf, req, mac, ipam))


def _unbind(conf: config.NetConf, req: Request, mac: str, ipam: Result) -> None:
    _unbind_start(conf, req, mac, ipam)()


def _delete_host_veth(conf: config.NetConf, req: Request, pod: list, pod_ips: list) -> None:
    """pycni's host veth by its name (its qdiscs go with it); else (another plugin made the pod:
    the reference names it vethXXXXXXXX) the host end the pod's interface names as its peer. Then
    the attachment's ifb device if it has one (looked for whatever the config says now: the rates
    may have changed since ADD; looked up before the veth goes, so an unshaped pod's DEL sends
    nothing after the veth's unregistration), and the neighbour entries of the pod's addresses on
    the bridge, so that the next owner of an address is reached at once."""
    host = links.open_rtnl()
    try:
        shaped = ifb.own_ifb(host, conf.name, req.container_id, req.ifname)
        if not apply.delete_host_veth(host, conf.name, req.container_id, req.ifname) and netns.exists(req.netns):
            if not pod:
                pod.append(apply.pod_end(req.netns, req.ifname))
            end = apply.host_end(host, pod[0], conf.bridge) if pod[0] else None
            if end is not None:
                name = links.attr(end, "IFLA_IFNAME", "")
                log.info(f"{name} is the host end of {req.ifname} (not pycni's name): removing it")
                links.delete_link(host, name, until="unregistered")
        if shaped is not None:
            ifb.delete(host, shaped)
        if pod_ips:
            links.flush_neighbours(host, conf.bridge, [a.ip for a in pod_ips])
    finally:
        host.close()


def _check_shaping(conf: config.NetConf, req: Request) -> None:
    """CHECK: the host veth shaped as the config asks, and not shaped when it asks for nothing."""
    from cni.bandwidth import apply as shaping  # lazy: pyroute2's tc messages, CHECK only

    host = links.open_rtnl()
    try:
        veth = links.lookup(host, names.host_veth_name(conf.name, req.container_id, req.ifname))
        if veth is not None:
            shaping.check(host, veth["index"], conf.shaping, conf.name, req.container_id, req.ifname)
    finally:
        host.close()


def _configures_ipv6(ipam: Any) -> bool:
    """Whether the IPAM section names an IPv6 subnet (host-local layout: ranges or subnet)."""
    if not isinstance(ipam, dict):
        return False
    subnets = [ipam.get("subnet")]
    for rangeset in ipam.get("ranges") or ():
        if isinstance(rangeset, list):
            subnets += [r.get("subnet") for r in rangeset if isinstance(r, dict)]
    return any(isinstance(s, str) and ":" in s for s in subnets)
