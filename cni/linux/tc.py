"""Traffic control over rtnetlink: the qdiscs, the filter and the ifb device of per-pod shaping.

Why this module is separate and imported only when a call shapes: pyroute2's `tcmsg` class lives
in the `__init__` of `pyroute2.netlink.rtnl.tcmsg`, which imports every qdisc, classifier and
action module pyroute2 has (cls_basic pulls in `dataclasses` through rt_files): ~20-30 ms here.
As `cni.linux.rtnl` does for the pyroute2 package, the tcmsg package is entered bare (its
submodules import, its `__init__` does not run until a name it defines is asked for) and only the
three plugins shaping uses are imported: tbf, ingress and u32 (whose actions bring mirred), ~3-4 ms.
`tcmsg` below is the kernel's `struct tcmsg` with pyroute2's attribute map, dispatching TCA_OPTIONS
to those three (tests/unit/test_tc_messages.py compares it with pyroute2's own class).

Rule: like `cni.linux.rtnl`, every function raises `NetlinkError` (errno in `.code`); callers in
`cni.bandwidth.apply` decide what an errno means. Nothing here decides rates or names.
"""

from __future__ import annotations

import socket
import sys
import types
from typing import Any

from cni.linux import rtnl
from cni.linux.rtnl import NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkError

RTM_NEWQDISC, RTM_DELQDISC, RTM_GETQDISC = 36, 37, 38
RTM_NEWTFILTER, RTM_DELTFILTER, RTM_GETTFILTER = 44, 45, 46
TC_H_ROOT, TC_H_INGRESS = 0xFFFFFFFF, 0xFFFFFFF1
INGRESS_HANDLE = 0xFFFF0000          # the ingress qdisc's handle is always ffff:
ETH_P_ALL = 0x0003
TCA_TBF_RATE64 = 4


def _bare_tcmsg_package() -> types.ModuleType:
    """`pyroute2.netlink.rtnl.tcmsg` as a package whose submodules import without its `__init__`.
    Asking it for any name its `__init__` defines (`tcmsg`, `plugins`, ...: what another user of
    pyroute2 in this process would import) first runs the real `__init__` in this same module."""
    name = "pyroute2.netlink.rtnl.tcmsg"
    if name in sys.modules:
        return sys.modules[name]
    parent = sys.modules["pyroute2.netlink.rtnl"]      # imported by cni.linux.rtnl's messages
    spec = rtnl._find_spec(name, parent.__path__)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{name} is not installed")
    pkg = types.ModuleType(name)
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__, pkg.__file__, pkg.__loader__ = spec, spec.origin, spec.loader

    def load_the_init(attr: str) -> Any:
        if attr.startswith("__") or rtnl._find_spec(f"{name}.{attr}", pkg.__path__) is not None:
            raise AttributeError(attr)      # a submodule: `from package import it` imports it
        del pkg.__dict__["__getattr__"]
        spec.loader.exec_module(pkg)
        return getattr(pkg, attr)

    pkg.__getattr__ = load_the_init
    sys.modules[name] = pkg
    parent.tcmsg = pkg
    return pkg


_bare_tcmsg_package()
from pyroute2.netlink import nla, nlmsg  # noqa: E402
from pyroute2.netlink.rtnl.tcmsg import cls_u32, sched_ingress, sched_tbf  # noqa: E402


class _tbf_options(sched_tbf.options):
    """tbf's options with TCA_TBF_RATE64 (rates of 2^32 bytes/s and more), which pyroute2's map
    stops short of, and parameters encoded without the rate table pyroute2 computes in Python
    (256 entries): no TCA_TBF_RTAB is sent, the kernel's tbf works from the rate itself."""
    nla_map = sched_tbf.options.nla_map + (("TCA_TBF_RATE64", "uint64"),)

    class tbf_parms(sched_tbf.options.tbf_parms):
        def encode(self) -> None:
            nla.encode(self)


_OPTIONS = {"tbf": _tbf_options, "ingress": sched_ingress.options, "u32": cls_u32.options}


