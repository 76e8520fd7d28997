"""Validation of the names the runtime hands us, and the names we derive from them.

Rule: every name that ends up in a path, a link name or a rule comment passes through here first.
Derived names are pure functions of (network, container id, ifname), so DEL and GC find what ADD made.
"""

from __future__ import annotations

import re

from cni.spec.errors import InvalidConfig, InvalidEnvironment, UnknownContainer

_ID_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")   # always fullmatch: `$` would accept a final "\n"
MAX_ID_LEN = 1024
# Kubernetes' names (apimachinery's validation): a label is at most 63 of [a-z0-9-], alphanumeric
# at both ends; a subdomain is at most 253 of labels joined by dots. fullmatch only.
_DNS1123_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_UID_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9\-]{0,127}")
IFNAMSIZ = 15
IFALIASZ = 255          # bytes of a link alias (IFLA_IFALIAS), without the final NUL


def sha256_hex(text: str) -> str:
    """SHA-256 of `text`, hex. CPython's built-in implementation: `hashlib` would first load
    OpenSSL's libcrypto through `_hashlib`, 2-3 ms of every plugin process's start (measured)."""
    try:
        from _sha256 import sha256  # lazy: CPython <= 3.11
    except ImportError:
        try:
            from _sha2 import sha256  # lazy: CPython >= 3.12
        except ImportError:
            # lazy: the C module of this interpreter, never hashlib's OpenSSL set-up
            from hashlib import sha256
    return sha256(text.encode()).hexdigest()


def is_dns1123_label(text: str) -> bool:
    return len(text) <= 63 and _DNS1123_LABEL_RE.fullmatch(text) is not None


def is_dns1123_subdomain(text: str) -> bool:
    return len(text) <= 253 and _DNS1123_SUBDOMAIN_RE.fullmatch(text) is not None


def is_k8s_uid(text: str) -> bool:
    """A pod UID or sandbox id as runtimes pass them (a UUID, a hex id): no dots, no controls."""
    return _UID_RE.fullmatch(text) is not None


def validate_container_id(cid: str) -> None:
    if not cid:
        raise UnknownContainer("missing containerID", "CNI_CONTAINERID is empty")
    if len(cid) > MAX_ID_LEN:
        raise InvalidEnvironment("containerID too long",
                                 f"CNI_CONTAINERID has {len(cid)} characters, at most {MAX_ID_LEN} are accepted")
    if not _ID_RE.fullmatch(cid):
        raise InvalidEnvironment(
            "invalid characters in containerID",
            f"CNI_CONTAINERID {cid[:80]!r} must match {_ID_RE.pattern}",
        )


def validate_ifname(ifname: str) -> None:
    problem = ""
    if not ifname:
        problem = "is empty"
    elif len(ifname.encode()) > IFNAMSIZ:
        problem = f"is longer than {IFNAMSIZ} bytes"
    elif ifname in (".", ".."):
        problem = "is . or .."
    elif any(c in ifname for c in "/:") or any(c.isspace() for c in ifname):
        problem = "contains '/', ':' or whitespace"
    elif not ifname.isprintable():
        problem = "contains unprintable characters"
    if problem:
        raise InvalidEnvironment("invalid interface name", f"CNI_IFNAME {ifname[:40]!r} {problem}")


def validate_network_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidConfig("missing network name", "the config has no \"name\"")
    if len(name) > 253 or not _ID_RE.fullmatch(name):
        raise InvalidConfig(
            "invalid characters in network name",
            f"name {str(name)[:80]!r} must match {_ID_RE.pattern}",
        )
    return name


def attachment_hash(network: str, container_id: str, ifname: str) -> str:
    return sha256_hex(f"{network}/{container_id}/{ifname}")


def host_veth_name(network: str, container_id: str, ifname: str) -> str:
    """'veth' + 11 hex digits: 15 bytes, stable for one attachment of one network."""
    return "veth" + attachment_hash(network, container_id, ifname)[:11]


def ifb_name(network: str, container_id: str, ifname: str) -> str:
    """'pbw' + 12 hex digits: the ifb device that shapes the attachment's egress (15 bytes)."""
    return "pbw" + attachment_hash(network, container_id, ifname)[:12]


IFB_MARK = "pycni-bw"


def attachment_alias(network: str, container_id: str, ifname: str, mark: str = "pycni") -> str:
    """Written as the host veth's alias: pycni's mark on it (DEL removes only a link that carries
    the alias of its attachment) and how GC finds each attachment's veth. Readable when it fits in
    a link alias (255 bytes); else `pycni#<network hash>#<attachment hash>`."""
    plain = f"{mark}/{network}/{container_id}/{ifname}"
    if len(plain.encode()) <= IFALIASZ:
        return plain
    return f"{mark}#{sha256_hex(network)[:8]}#{attachment_hash(network, container_id, ifname)}"


def alias_attachment_hash(alias: str, network: str, mark: str = "pycni") -> str | None:
    """The attachment hash an alias of `network` names (either form), or None if the alias is not
    one of this network's. `mark` IFB_MARK: the alias of an attachment's ifb device."""
    parts = alias.split("/")
    if len(parts) == 4 and parts[0] == mark:
        return attachment_hash(*parts[1:]) if parts[1] == network else None
    parts = alias.split("#")
    if len(parts) == 3 and parts[0] == mark and parts[1] == sha256_hex(network)[:8]:
        return parts[2]
    return None
