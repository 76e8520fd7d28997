import ipaddress
import multiprocessing
import os
import shutil

import pytest

from cni.spec.errors import CNIError, InvalidConfig, InvalidEnvironment, TryAgainLater
from ipam import allocator, config, service
from ipam.store import DiskStore
from tests.unit.fakes import FakeStore

ip = ipaddress.ip_address


def conf(ranges, **kw):
    return config.parse({"type": "pycni-ipam", "ranges": ranges, **kw}, "net1")


def test_range_defaults_v4():
    c = conf([[{"subnet": "10.1.0.0/24"}]])
    (r,), = c.range_sets
    assert (str(r.start), str(r.end), str(r.gateway)) == ("10.1.0.1", "10.1.0.254", "10.1.0.1")
    assert c.data_dir == "/var/lib/cni/networks"
    assert c.network_dir == "/var/lib/cni/networks/net1"


def test_range_defaults_v6():
    (r,), = conf([[{"subnet": "fd00::/120"}]]).range_sets
    assert (str(r.start), str(r.end), str(r.gateway)) == ("fd00::1", "fd00::ff", "fd00::1")


def test_legacy_subnet_form_is_prepended():
    c = config.parse({"type": "x", "subnet": "10.2.0.0/24", "rangeStart": "10.2.0.10",
                      "ranges": [[{"subnet": "fd00::/64"}]]}, "n")
    assert [str(rs[0].subnet) for rs in c.range_sets] == ["10.2.0.0/24", "fd00::/64"]
    assert str(c.range_sets[0][0].start) == "10.2.0.10"


def test_runtime_ip_ranges_are_prepended():
    c = config.parse({"type": "x", "ranges": [[{"subnet": "10.2.0.0/24"}]]}, "n",
                     runtime_config={"ipRanges": [[{"subnet": "10.3.0.0/24"}]]})
    assert [str(rs[0].subnet) for rs in c.range_sets] == ["10.3.0.0/24", "10.2.0.0/24"]


