"""Per-pod traffic shaping options, parsed once, and the tbf parameters they give (pure).

Semantics are the reference `bandwidth` plugin's (containernetworking/plugins v1.1.1, the version
Debian 12 ships): rates in bits per second, bursts in bits, read from the static keys
`ingressRate`, `ingressBurst`, `egressRate`, `egressBurst` at the top of the plugin's config or,
when none of those is there, from `runtimeConfig.bandwidth` (the `bandwidth` capability, which
the kubelet fills from the pod's `kubernetes.io/ingress-bandwidth` and `egress-bandwidth`
annotations). Keys match as Go's encoding/json matches them (ignoring case). A rate needs its
burst and a burst its rate; a burst of 4 GB (2^32 - 1 bytes) or more is refused; every refusal is
code 999, the reference's. One refusal is pycni's own: a rate under 8 bit/s, 0 bytes/s for the
kernel (the reference divides by it). A burst that lasts longer at its rate than tbf's 32-bit tick
counter holds (~275 s at the default clock; containerd and the kubelet pass a burst of 2^32 - 1
bits with every annotation, 429 s at 10 Mbit/s) is held as the longest tbf can hold; the reference
wraps it around modulo 2^32.
`unshapedSubnets` / `shapedSubnets` came in v1.5.0 and are not options here either: as v1.1.1
does, a config that has them is shaped whole (with a warning in the log).

Ingress means towards the pod (a tbf on the host side of its interface), egress from it (the
host side's ingress redirected to an ifb device, with a tbf there).
"""

from __future__ import annotations

from typing import Any, Mapping

from cni.record import record
from cni.spec.errors import CNIError
from cni.spec.fields import go_keys
from cni.spec.log import log

KEYS = ("ingressRate", "ingressBurst", "egressRate", "egressBurst")
UINT64_MAX = (1 << 64) - 1
UINT32_MAX = (1 << 32) - 1
LATENCY_MS = 25                 # the queue a tbf holds beyond its burst: the reference's 25 ms
TIME_UNITS_PER_SEC = 1_000_000
TBF_HANDLE = 0x70630000       # 7063: ("pc"), pycni's mark on its tbf qdiscs (DEL removes a root tbf only with it)
REDIRECT_PRIO = 0x7063         # the redirect filter's priority on the ingress qdisc, pycni's own
REDIRECT_CLASSID = 0x10001      # 1:1


@record
class Shaping:
    """Rates in bits/s, bursts in bits; 0 and 0: that direction is not shaped."""
    ingress_rate: int = 0
    ingress_burst: int = 0
    egress_rate: int = 0
    egress_burst: int = 0

    @property
    def ingress(self) -> bool:
        return self.ingress_rate > 0 and self.ingress_burst > 0

    @property
    def egress(self) -> bool:
        return self.egress_rate > 0 and self.egress_burst > 0

    @property
    def any(self) -> bool:
        return self.ingress or self.egress


@record
class Tbf:
    """A tbf qdisc's parameters as the kernel holds them."""
    rate: int       # bytes/s
    buffer: int     # scheduler ticks a full burst takes at `rate`
    limit: int      # bytes queued at most


NONE = Shaping()


def _bits(entry: Mapping[str, Any], key: str, where: str) -> int:
    value = entry.get(key)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= UINT64_MAX:
        raise CNIError("failed to parse network configuration",
                       f"{where}.{key} must be an integer in [0, {UINT64_MAX}], got {value!r}")
    return value


def _validate(rate: int, burst: int, direction: str) -> None:
    if burst == 0 and rate != 0:
        raise CNIError("if rate is set, burst must also be set", f"{direction}Rate {rate} has no {direction}Burst")
    if rate == 0 and burst != 0:
        raise CNIError("if burst is set, rate must also be set", f"{direction}Burst {burst} has no {direction}Rate")
    if burst // 8 >= UINT32_MAX:
        raise CNIError("burst cannot be more than 4GB", f"{direction}Burst is {burst} bits")
    if rate and rate < 8:
        raise CNIError("invalid rate", f"{direction}Rate {rate} bit/s is under one byte per second")


def parse(conf: Mapping[str, Any]) -> Shaping:
    """The shaping a config asks for (`NONE` when it asks for none). Raises CNIError (999)."""
    later = go_keys(conf, ("unshapedSubnets", "shapedSubnets"))
    if later:
        log.warning(f"{', '.join(later)}: not supported (as in the reference bandwidth 1.1.1); "
                    "every destination is shaped")
    static = go_keys(conf, KEYS)
    if static:
        entry, where = static, "config"
    else:
        rc = conf.get("runtimeConfig")
        bw = go_keys(rc, ("bandwidth",)).get("bandwidth") if isinstance(rc, dict) else None
        if bw is None:
            return NONE
        if not isinstance(bw, dict):
            raise CNIError("failed to parse network configuration",
                           f"runtimeConfig.bandwidth must be an object, got {bw!r}")
        entry, where = go_keys(bw, KEYS), "runtimeConfig.bandwidth"
    shaping = Shaping(*(_bits(entry, key, where) for key in KEYS))
    _validate(shaping.ingress_rate, shaping.ingress_burst, "ingress")
    _validate(shaping.egress_rate, shaping.egress_burst, "egress")
    return shaping if shaping.any else NONE


def tick_in_usec(psched: str) -> float:
    """Scheduler ticks per microsecond, from /proc/net/psched (as tc and the reference read it)."""
    t2us, us2t, clock_res = (int(part, 16) for part in psched.split()[:3])
    if clock_res == 1_000_000_000:      # the kernel's compatibility form
        t2us = us2t
    return t2us / us2t * (clock_res / TIME_UNITS_PER_SEC)


def tbf(rate_bits: int, burst_bits: int, ticks_per_usec: float) -> Tbf:
    """The tbf of one direction: the reference's arithmetic (bytes from bits by integer division;
    a burst's duration in ticks; the limit is 25 ms at the rate plus the burst), each value held
    at 2^32 - 1 where the reference's would wrap around."""
    rate, burst = rate_bits // 8, burst_bits // 8
    usec = min(int(float(burst) * TIME_UNITS_PER_SEC / float(rate)), UINT32_MAX)  # float64, as Go
    buffer = min(int(usec * ticks_per_usec), UINT32_MAX)
    limit = int(float(rate) * (TIME_UNITS_PER_SEC * (LATENCY_MS / 1000)) / TIME_UNITS_PER_SEC) + burst
    return Tbf(rate, buffer, min(limit, UINT32_MAX))


def describe(shaping: Shaping) -> dict[str, int]:
    """The shaping as the runtime wrote it (for logs and `pycni inspect`)."""
    return {k: v for k, v in zip(KEYS, (shaping.ingress_rate, shaping.ingress_burst,
                                        shaping.egress_rate, shaping.egress_burst)) if v}
