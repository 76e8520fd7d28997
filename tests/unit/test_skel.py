import io
import json

import pytest

from cni.spec import request, skel
from cni.spec.errors import InvalidConfig
from cni.spec.result import Result

BASE_ENV = {"CNI_CONTAINERID": "abc", "CNI_NETNS": "", "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}


class Recorder:
    def __init__(self, raise_with=None):
        self.calls = []
        self.raise_with = raise_with

    def __call__(self):
        return self

    def _do(self, name, req):
        self.calls.append((name, req))
        if self.raise_with:
            raise self.raise_with
        return Result()

    def add(self, req):
        return self._do("add", req)

    def delete(self, req):
        return self._do("del", req)

    def check(self, req):
        return self._do("check", req)

    def status(self, req):
        return self._do("status", req)

    def gc(self, req):
        return self._do("gc", req)


def run(command, conf, env=None, plugin=None):
    env = {**BASE_ENV, **(env or {}), "CNI_COMMAND": command}
    if command in ("ADD", "CHECK") and not env.get("CNI_NETNS"):
        env["CNI_NETNS"] = "/dev/null"  # exists; skel only checks that, the plugin enters it
    stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    out = io.StringIO()
    rc = skel.run(plugin or Recorder(), env, io.BytesIO(stdin), out)
    text = out.getvalue()
    return rc, (json.loads(text) if text.strip() else None)


CONF = {"cniVersion": "1.1.0", "name": "net1", "type": "pycni", "logFile": ""}


def test_version_needs_no_stdin():
    rc, out = run("VERSION", b"")
    assert rc == 0
    assert out == {"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}
    rc, out = run("VERSION", {"cniVersion": "0.4.0"})
    assert out["cniVersion"] == "0.4.0"


@pytest.mark.parametrize("command, conf, env, code, words", [
    ("BOGUS", CONF, {}, 4, "unknown CNI_COMMAND"),
    ("ADD", b"{not json", {}, 6, "decode"),
    ("ADD", b"[1, 2]", {}, 6, "decode"),
    ("ADD", {"name": "n"}, {}, 1, "incompatible"),
    ("ADD", {**CONF, "cniVersion": "0.2.0"}, {}, 1, "incompatible"),
    ("ADD", {**CONF, "cniVersion": 3}, {}, 6, "cniVersion"),
    ("ADD", {"cniVersion": "1.0.0"}, {}, 7, "missing network name"),
    ("ADD", {**CONF, "name": "../etc"}, {}, 7, "invalid characters"),
    ("ADD", CONF, {"CNI_IFNAME": "a-very-long-ifname"}, 4, "interface name"),
    ("ADD", CONF, {"CNI_IFNAME": "eth/0"}, 4, "interface name"),
    ("ADD", CONF, {"CNI_IFNAME": ".."}, 4, "interface name"),
    ("ADD", CONF, {"CNI_CONTAINERID": "../../x"}, 4, "containerID"),
    # `$` in a Python regex also matches before a final newline: found by the fuzz suite, where
    # an id "eth0\n" passed, was stored as "eth0" + newline and its reservation never released
    ("ADD", CONF, {"CNI_CONTAINERID": "eth0\n"}, 4, "containerID"),
    ("ADD", {**CONF, "name": "net\n"}, {}, 7, "invalid characters"),
    ("ADD", CONF, {"CNI_CONTAINERID": ""}, 3, "containerID"),
    ("ADD", CONF, {"CNI_NETNS": "/no/such/netns"}, 4, "CNI_NETNS"),
    ("ADD", CONF, {"CNI_ARGS": "FOO=1"}, 4, "IgnoreUnknown"),
    ("ADD", CONF, {"CNI_ARGS": "FOO"}, 4, "KEY=VALUE"),
    ("CHECK", {**CONF, "cniVersion": "0.3.1"}, {}, 1, "does not allow CHECK"),
    ("STATUS", {**CONF, "cniVersion": "1.0.0"}, {}, 1, "does not allow STATUS"),
    ("GC", {**CONF, "cniVersion": "0.4.0"}, {}, 1, "does not allow GC"),
])
def test_bad_input_is_a_cni_error(command, conf, env, code, words):
    plugin = Recorder()
    rc, out = run(command, conf, env, plugin)
    assert rc != 0
    assert out["code"] == code, out
    assert words in out["msg"] + out.get("details", "")
    assert set(out) <= {"cniVersion", "code", "msg", "details"}
    assert plugin.calls == []


def test_missing_env_names_the_variables():
    out = io.StringIO()
    rc = skel.run(Recorder(), {"CNI_COMMAND": "ADD"}, io.BytesIO(json.dumps(CONF).encode()), out)
    err = json.loads(out.getvalue())
    assert rc == 1 and err["code"] == 4
    assert "CNI_CONTAINERID" in err["details"] and "CNI_IFNAME" in err["details"]


def test_del_needs_no_netns():
    plugin = Recorder()
    env = dict(BASE_ENV)
    del env["CNI_NETNS"]
    rc = skel.run(plugin, {**env, "CNI_COMMAND": "DEL"}, io.BytesIO(json.dumps(CONF).encode()), io.StringIO())
    assert rc == 0 and plugin.calls[0][0] == "del"


def test_containerd_args_are_accepted():
    plugin = Recorder()
    args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=abc;" \
           "K8S_POD_UID=u-1;FOO=bar"
    rc, _ = run("DEL", CONF, {"CNI_ARGS": args}, plugin)
    assert rc == 0
    assert plugin.calls[0][1].args["K8S_POD_NAME"] == "web"


def test_unexpected_exception_is_999_json_not_a_traceback():
    rc, out = run("DEL", CONF, plugin=Recorder(raise_with=RuntimeError("boom")))
    assert rc == 1
    assert out == {"cniVersion": "1.1.0", "code": 999, "msg": "internal error", "details": "RuntimeError: boom"}


def test_plugin_error_keeps_its_code_and_config_version():
    rc, out = run("DEL", {**CONF, "cniVersion": "0.4.0"},
                  plugin=Recorder(raise_with=InvalidConfig("bad thing", "why")))
    assert out == {"cniVersion": "0.4.0", "code": 7, "msg": "bad thing", "details": "why"}


def test_add_prints_result_in_config_version():
    rc, out = run("ADD", {**CONF, "cniVersion": "0.3.1"})
    assert rc == 0 and out == {"cniVersion": "0.3.1", "dns": {}}


def test_parse_cni_args():
    assert request.parse_cni_args("IgnoreUnknown=true;IP=10.0.0.2;X=1") == {
        "IgnoreUnknown": "true", "IP": "10.0.0.2", "X": "1"}
    assert request.parse_cni_args("") == {}
    with pytest.raises(Exception):
        request.parse_cni_args("A=1=2;IgnoreUnknown=1")


@pytest.mark.parametrize("key,value,ok", [
    ("K8S_POD_NAME", "web-0", True), ("K8S_POD_NAME", "a.b-c.d", True), ("K8S_POD_NAME", "x" * 253, True),
    ("K8S_POD_NAME", "web\nforged", False), ("K8S_POD_NAME", "Web", False), ("K8S_POD_NAME", "-a", False),
    ("K8S_POD_NAME", "a.", False), ("K8S_POD_NAME", "x" * 254, False), ("K8S_POD_NAME", "../etc", False),
    ("K8S_POD_NAMESPACE", "kube-system", True), ("K8S_POD_NAMESPACE", "a.b", False),
    ("K8S_POD_NAMESPACE", "x" * 64, False), ("K8S_POD_NAMESPACE", "ns\r", False),
    ("K8S_POD_UID", "0b6c8d2e-31f4-4b54-a0a5-5d0c8e6e9f11", True), ("K8S_POD_UID", "u\x1b[2J", False),
    ("K8S_POD_INFRA_CONTAINER_ID", "ab" * 32, True), ("K8S_POD_INFRA_CONTAINER_ID", "a b", False),
])
def test_k8s_names_in_cni_args_are_checked(key, value, ok):
    text = f"IgnoreUnknown=1;{key}={value}"
    if ok:
        assert request.parse_cni_args(text)[key] == value
    else:
        with pytest.raises(request.InvalidEnvironment) as e:
            request.parse_cni_args(text)
        assert e.value.code == 4 and key in e.value.details and "\n" not in e.value.details


def test_del_with_a_bad_pod_name_drops_the_args_and_finishes():
    env = {**BASE_ENV, "CNI_COMMAND": "DEL", "CNI_ARGS": "K8S_POD_NAME=a\nb"}
    req = request.build_request(env, io.BytesIO(json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "x"}).encode()))
    assert req.args == {}
    with pytest.raises(request.InvalidEnvironment):
        request.build_request({**env, "CNI_COMMAND": "ADD"},
                              io.BytesIO(json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "x"}).encode()))


