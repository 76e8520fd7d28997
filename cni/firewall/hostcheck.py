"""What pycni needs from the host that the executable cannot bring, checked at STATUS.

The frozen executable carries Python and pycni's own libraries; it still needs from the node:
  - a Linux kernel with network namespaces, veth, bridge (and IPv6 when a range is IPv6);
  - for masquerade / port mapping: the `nft` program and nf_tables in the kernel (nftables backend),
    or libip4tc/libip6tc/libxtables with the xtables extensions and legacy ip_tables in the kernel
    (iptables backend, Debian package `iptables`).
Each check answers a list of human-readable problems; `require` turns them into one code-50 error.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from cni.firewall import iptc_loader, rules
from cni.spec.errors import NotAvailable

NFT, IPT, AUTO = "nftables", "iptables", "auto"


def kernel_problems(ipv6: bool) -> list[str]:
    problems = []
    if not os.path.exists("/proc/self/ns/net"):
        problems.append("kernel without network namespaces (/proc/self/ns/net missing)")
    if not os.path.exists("/proc/sys/net/ipv4/ip_forward"):
        problems.append("/proc/sys/net/ipv4/ip_forward missing (is /proc mounted?)")
    if ipv6 and not os.path.isdir("/proc/sys/net/ipv6"):
        problems.append("an IPv6 range is configured but IPv6 is disabled in the kernel")
    return problems


def nft_problems() -> list[str]:
    exe = shutil.which("nft")
    if not exe:
        return ["nftables backend: the `nft` program is not in PATH (Debian: apt install nftables)"]
    try:
        proc = subprocess.run([exe, "list", "tables"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        return [f"nftables backend: cannot run {exe}: {e}"]
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()[:300]
        return [f"nftables backend: `nft list tables` failed (nf_tables in the kernel?): {err}"]
    return []


def iptables_problems() -> list[str]:
    problems = []
    libdir, xtdir = iptc_loader.find_dirs()
    if not libdir:
        problems.append("iptables backend: libip4tc.so.2 / libxtables not found "
                        "(Debian: apt install iptables)")
    if not xtdir:
        problems.append("iptables backend: the xtables extensions directory (libxt_comment.so, ...) "
                        "was not found")
    if not os.path.exists("/proc/net/ip_tables_names"):
        problems.append("iptables backend: the kernel has no legacy ip_tables "
                        "(/proc/net/ip_tables_names missing)")
    return problems


def firewall_problems(backend: str) -> list[str]:
    """What stops the backend that ADD would use: with `auto`, the one it picks on this node."""
    if backend == NFT:
        return nft_problems()
    if backend == IPT:
        return iptables_problems()

    chosen, why = rules.resolve(AUTO)
    problems = nft_problems() if chosen == NFT else iptables_problems()
    if not problems:
        return []
    head = f"backend auto uses {chosen} on this node ({why}), and it is not usable:"
    alternative = nft_problems() if chosen == IPT and why.startswith("no `nft`") else []
    return [head, *problems, *(["or make nftables usable:", *alternative] if alternative else [])]


def require(problems: list[str]) -> None:
    if problems:
        raise NotAvailable("the host lacks what pycni needs", "; ".join(problems))