class tcmsg(nlmsg):
    prefix = "TCA_"
    fields = (("family", "B"), ("pad1", "B"), ("pad2", "H"), ("index", "i"), ("handle", "I"),
              ("parent", "I"), ("info", "I"))
    nla_map = (
        ("TCA_UNSPEC", "none"),
        ("TCA_KIND", "asciiz"),
        ("TCA_OPTIONS", "get_options"),
        ("TCA_STATS", "hex"),
        ("TCA_XSTATS", "hex"),
        ("TCA_RATE", "hex"),
        ("TCA_FCNT", "hex"),
        ("TCA_STATS2", "hex"),
        ("TCA_STAB", "hex"),
    )

    @staticmethod
    def get_options(self, *argv: Any, **kwarg: Any) -> Any:
        return _OPTIONS.get(self.get_attr("TCA_KIND"), self.hex)


def _request(ipr: Any, msg_type: int, flags: int, fields: dict, attrs: list) -> list:
    return ipr._request(tcmsg, msg_type, flags, {"family": socket.AF_UNSPEC, **fields}, attrs)


# ------------------------------------------------------------------ qdiscs

def qdiscs(ipr: Any, index: int) -> list:
    """The qdisc messages of link `index` (the kernel's default ones included)."""
    msgs = _request(ipr, RTM_GETQDISC, NLM_F_REQUEST | NLM_F_DUMP, {"index": index}, [])
    return [m for m in msgs if m["index"] == index]


def add_tbf(ipr: Any, index: int, handle: int, rate: int, buffer: int, limit: int) -> None:
    """A root tbf on link `index`: `rate` bytes/s, `buffer` in scheduler ticks, `limit` bytes."""
    parms = {"rate": min(rate, 0xFFFFFFFF), "buffer": buffer, "limit": limit}
    attrs: list = [("TCA_TBF_PARMS", parms)]
    if rate > 0xFFFFFFFF:
        attrs.append(("TCA_TBF_RATE64", rate))
    _request(ipr, RTM_NEWQDISC, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
             {"index": index, "handle": handle, "parent": TC_H_ROOT},
             [("TCA_KIND", "tbf"), ("TCA_OPTIONS", {"attrs": attrs})])


def add_ingress(ipr: Any, index: int) -> None:
    _request(ipr, RTM_NEWQDISC, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
             {"index": index, "handle": INGRESS_HANDLE, "parent": TC_H_INGRESS},
             [("TCA_KIND", "ingress"), ("TCA_OPTIONS", {"attrs": []})])


def delete_qdisc(ipr: Any, index: int, handle: int, parent: int) -> None:
    _request(ipr, RTM_DELQDISC, NLM_F_REQUEST | NLM_F_ACK, {"index": index, "handle": handle, "parent": parent}, [])


def tbf_parms(msg: Any) -> dict | None:
    """(rate bytes/s, buffer ticks, limit bytes) of a tbf qdisc message, or None if it is none."""
    if msg.get_attr("TCA_KIND") != "tbf":
        return None
    options = msg.get_attr("TCA_OPTIONS")
    parms = options.get_attr("TCA_TBF_PARMS") if options is not None else None
    if parms is None:
        return None
    rate64 = options.get_attr("TCA_TBF_RATE64")
    return {"rate": rate64 or parms["rate"], "buffer": parms["buffer"], "limit": parms["limit"]}


# ------------------------------------------------------------------ the redirect filter

def _info(prio: int) -> int:
    return (prio << 16) | socket.htons(ETH_P_ALL)


def add_redirect(ipr: Any, index: int, prio: int, classid: int, to_index: int) -> None:
    """On link `index`'s ingress qdisc, a u32 filter at `prio` matching every packet, its action a
    mirred egress redirect to link `to_index`: what arrives from the pod leaves through that link."""
    options = cls_u32.get_parameters({
        "target": classid, "keys": ["0x0/0x0+0"],
        "action": {"kind": "mirred", "direction": "egress", "action": "redirect", "ifindex": to_index}})
    _request(ipr, RTM_NEWTFILTER, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
             {"index": index, "handle": 0, "parent": INGRESS_HANDLE, "info": _info(prio)},
             [("TCA_KIND", "u32"), ("TCA_OPTIONS", options)])