def test_text_log_lines_escape_non_printables(tmp_path):
    from cni.spec.log import Logger

    lg = Logger()
    lg.configure(str(tmp_path / "log"), "info", "ctx\n ", "text")
    lg.stderr = io.StringIO()
    lg.warning("pod web\n2026-01-01 ERROR forged\x1b[2J\u2028end")
    lines = (tmp_path / "log").read_text().splitlines()
    assert len(lines) == 1 and lines[0].endswith("ctx\\n pod web\\n2026-01-01 ERROR forged\\x1b[2J\\u2028end")
    assert lg.stderr.getvalue().count("\n") == 1 and "\\n2026" in lg.stderr.getvalue()


def test_valid_attachments():
    conf = {"cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]}
    assert request.valid_attachments(conf) == {("a", "eth0")}
    assert request.valid_attachments({"cni.dev/attachments": [{"containerID": "b", "ifname": "e"}]}) == {("b", "e")}
    assert request.valid_attachments({}) == set()
    with pytest.raises(InvalidConfig):
        request.valid_attachments({"cni.dev/valid-attachments": [{"containerID": 1}]})


def test_log_file_with_nul_byte_is_not_a_crash():
    rc, out = run("DEL", {**CONF, "logFile": "/tmp/a\x00b"}, plugin=Recorder(raise_with=InvalidConfig("x")))
    assert rc == 1 and out["code"] == 7


def test_sha256_without_openssl_matches_hashlib():
    import hashlib
    import subprocess
    import sys

    from cni.spec.names import sha256_hex

    for text in ("", "net/c1/eth0", "ünïcode/😀"):
        assert sha256_hex(text) == hashlib.sha256(text.encode()).hexdigest()
    # the plugin's names never load OpenSSL (2-3 ms of every process start)
    code = "import sys, cni.spec.names; cni.spec.names.attachment_hash('n', 'c', 'eth0'); print('_hashlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_json_log_lines_carry_the_call(tmp_path):
    from cni.spec.log import log

    class Talker(Recorder):
        def add(self, req):
            log.info("made the veth")
            log.warning("something \"quoted\" ünïcode")
            return Result()

    path = tmp_path / "pycni.log"
    try:
        rc, _ = run("ADD", {**CONF, "logFile": str(path), "logFormat": "json"}, plugin=Talker())
        assert rc == 0
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert [x["msg"] for x in lines] == ["made the veth", "something \"quoted\" ünïcode"]
        for x in lines:
            assert {k: x[k] for k in ("plugin", "command", "network", "containerID", "ifname")} == \
                {"plugin": "pycni", "command": "ADD", "network": "net1", "containerID": "abc", "ifname": "eth0"}
            assert x["level"] in ("info", "warning") and isinstance(x["pid"], int) and x["time"]
        # the default stays text
        rc, _ = run("DEL", {**CONF, "logFile": str(path)}, plugin=Talker())
        run("ADD", {**CONF, "logFile": str(path)}, plugin=Talker())
        assert path.read_text().splitlines()[-1].split(" ", 2)[1] == "WARNING"
    finally:
        log.configure(path="", fmt="text")


def test_the_runtime_s_guard_is_held_around_add_del_and_check_only():
    """What the runtime adds to a call (the attachment lock) is handed in: held while the handler
    runs, for ADD, DEL and CHECK, and released when it raises."""
    import contextlib

    held = []
    recorder = Recorder()

    @contextlib.contextmanager
    def guard(req):
        held.append(("enter", req.command))
        try:
            yield
        finally:
            held.append(("exit", req.command))

    class Watching(Recorder):
        def _do(self, name, req):
            assert held and held[-1] == ("enter", req.command), "handler ran outside the guard"
            return super()._do(name, req)

    plugin = Watching()
    for command in ("ADD", "DEL", "CHECK", "STATUS", "GC"):
        env = {**BASE_ENV, "CNI_COMMAND": command, "CNI_NETNS": "/dev/null" if command != "DEL" else ""}
        conf = {**CONF, "prevResult": {"cniVersion": "1.1.0"}} if command == "CHECK" else CONF
        if command in ("STATUS", "GC"):
            plugin = recorder          # no guard expected: its handler must not look for one
        rc = skel.run(plugin, env, io.BytesIO(json.dumps(conf).encode()), io.StringIO(), guard=guard)
        assert rc == 0, command
    assert held == [("enter", "ADD"), ("exit", "ADD"), ("enter", "DEL"), ("exit", "DEL"),
                    ("enter", "CHECK"), ("exit", "CHECK")]
    failing = Recorder(raise_with=InvalidConfig("bad", ""))
    held.clear()
    env = {**BASE_ENV, "CNI_COMMAND": "DEL", "CNI_NETNS": ""}
    assert skel.run(failing, env, io.BytesIO(json.dumps(CONF).encode()), io.StringIO(), guard=guard) == 1
    assert held == [("enter", "DEL"), ("exit", "DEL")]


def test_status_reads_the_helper_state_the_runtime_hands_down():
    recorder = Recorder()
    env = {**BASE_ENV, "CNI_COMMAND": "STATUS"}
    skel.run(recorder, env, io.BytesIO(json.dumps(CONF).encode()), io.StringIO(),
             helper_state=lambda: "in use (pid 42)")
    (_, req), = recorder.calls
    assert req.helper_state() == "in use (pid 42)"
    recorder = Recorder()
    skel.run(recorder, env, io.BytesIO(json.dumps(CONF).encode()), io.StringIO())
    (_, req), = recorder.calls
    assert req.helper_state().startswith("not known")
