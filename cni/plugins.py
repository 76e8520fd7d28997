"""The plugins this package ships, by executable name, and the one way to run one in process.

Used by the console scripts (`cni.runtime.entry`), by the helper's forked children and by the helper
client's fallback, so every path serves a call the same way.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:       # typing costs ~1.5 ms per process start: for annotations only
    from typing import IO, Any, Callable, Mapping


def _bridge() -> Any:
    from cni.bridge.plugin import BridgePlugin

    return BridgePlugin()


def _ipam() -> Any:
    from ipam.plugin import IPAMPlugin

    return IPAMPlugin()


def _portmap() -> Any:
    from cni.portmap.plugin import PortmapPlugin

    return PortmapPlugin()


def _bandwidth() -> Any:
    from cni.bandwidth.plugin import BandwidthPlugin

    return BandwidthPlugin()


def _loopback() -> Any:
    from cni.loopback import LoopbackPlugin

    return LoopbackPlugin()


PLUGINS: dict[str, Callable[[], Any]] = {"pycni": _bridge, "pycni-ipam": _ipam, "pycni-portmap": _portmap,
                                         "pycni-bandwidth": _bandwidth, "pycni-loopback": _loopback, "loopback": _loopback}

ABOUT = {
    "pycni": "bridge CNI plugin",
    "pycni-ipam": "file-backed CNI IPAM plugin (host-local layout)",
    "pycni-portmap": "port mapping CNI plugin (chained)",
    "pycni-bandwidth": "traffic shaping CNI plugin (chained)",
    "pycni-loopback": "loopback CNI plugin (brings the pod's lo up)",
    "loopback": "loopback CNI plugin (pycni's; brings the pod's lo up)",
}


# plugins whose calls of one attachment never overlap (the IPAM plugin, called nested inside a
# bridge ADD, and loopback, which only touches the pod's own lo, take no lock)
SERIALIZED = frozenset({"pycni", "pycni-portmap", "pycni-bandwidth"})


def run(name: str, env: Mapping[str, str], stdin: IO[bytes], stdout: IO[str], about: str = "") -> int:
    from cni.spec import skel

    return skel.run(PLUGINS[name], env, stdin, stdout, about=about or name,
                    serialize=name if name in SERIALIZED else "")
