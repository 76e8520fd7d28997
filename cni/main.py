"""Entry point of the `pycni` executable: the CNI plugin when CNI_COMMAND is set, else the CLI."""

from __future__ import annotations

import os
import sys


def _bridge_plugin():
    from .commands import BridgePlugin

    return BridgePlugin()


def main(argv: list[str] | None = None) -> int:
    if "CNI_COMMAND" in os.environ:
        from . import skel

        return skel.run(_bridge_plugin, os.environ, sys.stdin.buffer, sys.stdout, about="pycni")
    from . import cli

    return cli.main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
