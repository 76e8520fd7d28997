"""The plugins this package ships, by executable name, and the one way to run one in process.

Used by the console scripts (`cni.entry`, also for the helper client's fallback) and by the
helper's forked children, so every path serves a call the same way.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:       # typing costs ~1.5 ms per process start: for annotations only
    from typing import IO, Any, Callable, Mapping


def _bridge() -> Any:
    # lazy: per call, only the plugin and runtime parts this call uses
    from cni.bridge.plugin import BridgePlugin

    return BridgePlugin()


def _ipam() -> Any:
    from ipam.plugin import IPAMPlugin  # lazy: per call, only the plugin and runtime parts this call uses

    return IPAMPlugin()


def _portmap() -> Any:
    # lazy: per call, only the plugin and runtime parts this call uses
    from cni.portmap.plugin import PortmapPlugin

    return PortmapPlugin()


def _bandwidth() -> Any:
    from cni.bandwidth.plugin import BandwidthPlugin  # lazy: per call, only the plugin this call runs

    return BandwidthPlugin()


def _loopback() -> Any:
    # lazy: per call, only the plugin and runtime parts this call uses
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


def _one_call_per_attachment(name: str) -> Callable[[Any], Any]:
    def guard(req: Any) -> Any:
        # lazy: per call, only the plugin and runtime parts this call uses
        from cni.runtime.attachment_lock import one_call_per_attachment

        return one_call_per_attachment(req.env, name, str(req.config.get("name")), req.container_id, req.ifname)

    return guard


def _helper_state(env: Mapping[str, str]) -> Callable[[], str]:
    def state() -> str:
        # lazy: per call, only the plugin and runtime parts this call uses
        from cni.runtime.client import helper_state

        return helper_state(env)

    return state


def run(name: str, env: Mapping[str, str], stdin: IO[bytes], stdout: IO[str], about: str = "") -> int:
    """Run plugin `name` on one call in this process, with what the runtime adds to every call:
    the attachment lock (for SERIALIZED plugins) and the helper's state for STATUS."""
    from cni.spec import skel  # lazy: per call, only the plugin and runtime parts this call uses

    return skel.run(PLUGINS[name], env, stdin, stdout, about=about or name,
                    guard=_one_call_per_attachment(name) if name in SERIALIZED else None,
                    helper_state=_helper_state(env))
