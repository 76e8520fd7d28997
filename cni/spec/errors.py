"""The one error tree of pycni; every error carries the CNI code it is reported with.

    CNIError (code 999 unless a subclass says otherwise)
    ├── IncompatibleVersion      1   config cniVersion not supported / verb not allowed by version
    ├── UnsupportedField         2   a field we understand but whose value we do not support
    ├── UnknownContainer         3   container id empty / unknown
    ├── InvalidEnvironment       4   a CNI_* variable is missing or invalid (CNI_ARGS included)
    ├── IOFailure                5   stdin could not be read, a file could not be written
    ├── DecodeFailure            6   stdin is not JSON
    ├── InvalidConfig            7   the network configuration is wrong
    ├── InvalidNetns             8   CNI_NETNS is the plugin's own namespace (libcni's code)
    ├── TryAgainLater           11   e.g. the IPAM lock could not be taken in time
    └── NotAvailable            50   STATUS: cannot serve ADD

Rule: library exceptions (OSError, netlink errors, ValueError) are translated into this tree at
one boundary (cni.spec.skel); anything that reaches it untranslated is reported as code 999.
"""

from __future__ import annotations


class CNIError(Exception):
    code = 999

    def __init__(self, msg: str, details: str = "", code: int | None = None):
        super().__init__(msg)
        self.msg = msg
        self.details = details
        if code is not None:
            self.code = code

    def to_dict(self, cni_version: str) -> dict:
        out = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    def __str__(self) -> str:
        return f"{self.msg}: {self.details}" if self.details else self.msg


class IncompatibleVersion(CNIError):
    code = 1


class UnsupportedField(CNIError):
    code = 2


class UnknownContainer(CNIError):
    code = 3


class InvalidEnvironment(CNIError):
    code = 4


class IOFailure(CNIError):
    code = 5


class DecodeFailure(CNIError):
    code = 6


class InvalidConfig(CNIError):
    code = 7


class InvalidNetns(CNIError):
    code = 8


class TryAgainLater(CNIError):
    code = 11


class NotAvailable(CNIError):
    code = 50
