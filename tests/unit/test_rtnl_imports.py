"""What `cni.linux.rtnl` imports of pyroute2: the message classes, not the package `__init__`, and
`pyroute2.config` deferred until a name other than the three the message modules read is needed."""

from __future__ import annotations

import json
import subprocess
import sys


def run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True,
                         cwd=sys.path[0] if sys.path[0] else None)
    return json.loads(out.stdout)


PRELUDE = "import sys, json; sys.path.insert(0, %r); " % str(__import__("pathlib").Path(__file__).parents[2])


def test_the_messages_load_without_multiprocessing_platform_or_the_package_init():
    seen = run(PRELUDE + "import cni.linux.rtnl; "
               "print(json.dumps(sorted({'multiprocessing', 'platform', 'asyncio', 'pyroute2.iproute'} "
               "& set(sys.modules))))")
    assert seen == []


def test_the_names_given_early_are_the_real_module_values():
    code = PRELUDE + (
        "import cni.linux.rtnl, pyroute2.config as c; "
        "early = {n: getattr(c, n) for n in ('AF_BRIDGE', 'data_plugins_pkgs', 'data_plugins_path')}; "
        "early_loaded = 'platform' in sys.modules; "
        "later = c.machine; "   # any other name: the real module runs in the same object
        "import importlib.util; spec = importlib.util.find_spec('pyroute2.config'); "
        "real = importlib.util.module_from_spec(spec); spec.loader.exec_module(real); "
        "print(json.dumps({'early': early, 'real': {n: getattr(real, n) for n in early}, "
        "'early_loaded': early_loaded, 'later': later, 'real_machine': real.machine, "
        "'same_object': sys.modules['pyroute2.config'] is c, "
        "'getattr_gone': '__getattr__' not in vars(c), 'kernel': c.kernel == real.kernel}))")
    seen = run(code)
    assert seen["early"] == seen["real"]
    assert seen["early_loaded"] is False
    assert seen["later"] == seen["real_machine"] and seen["same_object"] and seen["getattr_gone"]
    assert seen["kernel"]


def test_messages_encode_and_decode_with_the_deferred_config():
    """A link message round trip through the classes as the plugin imports them."""
    code = PRELUDE + (
        "from cni.linux.rtnl import ifinfmsg; m = ifinfmsg(); m['index'] = 7; "
        "m['attrs'] = [('IFLA_IFNAME', 'veth0'), ('IFLA_MTU', 1400)]; m.encode(); "
        "d = ifinfmsg(m.data); d.decode(); "
        "print(json.dumps([d['index'], d.get_attr('IFLA_IFNAME'), d.get_attr('IFLA_MTU'), "
        "'platform' in sys.modules]))")
    assert run(code) == [7, "veth0", 1400, False]
