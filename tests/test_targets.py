"""Tests for scanner.targets: parsing, excludes, lazy expansion, resolution.

No packets are sent: private-range addresses appear only as strings to
parse, and the only real lookup is of ``localhost`` (answered from
/etc/hosts).  Names under .invalid are refused by the module itself.
"""

from __future__ import annotations

import itertools
import queue
import socket
import threading
import time
import tracemalloc

import pytest

from scanner.targets import (
    MAX_V6_BLOCK,
    Name,
    Resolver,
    Targets,
    iter_pairs,
    parse_ports,
    parse_targets,
    resolve,
)

pytestmark = pytest.mark.timeout(30)


# ---------------------------------------------------------------- ports

@pytest.mark.parametrize("spec, want", [
    (80, [80]),
    ("80", [80]),
    ("22,80,443", [22, 80, 443]),
    ("8000-8003", [8000, 8001, 8002, 8003]),
    ("443, 22 8000-8001,80", [443, 22, 8000, 8001, 80]),
    ([22, "80", "100-101"], [22, 80, 100, 101]),
    ((p for p in (3, 1, 2)), [3, 1, 2]),
    ("-3", [1, 2, 3]),
    ("65534-", [65534, 65535]),
    ("1", [1]),
    ("65535", [65535]),
])
def test_parse_ports_accepts_each_form(spec, want):
    assert parse_ports(spec) == want


def test_parse_ports_keeps_first_occurrence_order_and_drops_duplicates():
    assert parse_ports("80,22,80,20-23,22") == [80, 22, 20, 21, 23]


def test_parse_ports_full_range_is_every_port_once():
    ports = parse_ports("1-65535,80")
    assert len(ports) == 65535
    assert ports[0] == 1 and ports[-1] == 65535


