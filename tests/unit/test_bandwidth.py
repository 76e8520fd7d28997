"""Shaping options as the reference bandwidth plugin (v1.1.1) reads them, the tbf arithmetic, and
what the shaping path imports of pyroute2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cni.bandwidth.options import NONE, UINT32_MAX, Shaping, Tbf, parse, tbf, tick_in_usec
from cni.spec.errors import CNIError

ROOT = str(Path(__file__).parents[2])
PSCHED = "000003e8 00000040 000f4240 3b9aca00\n"      # this kernel's /proc/net/psched


def test_runtime_config_read_case_insensitively_and_zero_means_none():
    conf = {"runtimeConfig": {"bandwidth": {"IngressRate": 1000, "ingressburst": 80}}}
    assert parse(conf) == Shaping(1000, 80, 0, 0)
    assert parse({"runtimeConfig": {"bandwidth": {"ingressRate": 0, "ingressBurst": 0}}}) is NONE
    assert parse({}) is NONE and parse({"runtimeConfig": {"bandwidth": None}}) is NONE


def test_any_static_key_wins_over_the_capability_entirely():
    conf = {"egressRate": 5000, "egressBurst": 800,
            "runtimeConfig": {"bandwidth": {"ingressRate": 1000, "ingressBurst": 80}}}
    assert parse(conf) == Shaping(0, 0, 5000, 800)


@pytest.mark.parametrize("entry, message", [
    ({"ingressRate": 1000}, "if rate is set, burst must also be set"),
    ({"egressBurst": 10}, "if burst is set, rate must also be set"),
    ({"egressRate": 1000, "egressBurst": 8 * UINT32_MAX}, "burst cannot be more than 4GB"),
    ({"ingressRate": -1, "ingressBurst": 10}, "failed to parse network configuration"),
    ({"ingressRate": 2.0, "ingressBurst": 10}, "failed to parse network configuration"),
    ({"ingressRate": True, "ingressBurst": 10}, "failed to parse network configuration"),
    ({"ingressRate": 1 << 64, "ingressBurst": 10}, "failed to parse network configuration"),
    ({"ingressRate": 7, "ingressBurst": 10}, "invalid rate"),
])
def test_refusals_carry_the_references_message_and_code(entry, message):
    with pytest.raises(CNIError) as e:
        parse({"runtimeConfig": {"bandwidth": entry}})
    assert e.value.code == 999 and e.value.msg == message


def test_the_largest_burst_the_reference_takes_is_taken():
    assert parse({"runtimeConfig": {"bandwidth": {"egressRate": 1000, "egressBurst": 8 * UINT32_MAX - 1}}}).egress


def test_tbf_arithmetic_is_the_references():
    ticks = tick_in_usec(PSCHED)
    assert ticks == 15.625
    # 10 Mbit/s, 800 kbit: 1.25 MB/s, 100 kB lasting 80 ms = 1,250,000 ticks, limit 25 ms + burst
    assert tbf(10_000_000, 800_000, ticks) == Tbf(1_250_000, 1_250_000, 131_250)
    # what containerd passes with an annotation (burst 2^32 - 1 bits): the buffer held at 2^32 - 1
    assert tbf(10_000_000, UINT32_MAX, ticks).buffer == UINT32_MAX


def _run(code: str) -> object:
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys, json; sys.path.insert(0, {ROOT!r}); {code}"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_a_call_without_shaping_imports_no_tc_messages():
    seen = _run("import cni.bridge.plugin, cni.linux.rtnl; from cni.bridge import config; "
                "config.parse({'cniVersion': '1.0.0', 'name': 'n', 'type': 'pycni'}); "
                "print(json.dumps(sorted(m for m in sys.modules if 'tcmsg' in m or m == 'cni.linux.tc')))")
    assert seen == []


def test_the_tc_messages_load_without_the_tcmsg_package_init():
    seen = _run("import cni.linux.tc; print(json.dumps(sorted({'dataclasses', 'pyroute2.netlink.rtnl.tcmsg.cls_basic', "
                "'pyroute2.netlink.rt_files', 'asyncio'} & set(sys.modules))))")
    assert seen == []


def test_our_tcmsg_is_pyroute2s_struct_and_the_package_init_still_loads_on_demand():
    seen = _run("import cni.linux.tc as t; import pyroute2.netlink.rtnl.tcmsg as p; "
                "real = p.tcmsg; "      # any name of the __init__: the real module runs in the same object
                "print(json.dumps({'fields': [list(f) for f in t.tcmsg.fields] == [list(f) for f in real.fields], "
                "'names': [n for n, _ in t.tcmsg.nla_map] == [n for n, _ in real.nla_map][:len(t.tcmsg.nla_map)], "
                "'plugins': 'tbf' in p.plugins, 'same': sys.modules['pyroute2.netlink.rtnl.tcmsg'] is p}))")
    assert seen == {"fields": True, "names": True, "plugins": True, "same": True}


def test_a_tbf_message_round_trips():
    seen = _run("from cni.linux import tc; m = tc.tcmsg(); m['header']['type'] = tc.RTM_NEWQDISC; "
                "m['index'] = 3; m['handle'] = 0x70630000; m['parent'] = tc.TC_H_ROOT; "
                "m['attrs'] = [('TCA_KIND', 'tbf'), ('TCA_OPTIONS', {'attrs': [('TCA_TBF_PARMS', "
                "{'rate': 125000, 'buffer': 99, 'limit': 7}), ('TCA_TBF_RATE64', 1 << 35)]})]; m.encode(); "
                "d = tc.tcmsg(m.data); d.decode(); print(json.dumps([d['index'], tc.tbf_parms(d)]))")
    assert seen == [3, {"rate": 1 << 35, "buffer": 99, "limit": 7}]


def test_later_subnet_options_are_shaped_whole_with_a_warning(tmp_path, monkeypatch):
    import io

    from cni.spec.log import log

    err = io.StringIO()
    monkeypatch.setattr(log, "stderr", err)
    monkeypatch.setattr(log, "path", str(tmp_path / "pycni.log"))
    got = parse({"unshapedSubnets": ["10.0.0.0/8"], "ingressRate": 1000, "ingressBurst": 80})
    assert got == Shaping(1000, 80, 0, 0)
    assert "unshapedSubnets: not supported" in err.getvalue()