@pytest.mark.parametrize("ranges, words", [
    ([[{"subnet": "10.1.0.1/24"}]], "host bits"),
    ([[{"subnet": "10.1.0.0/31"}]], "too small"),
    ([[{"subnet": "fd00::/127"}]], "too small"),
    ([[{"subnet": "banana"}]], "invalid subnet"),
    ([[{"subnet": "10.1.0.0/24", "rangeStart": "10.2.0.1"}]], "not in"),
    ([[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.9", "rangeEnd": "10.1.0.3"}]], "after"),
    ([[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.1.0.0/25"}]], "overlaps"),
    ([[{"subnet": "10.1.0.0/24"}, {"subnet": "fd00::/64"}]], "mixes"),
    ([[{"subnet": "10.1.0.0/24", "gateway": "fd00::1"}]], "family"),
    ("10.0.0.0/8", "list"),
    ([], "no IP ranges"),
])
def test_invalid_ranges(ranges, words):
    with pytest.raises(InvalidConfig) as e:
        conf(ranges)
    assert words in str(e.value)
    assert e.value.code == 7


def test_relative_data_dir_rejected():
    with pytest.raises(InvalidConfig):
        conf([[{"subnet": "10.1.0.0/24"}]], dataDir="../../etc")


def test_requested_ip_sources_in_order():
    ipam = {"type": "x", "ranges": [[{"subnet": "10.1.0.0/24"}]]}
    c = config.parse(ipam, "n", {"ips": ["10.1.0.7/24"]}, {"cni": {"ips": ["10.1.0.8"]}}, {"IP": "10.1.0.9"})
    assert c.requested == (ip("10.1.0.7"),)
    c = config.parse(ipam, "n", {}, {"cni": {"ips": ["10.1.0.8"]}}, {"IP": "10.1.0.9"})
    assert c.requested == (ip("10.1.0.8"),)
    c = config.parse(ipam, "n", {}, {}, {"IP": "10.1.0.9"})
    assert c.requested == (ip("10.1.0.9"),)
    with pytest.raises(InvalidEnvironment):
        config.parse(ipam, "n", {}, {}, {"IP": "nope"})
    with pytest.raises(InvalidConfig):
        config.parse(ipam, "n", {}, {}, {"IP": "10.9.9.9"})


def test_resolv_conf(tmp_path):
    p = tmp_path / "resolv.conf"
    p.write_text("# c\nnameserver 10.0.0.53\nnameserver fd00::53\ndomain example.org\n"
                 "search a.example b.example\noptions ndots:5\n")
    c = conf([[{"subnet": "10.1.0.0/24"}]], resolvConf=str(p))
    assert c.dns.nameservers == ("10.0.0.53", "fd00::53")
    assert c.dns.domain == "example.org"
    assert c.dns.search == ("a.example", "b.example")
    assert c.dns.options == ("ndots:5",)


# ------------------------------------------------------------------ allocator
# Every allocator test runs against the fake and against the real file store: the fake must
# behave like the thing it replaces.


@pytest.fixture(params=["fake", "disk"])
def s(request, tmp_path):
    return FakeStore() if request.param == "fake" else DiskStore(str(tmp_path / "net"))


def plant(store, address: str, cid: str, ifname: str = "") -> None:
    """A reservation written by someone else (host-local; id only when `ifname` is empty)."""
    if isinstance(store, FakeStore):
        store.files[ip(address)] = (cid, ifname)
    else:
        os.makedirs(store.dir, exist_ok=True)
        with open(os.path.join(store.dir, address), "w") as f:
            f.write(cid + (f"\r\n{ifname}" if ifname else ""))



def test_round_robin_skips_gateway_and_network(s):
    c = conf([[{"subnet": "10.1.0.0/29"}]])   # .1 gateway, .7 broadcast: .2-.6 usable
    got = [allocator.allocate(c, s, f"c{i}", "eth0")[0].address for i in range(5)]
    assert [str(a) for a in got] == [f"10.1.0.{i}/29" for i in range(2, 7)]
    with pytest.raises(allocator.AddressesExhausted) as e:
        allocator.allocate(c, s, "c9", "eth0")
    assert e.value.code == 100
    # release .3, the next allocation continues after the cursor (.6) and wraps to .3
    allocator.release(s, "c1", "eth0")
    assert str(allocator.allocate(c, s, "c10", "eth0")[0].address.ip) == "10.1.0.3"


def test_round_robin_does_not_reuse_just_released(s):
    c = conf([[{"subnet": "10.1.0.0/24"}]])
    a = allocator.allocate(c, s, "a", "eth0")[0].address.ip
    allocator.release(s, "a", "eth0")
    b = allocator.allocate(c, s, "b", "eth0")[0].address.ip
    assert a != b


def test_gateway_inside_custom_range_is_skipped(s):
    c = conf([[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.100", "rangeEnd": "10.1.0.102",
                "gateway": "10.1.0.101"}]])
    got = {str(allocator.allocate(c, s, f"c{i}", "eth0")[0].address.ip) for i in range(2)}
    assert got == {"10.1.0.100", "10.1.0.102"}


def test_multiple_ranges_in_a_set_are_walked(s):
    c = conf([[{"subnet": "10.1.0.0/30"}, {"subnet": "10.2.0.0/30"}]])
    got = [str(allocator.allocate(c, s, f"c{i}", "eth0")[0].address.ip) for i in range(2)]
    assert got == ["10.1.0.2", "10.2.0.2"]


def test_dual_stack_one_address_per_set(s):
    c = conf([[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/64"}]])
    got = allocator.allocate(c, s, "c", "eth0")
    assert [str(g.address) for g in got] == ["10.1.0.2/24", "fd00::2/64"]
    assert [str(g.gateway) for g in got] == ["10.1.0.1", "fd00::1"]


def test_all_or_nothing_when_a_set_is_full(s):
    c = conf([[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.2.0.0/30"}]])
    allocator.allocate(c, s, "a", "eth0")
    with pytest.raises(allocator.AddressesExhausted):
        allocator.allocate(c, s, "b", "eth0")
    assert set(s.holders().values()) == {("a", "eth0")}


def test_requested_ip(s):
    ipam = {"type": "x", "ranges": [[{"subnet": "10.1.0.0/24"}]]}
    c = config.parse(ipam, "n", {"ips": ["10.1.0.50"]})
    assert str(allocator.allocate(c, s, "a", "eth0")[0].address) == "10.1.0.50/24"
    with pytest.raises(CNIError, match="not available"):
        allocator.allocate(c, s, "b", "eth0")
    with pytest.raises(InvalidConfig, match="gateway"):
        allocator.allocate(config.parse(ipam, "n", {"ips": ["10.1.0.1"]}), s, "c", "eth0")


def test_duplicate_allocation_is_an_error(s):
    c = conf([[{"subnet": "10.1.0.0/24"}]])
    allocator.allocate(c, s, "a", "eth0")
    with pytest.raises(CNIError, match="duplicate"):
        allocator.allocate(c, s, "a", "eth0")
    allocator.allocate(c, s, "a", "eth1")   # another interface of the same container is fine


def test_release_matches_container_and_ifname_and_legacy_files(s):
    c = conf([[{"subnet": "10.1.0.0/24"}]])
    allocator.allocate(c, s, "a", "eth0")
    allocator.allocate(c, s, "a", "eth1")
    plant(s, "10.1.0.200", "a")       # an old host-local file: id only
    assert sorted(map(str, allocator.release(s, "a", "eth0"))) == ["10.1.0.2", "10.1.0.200"]
    assert list(s.holders().values()) == [("a", "eth1")]


def test_gc_keeps_only_valid_attachments(s):
    c = conf([[{"subnet": "10.1.0.0/24"}]])
    for cid in "abc":
        allocator.allocate(c, s, cid, "eth0")
    plant(s, "10.1.0.200", "b")
    gone = allocator.collect_garbage(s, [("b", "eth0")])
    assert sorted(map(str, gone)) == ["10.1.0.2", "10.1.0.4"]
    assert sorted(s.holders().values()) == [("b", ""), ("b", "eth0")]


def test_exhausted_sets(s):
    c = conf([[{"subnet": "10.1.0.0/30"}]])
    assert allocator.exhausted_sets(c, s) == []
    allocator.allocate(c, s, "a", "eth0")
    assert len(allocator.exhausted_sets(c, s)) == 1


def test_rollback_releases_exactly_what_the_add_reserved(s):
    c = conf([[{"subnet": "10.1.0.0/24"}]])
    plant(s, "10.1.0.9", "a", "eth0")          # an earlier ADD of the same attachment
    assert allocator.release_exactly(s, "a", "eth0", [ip("10.1.0.9"), ip("10.1.0.10")]) == [ip("10.1.0.9")]
    plant(s, "10.1.0.9", "a", "eth0")
    got = allocator.allocate(conf([[{"subnet": "10.1.0.0/24"}]]), FakeStore(), "a", "eth0")[0].address.ip
    assert allocator.release_exactly(s, "a", "eth0", [got]) == []   # not ours to give back here
    assert list(s.holders()) == [ip("10.1.0.9")]
    assert c


# ------------------------------------------------------------------ disk store


def test_disk_layout_is_host_locals(tmp_path):
    c = conf([[{"subnet": "10.1.0.0/24"}]], dataDir=str(tmp_path))
    res = service.add(c, "cid1", "eth0")
    d = tmp_path / "net1"
    assert (d / "10.1.0.2").read_bytes() == b"cid1\r\neth0"
    assert os.stat(d / "10.1.0.2").st_mode & 0o777 == 0o600
    assert (d / "last_reserved_ip.0").read_text() == "10.1.0.2"
    assert (d / "lock").exists()
    assert str(res.ips[0].address) == "10.1.0.2/24"
    service.check(c, "cid1", "eth0", [ip("10.1.0.2")])
    assert service.delete(c, "cid1", "eth0") == [ip("10.1.0.2")]
    assert not (d / "10.1.0.2").exists()
    with pytest.raises(CNIError, match="reservation missing"):
        service.check(c, "cid1", "eth0")


def test_reads_host_local_files_written_before(tmp_path):
    d = tmp_path / "net1"
    d.mkdir()
    (d / "10.1.0.2").write_text("oldcid")                 # pre-0.8 host-local: id only
    (d / "10.1.0.3").write_text("newcid\r\neth0")
    (d / "last_reserved_ip.0").write_text("10.1.0.3")
    c = conf([[{"subnet": "10.1.0.0/24"}]], dataDir=str(tmp_path))
    assert str(service.add(c, "x", "eth0").ips[0].address.ip) == "10.1.0.4"
    assert service.delete(c, "oldcid", "eth0") == [ip("10.1.0.2")]


def test_status(tmp_path):
    c = conf([[{"subnet": "10.1.0.0/30"}]], dataDir=str(tmp_path))
    service.status(c)
    service.add(c, "a", "eth0")
    with pytest.raises(CNIError) as e:
        service.status(c)
    assert e.value.code == 50


def test_lock_timeout_raises_try_again(tmp_path):
    import fcntl

    store = DiskStore(str(tmp_path / "n"), lock_timeout=0.05)
    with store.lock():
        fd = os.open(str(tmp_path / "n" / "lock"), os.O_RDWR)
        # another open file description cannot take the lock while we hold it
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        other = DiskStore(str(tmp_path / "n"), lock_timeout=0.05)
        with pytest.raises(TryAgainLater) as e:
            with other.lock():
                pass
        assert e.value.code == 11
        os.close(fd)


def _worker(args):
    data_dir, n, k = args
    c = conf([[{"subnet": "10.1.0.0/22"}]], dataDir=data_dir)
    return [str(service.add(c, f"w{n}-{i}", "eth0").ips[0].address.ip) for i in range(k)]


def test_concurrent_processes_never_share_an_address(tmp_path):
    with multiprocessing.get_context("fork").Pool(8) as pool:
        got = [a for chunk in pool.map(_worker, [(str(tmp_path), n, 25) for n in range(8)]) for a in chunk]
    assert len(got) == 200
    assert len(set(got)) == 200
    assert len(os.listdir(tmp_path / "net1")) == 200 + 3   # + lock + cursor + the attachments' links


def test_duplicates_are_found_in_the_address_files_themselves(tmp_path):
    c = conf([[{"subnet": "10.1.0.0/24"}]], dataDir=str(tmp_path))
    service.add(c, "a", "eth0")
    # whatever else pycni may once have kept beside the files (an index) is gone: still a duplicate
    for extra in (tmp_path / "net1").glob(".*"):
        shutil.rmtree(extra) if extra.is_dir() else extra.unlink()
    with pytest.raises(CNIError, match="duplicate"):
        service.add(c, "a", "eth0")
    # the address file went away behind our back (host-local released it): a new ADD is fine
    os.unlink(tmp_path / "net1" / "10.1.0.2")
    assert str(service.add(c, "a", "eth0").ips[0].address.ip) == "10.1.0.3"


def test_a_reservation_killed_while_being_written_leaves_no_address_file(tmp_path, monkeypatch):
    """A kill between creating an address file and writing it used to leave an empty file that no
    DEL ever matches (the address leaked until GC). Written elsewhere and linked, it is all or nothing."""
    c = conf([[{"subnet": "10.1.0.0/24"}]], dataDir=str(tmp_path))
    real_write = os.write

    def killed(fd, data):
        if data.startswith(b"a\r\n"):
            raise SystemExit("SIGKILL")     # not an OSError: nothing in the store may clean up
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", killed)
    with pytest.raises(SystemExit):
        service.add(c, "a", "eth0")
    monkeypatch.setattr(os, "write", real_write)
    assert [n for n in os.listdir(tmp_path / "net1") if n[0].isdigit()] == []
    assert str(service.add(c, "a", "eth0").ips[0].address.ip) == "10.1.0.2"   # the leftover is harmless
    assert (tmp_path / "net1" / "10.1.0.2").read_bytes() == b"a\r\neth0"


def test_paths_with_nul_bytes_are_config_errors():
    with pytest.raises(InvalidConfig):
        conf([[{"subnet": "10.1.0.0/24"}]], resolvConf="/etc/res\x00olv.conf")
    with pytest.raises(InvalidConfig):
        conf([[{"subnet": "10.1.0.0/24"}]], dataDir="/var/lib/\x00x")


# ---------------------------------------------------------------- ADD's attachment links


def _both_ways(store, cid, ifname):
    return sorted(map(str, store.held_by(cid, ifname))), sorted(map(str, store.held_by(cid, ifname, exhaustive=False)))


def test_the_links_answer_as_the_address_files_do_through_any_history(tmp_path):
    """Random reservations and releases of six attachments (one with an id-only file, as old
    host-local wrote): after every step the links say exactly what a scan of the files says."""
    import random

    rnd = random.Random(7)
    s = DiskStore(str(tmp_path / "net1"))
    attachments = [(f"c{n}", "eth0") for n in range(4)] + [("c0", "eth1"), ("old", "")]
    with s.lock():
        for step in range(300):
            cid, ifname = rnd.choice(attachments)
            held = s.held_by(cid, ifname)
            if held and rnd.random() < 0.5:
                s.release(rnd.choice(held))
            else:
                s.reserve(ip(f"10.1.0.{rnd.randrange(1, 40)}"), cid, ifname, 0)
            if step == 150:     # old host-local format, then the index rebuilt from the files
                (tmp_path / "net1" / "10.1.1.1").write_text("old")
                shutil.rmtree(tmp_path / "net1" / ".pycni-held")
            for a in attachments:
                assert _both_ways(s, *a)[0] == _both_ways(s, *a)[1], (step, a)
        for held_ip in list(s.holders()):
            s.release(held_ip)
    assert os.listdir(tmp_path / "net1" / ".pycni-held") == ["complete"]   # no link left behind


def test_links_of_a_directory_written_without_them_are_made_once_from_the_files(tmp_path):
    d = tmp_path / "net1"
    d.mkdir()
    (d / "10.1.0.2").write_text("a\r\neth0")           # host-local / pycni 0.1 format
    (d / "10.1.0.3").write_text("b")                   # host-local before ifnames
    (d / "last_reserved_ip.0").write_text("10.1.0.3")
    (d / "lock").write_text("")
    s = DiskStore(str(d))
    with s.lock():
        assert s.held_by("a", "eth0", exhaustive=False) == [ip("10.1.0.2")]
        assert s.held_by("b", "eth3", exhaustive=False) == [ip("10.1.0.3")]
        assert s.held_by("c", "eth0", exhaustive=False) == []
    assert (d / ".pycni-held" / "complete").exists()
    c = conf([[{"subnet": "10.1.0.0/24"}]], dataDir=str(tmp_path))
    with pytest.raises(CNIError, match="duplicate"):
        service.add(c, "a", "eth0")


def test_a_link_counts_only_while_it_is_the_address_files_inode(tmp_path):
    s = DiskStore(str(tmp_path / "net1"))
    with s.lock():
        assert s.reserve(ip("10.1.0.5"), "a", "eth0", 0)
        s.held_by("x", "eth0", exhaustive=False)               # the directory is complete
        # a crash between removing the address file and its link, then someone else takes it
        os.unlink(tmp_path / "net1" / "10.1.0.5")
        assert s.held_by("a", "eth0", exhaustive=False) == []
        assert s.reserve(ip("10.1.0.5"), "b", "eth0", 0)
        assert s.held_by("a", "eth0", exhaustive=False) == []
        assert s.held_by("b", "eth0", exhaustive=False) == [ip("10.1.0.5")]
        # a crash between making a link and the address name: a link to nothing of that name
        s._link_attachment(str(tmp_path / "net1" / "10.1.0.5"), ip("10.1.0.6"), "a", "eth0")
        assert s.held_by("a", "eth0", exhaustive=False) == []
    assert not (tmp_path / "net1" / ".pycni-held" / s._link_path(ip("10.1.0.6"), "a", "eth0")).exists()


def test_add_reads_no_address_file_on_a_full_directory(tmp_path, monkeypatch):
    """What the links are for: ADD's duplicate check opens none of the 300 address files."""
    c = conf([[{"subnet": "10.1.0.0/22"}]], dataDir=str(tmp_path))
    for n in range(300):
        service.add(c, f"c{n}", "eth0")
    opened = []
    real_open = os.open

    def counting(path, *a, **kw):
        opened.append(str(path))
        return real_open(path, *a, **kw)

    monkeypatch.setattr(os, "open", counting)
    service.add(c, "new", "eth0")
    addresses = [p for p in opened if os.path.basename(p)[:1].isdigit() and "." in os.path.basename(p)]
    assert addresses == [], addresses[:5]


def test_gc_drops_links_that_crashes_left(tmp_path):
    """A crash between removing an address file and its link, and one between making an
    attachment's folder and linking into it: GC leaves only the links of live reservations."""
    c = conf([[{"subnet": "10.1.0.0/24"}]], dataDir=str(tmp_path))
    service.add(c, "a", "eth0")
    service.add(c, "b", "eth0")
    d = tmp_path / "net1"
    os.unlink(d / "10.1.0.2")                                  # a's address file, not its link
    (d / ".pycni-held" / ("0" * 32)).mkdir()                   # an empty folder
    service.gc(c, [("a", "eth0"), ("b", "eth0")])
    index = d / ".pycni-held"
    live = os.path.relpath(DiskStore(str(d))._link_path(ip("10.1.0.3"), "b", "eth0"), index)
    left = sorted(str(p.relative_to(index)) for p in index.rglob("*"))
    assert left == sorted(["complete", os.path.dirname(live), live])