def filters(ipr: Any, index: int, parent: int = INGRESS_HANDLE) -> list:
    msgs = _request(ipr, RTM_GETTFILTER, NLM_F_REQUEST | NLM_F_DUMP, {"index": index, "parent": parent}, [])
    return [m for m in msgs if m["index"] == index]


def delete_filters(ipr: Any, index: int, prio: int, parent: int = INGRESS_HANDLE) -> None:
    """Every filter at `prio` under `parent` of link `index` (ENOENT when there is none)."""
    _request(ipr, RTM_DELTFILTER, NLM_F_REQUEST | NLM_F_ACK,
             {"index": index, "handle": 0, "parent": parent, "info": _info(prio)}, [])


def filter_prio(msg: Any) -> int:
    return msg["info"] >> 16


def redirect_target(msg: Any) -> int | None:
    """The link index a u32 filter message's mirred action redirects to, or None."""
    if msg.get_attr("TCA_KIND") != "u32":
        return None
    options = msg.get_attr("TCA_OPTIONS")
    acts = options.get_attr("TCA_U32_ACT") if options is not None else None
    if acts is None:
        return None
    for _, act in acts["attrs"]:
        if act.get_attr("TCA_ACT_KIND") == "mirred":
            parms = act.get_attr("TCA_ACT_OPTIONS").get_attr("TCA_MIRRED_PARMS")
            if parms is not None:
                return parms["ifindex"]
    return None


# ------------------------------------------------------------------ ifb devices

def create_ifb(ipr: Any, name: str, mtu: int) -> None:
    """An ifb device, up (the kernel sets no alias on a link it creates: the caller marks it)."""
    ipr._link(rtnl.RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
              ifi_flags=rtnl.IFF_UP, change=rtnl.IFF_UP, attrs=[
                  ("IFLA_IFNAME", name), ("IFLA_MTU", mtu),
                  ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "ifb")]})])


def warm_up() -> None:
    """For `pycni helper`: the attribute tables of the message shapes shaping sends and reads,
    built once in the parent (encoded and decoded, never sent)."""
    shapes = [
        {"index": 1, "handle": 0x10000, "parent": TC_H_ROOT},
        {"index": 1, "handle": INGRESS_HANDLE, "parent": TC_H_INGRESS},
        {"index": 1, "handle": 0, "parent": INGRESS_HANDLE, "info": _info(1)},
    ]
    attrs = [
        [("TCA_KIND", "tbf"), ("TCA_OPTIONS", {"attrs": [
            ("TCA_TBF_PARMS", {"rate": 1, "buffer": 1, "limit": 1}), ("TCA_TBF_RATE64", 1 << 33)]})],
        [("TCA_KIND", "ingress"), ("TCA_OPTIONS", {"attrs": []})],
        [("TCA_KIND", "u32"), ("TCA_OPTIONS", cls_u32.get_parameters({
            "target": 0x10001, "keys": ["0x0/0x0+0"],
            "action": {"kind": "mirred", "direction": "egress", "action": "redirect", "ifindex": 1}}))],
    ]
    for fields, attr in zip(shapes, attrs):
        msg = tcmsg()
        msg["header"]["type"] = RTM_NEWQDISC
        for key, value in {"family": 0, **fields}.items():
            msg[key] = value
        msg["attrs"] = attr
        msg.encode()
        back = tcmsg(msg.data)
        back.decode()
        tbf_parms(back)
        redirect_target(back)


__all__ = ["NetlinkError", "tcmsg", "qdiscs", "add_tbf", "add_ingress", "delete_qdisc", "tbf_parms",
           "add_redirect", "filters", "delete_filters", "filter_prio", "redirect_target", "create_ifb",
           "warm_up"]