@pytest.mark.parametrize("spec, fragment", [
    ("0", "0 is not in 1-65535"),
    (0, "0 is not in 1-65535"),
    ("65536", "65536 is not in 1-65535"),
    ("80,70000", "70000"),
    ("90-80", "reversed"),
    ("http", "not a number"),
    ("80.5", "not a number"),
    ("1-2-3", "not a number"),
    ("٨٠", "not a number"),          # Arabic-Indic digits pass str.isdigit()
    ("", "no ports"),
    (" , ", "no ports"),
    ([], "no ports"),
])
def test_parse_ports_rejects_bad_specs_with_a_clear_message(spec, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_ports(spec)


@pytest.mark.parametrize("spec", [[True], [80.0], [None]])
def test_parse_ports_rejects_non_int_non_str_items(spec):
    with pytest.raises(TypeError):
        parse_ports(spec)


# ---------------------------------------------------------------- target forms

def test_base_form_is_hosts_1_to_254_as_in_scan_tcl():
    t = Targets("192.168.0")
    hosts = list(t)
    assert len(t) == 254 == len(hosts)
    assert hosts[0] == "192.168.0.1" and hosts[-1] == "192.168.0.254"
    assert "192.168.0.0" not in hosts and "192.168.0.255" not in hosts


def test_cidr_24_includes_network_and_broadcast():
    hosts = list(Targets("10.0.0.0/24"))
    assert len(hosts) == 256
    assert hosts[0] == "10.0.0.0" and hosts[-1] == "10.0.0.255"


@pytest.mark.parametrize("spec, count", [
    ("10.0.0.0/16", 65536),
    ("10.0.0.0/8", 1 << 24),
    ("10.0.0.0/30", 4),
    ("10.0.0.9/32", 1),
    ("0.0.0.0/0", 1 << 32),
    ("10.0.0.0/255.255.255.0", 256),
])
def test_cidr_counts(spec, count):
    assert len(Targets(spec)) == count


def test_cidr_with_host_bits_means_the_enclosing_block():
    assert list(Targets("10.0.0.7/30")) == ["10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.7"]


def test_last_octet_range_includes_both_ends():
    hosts = list(Targets("10.0.0.1-40"))
    assert len(hosts) == 40
    assert hosts[0] == "10.0.0.1" and hosts[-1] == "10.0.0.40"


def test_full_range_crosses_octet_boundaries():
    assert list(Targets("10.0.0.254-10.0.1.1")) == [
        "10.0.0.254", "10.0.0.255", "10.0.1.0", "10.0.1.1"]


def test_one_address_ranges_are_allowed():
    assert list(Targets("10.0.0.5-5")) == ["10.0.0.5"]
    assert list(Targets("10.0.0.5-10.0.0.5")) == ["10.0.0.5"]


def test_single_ipv4_address():
    t = Targets("127.0.0.1")
    assert list(t) == ["127.0.0.1"] and len(t) == 1


def test_ipv6_addresses_are_yielded_compressed_and_lowercase():
    assert list(Targets("2001:DB8:0:0::1 [::1]")) == ["2001:db8::1", "::1"]


def test_ipv6_prefix_up_to_the_cap_is_expanded():
    t = Targets("2001:db8::/126")
    assert list(t) == ["2001:db8::", "2001:db8::1", "2001:db8::2", "2001:db8::3"]
    assert len(Targets("2001:db8::/112")) == MAX_V6_BLOCK == 65536


def test_ipv6_prefix_over_the_cap_is_refused_with_the_cap_in_the_message():
    with pytest.raises(ValueError, match=r"2\*\*17 IPv6 addresses; at most 65536"):
        Targets("2001:db8::/111")
    with pytest.raises(ValueError, match="at most 65536"):
        Targets("2001:db8::/64")


def test_ipv6_range_is_capped_like_a_prefix():
    assert len(Targets("2001:db8::1-2001:db8::1:0")) == 65536
    with pytest.raises(ValueError, match="at most 65536"):
        Targets("2001:db8::-2001:db8::1:0")


def test_ipv4_mapped_ipv6_is_an_ipv6_target():
    assert len(Targets("::ffff:10.0.0.1")) == 1


def test_host_names_become_name_markers_counted_once_each():
    t = Targets("localhost example.com")
    assert list(t) == [Name("localhost"), Name("example.com")]
    assert len(t) == 2 and t.addresses == 0
    assert t.names == (Name("localhost"), Name("example.com"))


def test_names_are_deduplicated_case_insensitively_ignoring_the_root_dot():
    t = Targets("Example.COM example.com. example.com")
    assert list(t) == [Name("Example.COM")]


@pytest.mark.parametrize("name", [
    "localhost", "a", "a-b.example.com", "example.com.", "x1.y2.z3",
    "xn--bcher-kva.example", "bücher.example", "1.2.3.4a",
    "a" * 63 + ".example", ".".join(["a" * 49] * 5),          # 249 characters
])
def test_valid_host_names_are_accepted_without_resolving(name):
    assert list(Targets(name)) == [Name(name)]


@pytest.mark.parametrize("name", [
    "-a.example", "a-.example", "a..example", "a_b.example", ".example",
    "a" * 64 + ".example", ".".join(["a" * 50] * 5),          # 254 characters
    "ex*ample.com", "example.com..", "例え..jp",
])
def test_invalid_host_names_are_refused(name):
    with pytest.raises(ValueError, match="not an IPv4/IPv6 address"):
        Targets(name)


def test_mixed_spec_keeps_spec_order():
    t = Targets("10.0.0.1-2, localhost 2001:db8::/127 10.0.1")
    items = list(t)
    assert items[:5] == ["10.0.0.1", "10.0.0.2", Name("localhost"), "2001:db8::", "2001:db8::1"]
    assert items[5] == "10.0.1.1" and len(items) == 5 + 254 == len(t)


def test_list_and_separated_string_mean_the_same():
    as_list = Targets(["10.0.0.1", "10.0.0.5-6", "localhost"])
    as_string = Targets("10.0.0.1,10.0.0.5-6  localhost")
    as_tabs = Targets("10.0.0.1\t10.0.0.5-6,\n localhost")
    assert list(as_list) == list(as_string) == list(as_tabs)
    assert len(as_list) == 4


def test_list_items_may_themselves_be_separated_strings():
    assert list(Targets(["10.0.0.1,10.0.0.2", "10.0.0.3"])) == [
        "10.0.0.1", "10.0.0.2", "10.0.0.3"]


def test_ipaddress_objects_and_names_are_accepted_in_lists():
    import ipaddress
    t = Targets([ipaddress.ip_address("10.0.0.1"), ipaddress.ip_network("10.0.1.0/31"),
                 Name("localhost")])
    assert list(t) == ["10.0.0.1", "10.0.1.0", "10.0.1.1", Name("localhost")]


def test_overlapping_targets_are_scanned_once_at_their_first_position():
    t = Targets("10.0.0.5 10.0.0.0/29 10.0.0.6")
    assert list(t) == ["10.0.0.5", "10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3",
                       "10.0.0.4", "10.0.0.6", "10.0.0.7"]
    assert len(t) == 8


def test_targets_can_be_iterated_twice():
    t = Targets("10.0.0.1-3 localhost")
    assert list(t) == list(t)


def test_parse_targets_is_the_constructor():
    assert list(parse_targets("10.0.0.1", exclude="10.0.0.1")) == []


def test_contains_checks_addresses_and_names():
    t = Targets("10.0.0.0/24 localhost 2001:db8::/120", exclude="10.0.0.7")
    assert "10.0.0.200" in t and "2001:db8::ff" in t and "[2001:db8::1]" in t
    assert "10.0.0.7" not in t and "10.0.1.0" not in t
    assert "LOCALHOST" in t and Name("localhost") in t and "example.com" not in t


# ---------------------------------------------------------------- bad targets

@pytest.mark.parametrize("spec, fragment", [
    ("10.0.0.40-1", "reversed"),
    ("10.0.1.0-10.0.0.255", "reversed"),
    ("2001:db8::9-2001:db8::1", "reversed"),
    ("10.0.0.1-300", "range end 300"),
    ("10.0.0.1-", "range end"),
    ("10.0.0.1-::2", "mixes IPv4 and IPv6"),
    ("10.0.0.1-x", "range end"),
    ("256.1.1.1", "not an IPv4/IPv6"),
    ("10.0", "not an IPv4/IPv6"),
    ("1.2.3.4.5", "not an IPv4/IPv6"),
    ("10.0.0-2", "not an IPv4/IPv6"),
    ("192.168.256", "not an octet"),
    ("192.168.01", "not an octet"),
    ("010.0.0.1", "not an IPv4/IPv6"),
    ("10.0.0.0/33", "not an address/prefix"),
    ("localhost/24", "not an address/prefix"),
    ("10.0.0/24", "not an address/prefix"),
    ("fe80::1%eth0", "scoped"),
    ("-", "not an IPv4/IPv6"),
    ("", "no targets"),
    ([], "no targets"),
    (" ,, ", "no targets"),
])
def test_bad_targets_raise_value_error_naming_the_token(spec, fragment):
    with pytest.raises(ValueError, match=fragment) as info:
        Targets(spec)
    if isinstance(spec, str) and spec.strip(" ,"):
        assert repr(spec) in str(info.value)


def test_one_bad_token_spoils_the_whole_spec():
    with pytest.raises(ValueError, match="'10.0.0.999'"):
        Targets(["10.0.0.0/8", "localhost", "10.0.0.999"])


def test_bad_exclude_raises_too():
    with pytest.raises(ValueError, match="reversed"):
        Targets("10.0.0.0/24", exclude="10.0.0.9-1")


def test_non_string_targets_are_a_type_error():
    with pytest.raises(TypeError):
        Targets([167772161])


# ---------------------------------------------------------------- excludes

def test_exclude_cuts_holes_and_count_follows():
    t = Targets("10.0.0.0/24", exclude="10.0.0.0 10.0.0.255 10.0.0.10-19")
    hosts = list(t)
    assert len(t) == len(hosts) == 256 - 2 - 10
    assert hosts[0] == "10.0.0.1" and hosts[-1] == "10.0.0.254"
    assert "10.0.0.9" in hosts and "10.0.0.10" not in hosts and "10.0.0.20" in hosts


def test_exclude_uses_the_target_syntax():
    t = Targets(["10.0.0.0/16"], exclude=["10.0.5", "10.0.6.0/24", "10.0.7.1-10.0.7.255"])
    assert len(t) == 65536 - 254 - 256 - 255


def test_exclude_of_everything_leaves_an_empty_set():
    t = Targets("10.0.0.0/24 2001:db8::/120", exclude="10.0.0.0/16 2001:db8::/112")
    assert len(t) == 0 and list(t) == []


def test_exclude_outside_the_targets_changes_nothing():
    t = Targets("10.0.0.0/24", exclude="10.0.1.0/24 ::1 example.com")
    assert len(t) == 256


def test_exclude_applies_to_ipv6():
    t = Targets("2001:db8::/124", exclude="2001:db8::-2001:db8::7")
    assert list(t) == [f"2001:db8::{i:x}" for i in range(8, 16)]


def test_exclude_removes_names_case_insensitively():
    t = Targets("localhost example.com 10.0.0.1", exclude="EXAMPLE.com.")
    assert list(t) == [Name("localhost"), "10.0.0.1"]
    assert len(t) == 2


def test_excluded_answers_for_resolved_addresses_and_names():
    t = Targets("localhost", exclude="127.0.0.0/8 example.com")
    assert t.excluded("127.0.0.1") and t.excluded(Name("Example.com"))
    assert not t.excluded("10.0.0.1") and not t.excluded("::1")
    assert not t.excluded(Name("localhost"))


@pytest.mark.timeout(10)
def test_many_excludes_on_a_slash_8_are_interval_arithmetic():
    # 32768 /24 holes: a set of strings would hold 8 million of them.
    holes = [f"10.{i}.{j}.0/24" for i in range(256) for j in range(0, 256, 2)]
    start = time.monotonic()
    t = Targets("10.0.0.0/8", exclude=holes)
    assert time.monotonic() - start < 5
    assert len(t) == (1 << 24) // 2
    first = list(itertools.islice(t, 257))
    assert first[0] == "10.0.1.0" and first[255] == "10.0.1.255" and first[256] == "10.0.3.0"


# ---------------------------------------------------------------- laziness

@pytest.mark.timeout(10)
def test_slash_8_and_slash_0_are_not_materialised():
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        t8 = Targets("10.0.0.0/8")
        t0 = Targets("0.0.0.0/0", exclude="10.0.0.0/8 172.16.0.0/12 192.168.0.0/16")
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # 16 million strings would be ~1 GB; the intervals are a few hundred bytes.
    assert used < 64 * 1024
    assert len(t8) == 1 << 24
    assert len(t0) == (1 << 32) - (1 << 24) - (1 << 20) - (1 << 16)


@pytest.mark.timeout(10)
def test_first_items_of_a_huge_set_come_at_once():
    start = time.monotonic()
    it = iter(Targets("0.0.0.0/0"))
    assert [next(it), next(it)] == ["0.0.0.0", "0.0.0.1"]
    assert time.monotonic() - start < 1


# ---------------------------------------------------------------- pairs

def test_pairs_are_port_major_within_a_block_of_hosts():
    pairs = list(iter_pairs("10.0.0.1-5", "22,80", block=2))
    assert pairs == [
        ("10.0.0.1", 22), ("10.0.0.2", 22), ("10.0.0.1", 80), ("10.0.0.2", 80),
        ("10.0.0.3", 22), ("10.0.0.4", 22), ("10.0.0.3", 80), ("10.0.0.4", 80),
        ("10.0.0.5", 22), ("10.0.0.5", 80),
    ]


def test_block_1_is_host_major():
    assert list(iter_pairs("10.0.0.1-2", [22, 80], block=1)) == [
        ("10.0.0.1", 22), ("10.0.0.1", 80), ("10.0.0.2", 22), ("10.0.0.2", 80)]


def test_default_block_scans_a_base_form_subnet_port_major():
    pairs = list(iter_pairs(Targets("192.168.0"), "22,80"))
    assert len(pairs) == 254 * 2
    assert pairs[253] == ("192.168.0.254", 22) and pairs[254] == ("192.168.0.1", 80)


def test_pairs_cover_every_host_port_combination_once():
    t = Targets("10.0.0.0/22 localhost", exclude="10.0.1.0/24")
    ports = parse_ports("1-3,80")
    pairs = list(iter_pairs(t, ports, block=100))
    assert len(pairs) == len(set(pairs)) == len(t) * len(ports)
    assert (Name("localhost"), 80) in pairs
    assert ("10.0.1.5", 80) not in pairs


@pytest.mark.timeout(10)
def test_pairs_are_lazy_for_huge_scans():
    start = time.monotonic()
    pairs = iter_pairs("0.0.0.0/0", "1-65535")
    assert next(pairs) == ("0.0.0.0", 1)
    assert time.monotonic() - start < 1


def test_iter_pairs_validates_before_the_first_next():
    with pytest.raises(ValueError, match="'10.0.0.300'"):
        iter_pairs("10.0.0.300", 80)
    with pytest.raises(ValueError, match="65536"):
        iter_pairs("10.0.0.1", "65536")
    with pytest.raises(ValueError, match="block"):
        iter_pairs("10.0.0.1", 80, block=0)


# ---------------------------------------------------------------- names

def test_blocking_resolve_of_localhost():
    addrs = resolve("localhost")
    assert "127.0.0.1" in addrs or "::1" in addrs
    assert len(addrs) == len(set(addrs))


@pytest.mark.timeout(5)
def test_names_under_dot_invalid_fail_at_once_without_dns():
    start = time.monotonic()
    with pytest.raises(socket.gaierror) as info:
        resolve("no-such-host.invalid")
    assert info.value.errno == socket.EAI_NONAME
    assert time.monotonic() - start < 0.5


class _Inbox:
    """Stands in for an event loop: post() queues, run() executes on this thread."""

    def __init__(self) -> None:
        self.q: queue.Queue = queue.Queue()

    def post(self, fn, *args) -> None:
        self.q.put((fn, args))

    def run_one(self, timeout: float = 5.0) -> None:
        fn, args = self.q.get(timeout=timeout)
        fn(*args)


def test_resolver_delivers_localhost_through_post_with_extra_args():
    inbox, got = _Inbox(), []
    with Resolver(post=inbox.post) as r:
        r.resolve("localhost", lambda *a: got.append((threading.current_thread(), a)), 80, "x")
        inbox.run_one()
    thread, (name, addrs, error, port, extra) = got[0]
    assert thread is threading.current_thread()      # ran where post() delivered it
    assert name == Name("localhost") and error is None
    assert "127.0.0.1" in addrs or "::1" in addrs
    assert (port, extra) == (80, "x")


def test_resolver_reports_dot_invalid_as_an_error():
    inbox, got = _Inbox(), []
    with Resolver(post=inbox.post) as r:
        r.resolve(Name("no-such-host.invalid"), lambda *a: got.append(a))
        inbox.run_one()
    name, addrs, error = got[0]
    assert name == Name("no-such-host.invalid") and addrs is None
    assert isinstance(error, OSError)


def test_resolver_reports_a_failing_lookup_as_an_error():
    def failing(*a, **k):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    inbox, got = _Inbox(), []
    with Resolver(post=inbox.post, getaddrinfo=failing) as r:
        r.resolve("nowhere.example", lambda *a: got.append(a))
        inbox.run_one()
    assert got[0][1] is None and got[0][2].errno == socket.EAI_NONAME


def test_resolver_turns_unexpected_exceptions_into_os_errors():
    def broken(*a, **k):
        raise UnicodeError("label too long")
    inbox, got = _Inbox(), []
    with Resolver(post=inbox.post, getaddrinfo=broken) as r:
        r.resolve("weird.example", lambda *a: got.append(a))
        inbox.run_one()
    assert isinstance(got[0][2], OSError) and "label too long" in str(got[0][2])


def _gated_lookup(calls: list, gate: threading.Event, active: list | None = None):
    lock = threading.Lock()

    def lookup(host, port, family=0, type=0, *rest):
        with lock:
            calls.append(host)
            if active is not None:
                active[0] += 1
                active[1] = max(active[1], active[0])
        gate.wait(5)
        with lock:
            if active is not None:
                active[0] -= 1
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0))]
    return lookup


def test_one_lookup_serves_concurrent_and_later_requests_for_a_name():
    calls, gate, inbox, got = [], threading.Event(), _Inbox(), []
    with Resolver(post=inbox.post, getaddrinfo=_gated_lookup(calls, gate)) as r:
        for port in (22, 80):
            r.resolve("Host.example", lambda *a: got.append(a), port)
        r.resolve("host.example.", lambda *a: got.append(a), 443)
        gate.set()
        for _ in range(3):
            inbox.run_one()
        r.resolve("HOST.EXAMPLE", lambda *a: got.append(a), 8080)   # cached
        # A cached answer is still delivered through post, never re-entrantly.
        assert len(got) == 3 and inbox.q.qsize() == 1
        inbox.run_one()
    assert calls == ["Host.example"]
    assert sorted(a[3] for a in got) == [22, 80, 443, 8080]
    assert all(a[1] == ["127.0.0.1"] for a in got)   # duplicates collapsed


def test_resolver_uses_at_most_the_given_number_of_workers():
    calls, gate, inbox, active = [], threading.Event(), _Inbox(), [0, 0]
    with Resolver(post=inbox.post, workers=2,
                  getaddrinfo=_gated_lookup(calls, gate, active)) as r:
        for i in range(6):
            r.resolve(f"h{i}.example", lambda *a: None)
        time.sleep(0.2)                      # let any extra worker show itself
        assert active[1] <= 2
        gate.set()
        for _ in range(6):
            inbox.run_one()
    assert sorted(calls) == [f"h{i}.example" for i in range(6)]
    workers = [t for t in threading.enumerate() if t.name.startswith("resolver-")]
    assert all(t.daemon for t in workers)    # a stuck lookup must not block exit


def test_no_callback_runs_after_close_even_if_already_posted():
    inbox, got = _Inbox(), []
    r = Resolver(post=inbox.post)
    r.resolve("localhost", lambda *a: got.append(a))
    fn, args = inbox.q.get(timeout=5)        # the answer is posted, not yet run
    r.close()
    fn(*args)
    assert got == []
    with pytest.raises(RuntimeError):
        r.resolve("localhost", lambda *a: None)


def test_resolver_without_post_calls_back_from_the_worker():
    done, got = threading.Event(), []
    with Resolver() as r:
        r.resolve("localhost", lambda *a: (got.append(threading.current_thread()), done.set()))
        assert done.wait(5)
    assert got[0] is not threading.current_thread()
