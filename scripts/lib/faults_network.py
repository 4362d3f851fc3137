#!/usr/bin/env python3
"""Real network faults for outbox-relay: the relay runs in its own network namespace and nftables
rules in that namespace cut, half-cut or thin out its links to the broker and to PostgreSQL.

Needs root (ip netns, nft). Starts its OWN PostgreSQL 15 cluster and Tansu broker, listening on the
host end of a veth pair (10.213.0.1; the namespace end is 10.213.0.2), so a relay started with
`ip netns exec outbox-netfault …` reaches them only over the veth, where the drop rules apply.
Replicas outside the namespace (take-over cases) use the same addresses from the host side and
are never faulted. Everything (namespace, veth, processes, data directory) is removed on exit,
also on failure (try/finally and atexit).

The workload and the checker are scripts/lib/concurrency.py's (imported, not copied): writer
threads commit randomized transactions (domain write first, 1-3 rows over 20 keys, rolled-back
savepoints, long transactions, rollbacks, REPEATABLE READ) at a paced rate, before, during and
after the fault. After the writes the outbox is drained, the relays are stopped with SIGTERM,
every partition is read from offset 0, and the rows are checked by their `outbox-id` header:

  lost        committed rows found neither in Kafka, nor still in the outbox, nor dead-lettered
  duplicates  Σ(copies − 1) per id
  inversions  per key: causal inversions of first occurrences (concurrency.py's check) plus
              intra-transaction inversions
  stale       per key: a copy of a row delivered after the last copy of a causally later row
              (a consumer keeping the latest value per key would end at the older one)
  recovery    time from the end of the fault until every row committed before that moment has
              left the outbox ("the backlog the fault left is drained"), polled every 50 ms while
              the writes go on

Take-over cases (the isolated replica is cut from PostgreSQL longer than its lease) also check the
ownership rule: every message the isolated replica produced during the cut has a CreateTime
before the moment another replica acquired that message's shard (polled from the leases table).

Relay settings: lease 6 s, heartbeat 300 ms, message.timeout.ms 2 s (--message-timeout-ms),
statement timeout 1 s, in-flight window 2000 rows, --relay-header naming the sending replica.
Writes: 4 writers, 300 committed rows/s (--rate), 3 s before the fault, during it, and 4-8 s after.

Cases (--case NAME, repeatable; default all):
  broker-short      relay <-> broker, both directions dropped, 1.2 s (< message.timeout.ms 2 s)
  broker-long       relay <-> broker, both directions dropped, 8 s (> message.timeout.ms)
  pg-short          relay <-> PostgreSQL, both directions dropped, 3 s (< lease 6 s)
  pg-long           relay <-> PostgreSQL, 12 s (> lease), a second replica outside takes over
  broker-acks-lost  the broker's packets to the relay dropped (requests arrive, responses do not), 5 s
  lossy-link        5 % random packet loss both ways on the veth, 30 s (tc netem: not in this kernel)
  three-replicas    3 replicas; the one in the namespace is cut from PostgreSQL (not from the
                    broker) for 12 s
The three PostgreSQL cuts start mid-drain of a 20 000-row burst (one transaction over 2 000 keys
of its own, committed just before; the cut comes once the cut replica has deleted some of it), so
the relay has rows produced and acknowledged but not yet deleted when its database link goes.

One JSON line per case is appended to --reliability-out in concurrency.py's format (name, bound,
inserted, lost, duplicates, orderInversions, pending, deadLettered, recoverySeconds, note).
Exit status: 0 ok, 1 a bound violated (with --check), 2 harness error.
"""
import argparse
import atexit
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # no __pycache__ in scripts/lib
import concurrency as cc  # noqa: E402  (the workload, the Kafka reader and the checker)

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402
from psycopg.types.json import Jsonb  # noqa: E402

NS = "outbox-netfault"
HOST_IF, NS_IF = "obxnf-h", "obxnf-n"
HOST_IP, NS_IP = "10.213.0.1", "10.213.0.2"
PREFIX = 30
PG_BIN = "/usr/lib/postgresql/15/bin"
TANSU = os.path.join(ROOT, ".tools", "bin", "tansu")

LEASE_MS = 6000
MESSAGE_TIMEOUT_MS = 2000
STATEMENT_TIMEOUT_MS = 1000
WINDOW = 2000          # --max-in-flight-rows
RELAY_HEADER = "outbox-relay-replica"

# Relay log lines worth counting in a case's note (what the relay did about the fault).
LOG_EVENTS = {
    "delivery failed": "delivery failed; the row stays in the outbox",
    "producer re-created": "re-creating the Kafka producer",
    "fatal producer": "fatal Kafka producer error",
    "PRODUCER_FENCED answers": "which fences the current one",
    "heartbeat failed": "lease heartbeat failed",
    "leases lost": "lost shard leases to another replica",
    "acked rows left to new owner": "lease lost: acknowledged rows were left",
    "claim failed": "claim failed; retrying",
    "delete failed": "delete failed; retrying",
    "dead-lettered": "row dead-lettered",
}


def log(msg):
    print(f"faults-network: {msg}", flush=True)


class HarnessError(Exception):
    pass


def sh(*cmd, check=True, input=None, quiet=False):
    r = subprocess.run(list(cmd), input=input, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise HarnessError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
    return r


def free_port(host):
    s = socket.socket()
    s.bind((host, 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_for_port(host, port, seconds):
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection((host, port), 0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise HarnessError(f"{host}:{port} not accepting connections after {seconds} s")
            time.sleep(0.1)


# --------------------------------------------------------------------------------------------
# The environment: namespace, veth, nftables, PostgreSQL, Tansu
# --------------------------------------------------------------------------------------------

class Env:
    def __init__(self, keep=False):
        self.keep = keep
        self.run_dir = None
        self.pg_data = None
        self.pg_port = self.kafka_port = None
        self.tansu = None
        self.procs = []  # every relay Popen, so teardown can kill what is left
        self.torn_down = False

    # -- set-up ---------------------------------------------------------------------------

    def setup(self):
        if os.geteuid() != 0:
            raise HarnessError("needs root (ip netns, nft, runuser postgres)")
        for tool in ("ip", "nft"):
            if not shutil.which(tool):
                raise HarnessError(f"`{tool}` is missing (apt-get install -y nftables iproute2)")
        self.clean_stale()
        self.run_dir = tempfile.mkdtemp(prefix="outbox-netfault.")
        os.chmod(self.run_dir, 0o755)
        sh("ip", "netns", "add", NS)
        sh("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF)
        sh("ip", "link", "set", NS_IF, "netns", NS)
        sh("ip", "addr", "add", f"{HOST_IP}/{PREFIX}", "dev", HOST_IF)
        sh("ip", "link", "set", HOST_IF, "up")
        self.ns("ip", "addr", "add", f"{NS_IP}/{PREFIX}", "dev", NS_IF)
        self.ns("ip", "link", "set", NS_IF, "up")
        self.ns("ip", "link", "set", "lo", "up")
        self.ns("nft", "-f", "-", input=(
            "table inet fault {\n"
            "  chain input { type filter hook input priority 0; policy accept; }\n"
            "  chain output { type filter hook output priority 0; policy accept; }\n"
            "}\n"))
        self.start_postgres()
        self.start_tansu()
        # The namespace reaches both over the veth only.
        r = self.ns(sys.executable, "-c",
                    f"import socket; [socket.create_connection(('{HOST_IP}', p), 3).close() for p in ({self.pg_port}, {self.kafka_port})]",
                    check=False)
        if r.returncode != 0:
            raise HarnessError(f"the namespace cannot reach PostgreSQL/Tansu over the veth: {r.stderr.strip()}")
        log(f"namespace {NS} ({NS_IP}) ↔ host {HOST_IP}: PostgreSQL :{self.pg_port}, Tansu :{self.kafka_port}; run dir {self.run_dir}")

    def clean_stale(self):
        """A previous run that died without cleaning up: its namespace (and relays left in it), its veth."""
        if NS in sh("ip", "netns", "list", check=False).stdout.split():
            pids = sh("ip", "netns", "pids", NS, check=False).stdout.split()
            for pid in pids:  # only processes of an earlier run of this script live in this namespace
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", NS, check=False)
            log(f"removed a stale namespace {NS} ({len(pids)} process(es) in it killed)")
        if sh("ip", "link", "show", HOST_IF, check=False).returncode == 0:
            sh("ip", "link", "del", HOST_IF, check=False)
        # The veth disappears asynchronously after its namespace is deleted.
        deadline = time.monotonic() + 10
        while sh("ip", "link", "show", HOST_IF, check=False).returncode == 0:
            if time.monotonic() > deadline:
                raise HarnessError(f"stale interface {HOST_IF} does not go away")
            time.sleep(0.1)

    def ns(self, *cmd, check=True, input=None):
        return sh("ip", "netns", "exec", NS, *cmd, check=check, input=input)

    def start_postgres(self):
        self.pg_data = os.path.join(self.run_dir, "pgdata")
        shutil.chown(self.run_dir, "postgres")
        self.pg_port = free_port(HOST_IP)
        sh("runuser", "-u", "postgres", "--", f"{PG_BIN}/initdb", "-D", self.pg_data, "-U", "postgres",
           "--auth=trust", "-E", "UTF8")
        with open(os.path.join(self.pg_data, "postgresql.conf"), "a") as f:
            f.write(f"""
listen_addresses = '127.0.0.1,{HOST_IP}'
port = {self.pg_port}
unix_socket_directories = '{self.run_dir}'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
shared_buffers = 128MB
""")
        with open(os.path.join(self.pg_data, "pg_hba.conf"), "a") as f:
            f.write(f"host all all {HOST_IP.rsplit('.', 1)[0]}.0/24 trust\n")
        sh("runuser", "-u", "postgres", "--", f"{PG_BIN}/pg_ctl", "-D", self.pg_data, "-l",
           os.path.join(self.run_dir, "postgres.log"), "-w", "-t", "30", "start")
        self.database_url = f"postgresql://postgres@{HOST_IP}:{self.pg_port}/postgres"

    def start_tansu(self):
        self.kafka_port = free_port(HOST_IP)
        url = f"tcp://{HOST_IP}:{self.kafka_port}"
        logf = open(os.path.join(self.run_dir, "tansu.log"), "wb")
        self.tansu = subprocess.Popen([TANSU, "broker", "--listener-url", url, "--advertised-listener-url", url,
                                       "--storage-engine", "memory://tansu/"], stdout=logf, stderr=subprocess.STDOUT)
        logf.close()
        wait_for_port(HOST_IP, self.kafka_port, 30)
        self.brokers = f"{HOST_IP}:{self.kafka_port}"

    # -- faults ---------------------------------------------------------------------------

    def fault(self, rules):
        """rules: [(chain, rule text)] added atomically in the namespace (replacing any earlier ones)."""
        script = "flush table inet fault\n" + "".join(f"add rule inet fault {c} {r}\n" for c, r in rules)
        self.ns("nft", "-f", "-", input=script)

    def heal(self):
        self.ns("nft", "flush", "table", "inet", "fault")

    def netem_available(self):
        """tc netem (latency, reordering) — returns (available, tc's message)."""
        r = self.ns("tc", "qdisc", "add", "dev", NS_IF, "root", "netem", "delay", "50ms", check=False)
        if r.returncode == 0:
            self.ns("tc", "qdisc", "del", "dev", NS_IF, "root", check=False)
            return True, ""
        return False, (r.stderr.strip() or r.stdout.strip())

    # -- tear-down ------------------------------------------------------------------------

    def teardown(self):
        if self.torn_down:
            return
        self.torn_down = True
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        if self.tansu is not None and self.tansu.poll() is None:
            self.tansu.kill()
            self.tansu.wait()
        if self.pg_data and os.path.isdir(self.pg_data):
            sh("runuser", "-u", "postgres", "--", f"{PG_BIN}/pg_ctl", "-D", self.pg_data, "-m", "immediate", "stop",
               check=False)
        sh("ip", "netns", "del", NS, check=False)
        sh("ip", "link", "del", HOST_IF, check=False)
        if self.run_dir and not self.keep:
            shutil.rmtree(self.run_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------

def both_ways(port):
    return [("output", f"ip daddr {HOST_IP} tcp dport {port} drop"),
            ("input", f"ip saddr {HOST_IP} tcp sport {port} drop")]


class Case:
    def __init__(self, key, title, fault, seconds, replicas=(("r0", True),), pre=3.0, post=6.0,
                 dup_bound=WINDOW, dup_why="", takeover=False, note="", expect_dead=0, burst=0):
        self.key, self.title, self.fault, self.seconds = key, title, fault, seconds
        self.burst = burst  # rows committed in one transaction just before the cut, which comes mid-drain
        self.replicas, self.pre, self.post = list(replicas), pre, post
        self.dup_bound, self.dup_why, self.takeover, self.note, self.expect_dead = dup_bound, dup_why, takeover, note, expect_dead


def cases(env):
    kp, pp = env.kafka_port, env.pg_port
    win = f"in-flight window ({WINDOW})"
    return [
        Case("broker-short",
             "network: relay ↔ broker partitioned 1.2 s (nft drop both ways; < message.timeout.ms 2 s) under steady writes",
             lambda: both_ways(kp), 1.2,
             dup_why=f"<= {win} (a request whose response the cut delays past its timeout is sent again)"),
        # 8 s, not just "longer than message.timeout.ms": requests on the wire at the cut are
        # retransmitted by the kernel at about +0.2, 0.6, 1.4, 3.0, 6.2 and 12.6 s, also from a
        # connection librdkafka has closed, unless it closes with a reset. A heal at 8 s leaves
        # the next retransmission 4.6 s after it, well after the relay re-sent those rows and
        # produced later rows of their keys: with a graceful close the old copies landed last in
        # 4 of 4 runs (at 6 s, racing the +6.2 s retransmission, in 5 of 28).
        Case("broker-long",
             "network: relay ↔ broker partitioned 8 s (nft drop both ways; > message.timeout.ms 2 s) under steady writes",
             lambda: both_ways(kp), 8.0, post=8.0,
             dup_why=f"<= {win} (only requests on the wire at the cut can land unacknowledged)"),
        Case("pg-short",
             "network: relay ↔ PostgreSQL partitioned 3 s (nft drop both ways; < lease 6 s) mid-drain of a 20 000-row burst, under steady writes",
             lambda: both_ways(pp), 3.0, burst=20000,
             dup_why=f"<= {win} (re-sent only if the lease is lost; rows acknowledged during the cut are deleted after it)"),
        Case("pg-long",
             "network: relay ↔ PostgreSQL partitioned 12 s (> lease 6 s) mid-drain of a 20 000-row burst; a second replica outside the namespace takes over",
             lambda: both_ways(pp), 12.0, replicas=(("r0", True), ("r1", False)), takeover=True, burst=20000,
             dup_why=f"<= the cut replica's {win} (acknowledged, not deleted: the new owner sends them again)"),
        Case("broker-acks-lost",
             "network: broker's responses to the relay dropped 5 s (nft drop on input from the broker port; "
             "requests still arrive) under steady writes",
             lambda: [("input", f"ip saddr {HOST_IP} tcp sport {kp} drop")], 5.0, post=8.0,
             dup_why=f"<= {win} (persisted but unheard rows time out and are sent again; after the first request "
                     "timeout librdkafka drops the connection and cannot open another)"),
        Case("lossy-link",
             "network: 5 % random packet loss both ways on the relay's link (nft numgen) for 30 s under load",
             lambda: [("input", f'iifname "{NS_IF}" numgen random mod 100 < 5 drop'),
                      ("output", f'oifname "{NS_IF}" numgen random mod 100 < 5 drop')], 30.0, pre=3.0, post=4.0,
             dup_why=f"<= {win} (TCP repairs losses; only a response delayed past message.timeout.ms causes a re-send)"),
        Case("three-replicas",
             "network: 3 replicas, the one in the namespace cut from PostgreSQL (not from the broker) for 12 s mid-drain of a 20 000-row burst",
             lambda: both_ways(pp), 12.0, replicas=(("r0", True), ("r1", False), ("r2", False)), takeover=True, burst=20000,
             dup_why=f"<= the cut replica's {win} (acknowledged, not deleted: the new owners send them again)"),
    ]


# --------------------------------------------------------------------------------------------
# One case
# --------------------------------------------------------------------------------------------

class Monitor(threading.Thread):
    """Polls the outbox (and, for take-over cases, the leases of the keys' shards) every 50 ms from
    the host from the fault's start until stopped."""

    def __init__(self, env, table, isolated, iso_shards):
        super().__init__(daemon=True)
        self.conn = psycopg.connect(env.database_url, autocommit=True, application_name="netfault-monitor")
        self.t = cc.table_ident(table)
        self.leases = cc.table_ident(table + "_leases")
        self.isolated = isolated
        self.iso_shards = sorted(iso_shards)  # the keys' shards the isolated replica held when the cut began
        self.h0 = self.h1 = None
        self.t_heal = None
        self.pre_backlog_drained_at = None  # rows committed before the fault all gone
        self.recovered_at = None           # rows committed before the heal all gone
        self.first_progress_at = None      # first row below h1 deleted after the heal
        self.peak_backlog = 0
        self.takeover = {}                 # shard -> (new owner, acquired_at epoch seconds)
        self.stop = threading.Event()
        self.error = None

    def run(self):
        try:
            self._run()
        except Exception as e:  # noqa: BLE001  (reported by the case)
            self.error = repr(e)
        finally:
            self.conn.close()

    def _run(self):
        q = sql.SQL("SELECT count(*), count(*) FILTER (WHERE id <= %s), count(*) FILTER (WHERE id <= %s) FROM {}").format(self.t)
        ql = sql.SQL("SELECT shard, owner, extract(epoch FROM acquired_at)::float8 FROM {} WHERE shard = ANY(%s)").format(self.leases)
        at_heal = None
        while not self.stop.is_set():
            h1 = self.h1
            total, below0, below1 = self.conn.execute(q, (self.h0, h1 if h1 is not None else -1)).fetchone()
            now = time.time()
            self.peak_backlog = max(self.peak_backlog, total)
            if below0 == 0 and self.pre_backlog_drained_at is None:
                self.pre_backlog_drained_at = now
            if h1 is not None:
                if at_heal is None:
                    at_heal = below1
                elif below1 < at_heal and self.first_progress_at is None:
                    self.first_progress_at = now
                if below1 == 0 and self.recovered_at is None:
                    self.recovered_at = now
                    if self.first_progress_at is None:
                        self.first_progress_at = now
            if self.isolated and self.t_heal is None:
                for shard, owner, acquired in self.conn.execute(ql, (self.iso_shards,)).fetchall():
                    if owner is not None and owner != self.isolated and shard not in self.takeover:
                        self.takeover[shard] = (owner, acquired)
            self.stop.wait(0.05)


BURST_KEYS = 2000  # a burst's rows go to keys of their own, 10 rows each for a 20 000-row burst


def burst(admin, wl, table, keys, n, watch_shards, key_shards):
    """Commits n rows in ONE transaction (so the backlog appears at once), spread over BURST_KEYS keys
    of its own (k<keys>… — few rows per key keeps the checker's intra-transaction pairs small), and
    recorded for the checker like any other transaction. Then waits until the relay is mid-drain:
    some of the burst's rows of `watch_shards` (the cut replica's) deleted. Returns those rows' ids
    and how many were left at the last look."""
    ins = sql.SQL("INSERT INTO {} (topic, key, value, headers) SELECT * FROM unnest(%s::text[], %s::bytea[], %s::bytea[], %s::jsonb[]) "
                  "RETURNING id, value").format(cc.table_ident(table))
    t = cc.Txn("burst", -2)
    ks = [keys + i % BURST_KEYS for i in range(n)]
    vals = [b"burst/%d/" % i + os.urandom(8) for i in range(n)]
    t.first_insert_began = time.time()
    with admin.transaction():
        rows = admin.execute(ins, ([wl.topic_of(k) for k in ks], [b"k%d" % k for k in ks], vals,
                                   [Jsonb({"txn": t.label})] * n)).fetchall()
    t.commit_returned = time.time()
    t.outcome = "committed"
    by_val = dict(zip(vals, ks))
    t.kept = sorted((rid, by_val[bytes(v)], bytes(v)) for rid, v in rows)
    wl.txns.append(t)
    watched = [rid for rid, k, _ in t.kept if key_shards[k] in watch_shards]
    q = sql.SQL("SELECT count(*) FROM {} WHERE id = ANY(%s)").format(cc.table_ident(table))
    deadline = time.monotonic() + 10
    left = len(watched)
    while left == len(watched) and time.monotonic() < deadline:
        left = admin.execute(q, (watched,)).fetchone()[0]
    return watched, left


def short_replica(name):
    """`r1` for a replica name such as `nf_three_replicas_1a2b3c4d-r1@host` (or its header value)."""
    return name.split("-")[-1].split("@")[0]


def duplicate_provenance(msgs):
    """Who sent each extra copy: per (first sender → later sender) pair, the extra copies, in
    partition-offset order (one id is one key is one partition). A bound is argued from who may
    re-send what (a take-over re-sends the cut replica's window), so this is the evidence to read
    when a count exceeds it."""
    copies = {}
    for m in msgs:
        if m["id"] is not None:
            copies.setdefault(m["id"], []).append(m)
    pairs = {}
    for ms in copies.values():
        if len(ms) < 2:
            continue
        ms.sort(key=lambda m: (m["topic"], m["partition"], m["offset"]))
        senders = [short_replica(m["headers"].get(RELAY_HEADER, b"?").decode()) for m in ms]
        for later in senders[1:]:
            pair = f"{senders[0]}→{later}"
            pairs[pair] = pairs.get(pair, 0) + 1
    if not pairs:
        return ""
    return "extra copies by first → later sender: " + ", ".join(f"{k} {v}" for k, v in sorted(pairs.items()))


def latency_note(txns, msgs, t_fault, t_heal):
    """COMMIT returned → first copy's CreateTime, for rows committed during the fault and for the rest."""
    first = {}
    for m in msgs:
        if m["id"] is not None and m["ts_ms"] is not None:
            first[m["id"]] = min(first.get(m["id"], m["ts_ms"]), m["ts_ms"])
    during, other = [], []
    for t in txns:
        if t.outcome != "committed" or t.writer < 0:
            continue
        for rid, _k, _v in t.kept:
            if rid in first:
                (during if t_fault <= t.commit_returned < t_heal else other).append(first[rid] - t.commit_returned * 1000)
    during.sort()
    other.sort()
    f = lambda v: "-" if v is None else (f"{v / 1000:.2f} s" if v >= 1000 else f"{v:.0f} ms")
    return (f"commit → Kafka p50/p99/max {f(cc.pct(during, 50))}/{f(cc.pct(during, 99))}/{f(during[-1] if during else None)} "
            f"for rows committed during the fault, {f(cc.pct(other, 50))}/{f(cc.pct(other, 99))}/{f(other[-1] if other else None)} otherwise")


def seq_last(conn, table):
    return conn.execute(sql.SQL("SELECT last_value FROM {}").format(cc.table_ident(table + "_id_seq"))).fetchone()[0]


def count_events(path):
    counts = {k: 0 for k in LOG_EVENTS}
    try:
        with open(path, errors="replace") as f:
            for line in f:
                for k, needle in LOG_EVENTS.items():
                    if needle in line:
                        counts[k] += 1
    except OSError:
        pass
    return counts


def acknowledged_by_relay(path):
    """(replica, deliveries acknowledged) from a relay's last `relay stopped` line, or None."""
    found = None
    try:
        with open(path, errors="replace") as f:
            for line in f:
                if "relay stopped" in line:
                    d = re.search(r"outbox\.delivered=(\d+)", line)
                    r = re.search(r"outbox\.replica=(\S+)", line)
                    if d and r:
                        found = (r.group(1), int(d.group(1)))
    except OSError:
        pass
    return found


def run_case(env, a, case, seed, log_root):
    tag = uuid.uuid4().hex[:8]
    table = f"nf_{case.key.replace('-', '_')}_{tag}"
    topics = [f"nf-{case.key}-{tag}-t{i}" for i in range(2)]
    log_dir = os.path.join(log_root, case.key)
    os.makedirs(log_dir, exist_ok=True)
    log(f"── {case.key}: {case.title}")
    sh(a.relay, "migrate", "--database-url", env.database_url, "--table", table)
    admin = psycopg.connect(env.database_url, autocommit=True, application_name="netfault-admin")
    dom = cc.table_ident(table + "_domain")
    admin.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0)").format(dom))
    admin.execute(sql.SQL("INSERT INTO {} (id) SELECT generate_series(1, %s)").format(dom), (2 * cc.DOMAIN_ROWS,))
    cc.create_topics(env.brokers, topics, 4)
    shard_count = admin.execute(sql.SQL("SELECT shard_count FROM {}").format(cc.table_ident(table + "_relay_meta"))).fetchone()[0]
    key_shards = dict(admin.execute(
        "SELECT k, (('x' || substr(md5(('k' || k)::bytea), 1, 8))::bit(32)::integer & 2147483647) %% %s "
        "FROM generate_series(0, %s) k", (shard_count, a.keys + (BURST_KEYS if case.burst else 0) - 1)).fetchall())

    names = [f"{table}-{r}" for r, _ in case.replicas]
    isolated = [n for n, (_, in_ns) in zip(names, case.replicas) if in_ns]
    replicas = []
    for name, (_, in_ns) in zip(names, case.replicas):
        cmd = (["ip", "netns", "exec", NS] if in_ns else []) + [
            a.relay, "run", "--database-url", env.database_url, "--brokers", env.brokers, "--table", table,
            "--http-port", "0", "--http-host", "127.0.0.1", "--lease-duration-ms", str(LEASE_MS),
            "--heartbeat-interval-ms", "300", "--message-timeout-ms", str(MESSAGE_TIMEOUT_MS),
            "--statement-timeout-ms", str(STATEMENT_TIMEOUT_MS), "--poll-interval-ms", "200",
            "--max-in-flight-rows", str(WINDOW), "--replica-name", name, "--relay-header", RELAY_HEADER,
            # Each case cuts some replicas off while the others hold the rest of the shards: even
            # shares (the default load spread is run under restarts and freezes by concurrency.py).
            "--shard-spread", "even"]
        replicas.append(cc.Replica(cmd, name + ("@ns" if in_ns else "@host"), log_dir))

    wargs = types.SimpleNamespace(database_url=env.database_url, writers=a.writers, rate=a.rate, think_ms=10.0, keys=a.keys)
    wl = cc.Workload(wargs, table, topics, seed)
    t_ = cc.table_ident(table)
    count_sql = sql.SQL("SELECT count(*) FROM {}").format(t_)
    relay_failures = []
    monitor = None
    try:
        for r in replicas:
            r.start()
            env.procs.append(r.proc)
        # Every replica holds the shards the assignment gives it (so the isolated one owns keys).
        wait_balanced(admin, table, names, shard_count, replicas)
        owner_of = dict(admin.execute(sql.SQL("SELECT shard, owner FROM {}").format(cc.table_ident(table + "_leases"))).fetchall())
        iso_shards = {s for s in key_shards.values() if isolated and owner_of.get(s) == isolated[0]}
        if case.takeover and not any(key_shards[k] in iso_shards for k in range(a.keys)):
            raise HarnessError(f"the isolated replica holds none of the writers' keys' shards")
        # Warm-up: one committed row per key, relayed before the clock starts (as concurrency.py).
        warm = cc.Txn("warmup", -1)
        with admin.transaction():
            warm.first_insert_began = time.time()
            for k in range(a.keys):
                v = b"warmup/%d" % k
                rid = admin.execute(wl.insert, (wl.topic_of(k), b"k%d" % k, v, Jsonb({"txn": "warmup"}))).fetchone()[0]
                warm.kept.append((rid, k, v))
        warm.commit_returned = time.time()
        warm.outcome = "committed"
        wl.txns.append(warm)
        wait_until(lambda: admin.execute(count_sql).fetchone()[0] == 0, 60, "warm-up rows relayed", replicas)

        total = case.pre + case.seconds + case.post
        span = {}
        writer = threading.Thread(target=lambda: span.update(t=wl.run(total)), daemon=True)
        writer.start()
        time.sleep(case.pre)  # steady writes before the fault
        burst_note = ""
        monitor = Monitor(env, table, isolated[0] if case.takeover else None, iso_shards)
        rules = case.fault()
        if case.burst:
            watched, left_before = burst(admin, wl, table, a.keys, case.burst, iso_shards or set(key_shards.values()), key_shards)
        monitor.h0 = seq_last(admin, table)
        env.fault(rules)
        t_fault = time.time()  # once the rules are in place
        monitor.start()
        if case.burst:
            left_after = admin.execute(sql.SQL("SELECT count(*) FROM {} WHERE id = ANY(%s)").format(t_), (watched,)).fetchone()[0]
            burst_note = (f"the burst ({case.burst} rows, one transaction) was mid-drain: {left_before} of its {len(watched)} rows on "
                          f"the cut replica's shards left just before the cut, {left_after} just after")
        log(f"fault on ({len(rules)} nft rule(s): {'; '.join(f'{c}: {r}' for c, r in rules)}) for {case.seconds:g} s")
        time.sleep(case.seconds)  # the fault's duration
        env.heal()
        t_heal = time.time()
        monitor.h1 = seq_last(admin, table)
        monitor.t_heal = t_heal
        log(f"healed after {t_heal - t_fault:.2f} s; backlog peak {monitor.peak_backlog} rows")
        deadline = time.monotonic() + a.recovery_timeout
        while monitor.recovered_at is None and monitor.is_alive() and time.monotonic() < deadline:
            dead = [r for r in replicas if r.proc.poll() is not None]
            if dead:
                break
            time.sleep(0.05)
        writer.join()
        t0, t1 = span["t"]
        n_committed = sum(len(x.kept) for x in wl.txns if x.outcome == "committed" and x.writer >= 0)
        # Drain what the writes left after the fault.
        t_d = time.monotonic()
        drain_timeout = False
        while admin.execute(count_sql).fetchone()[0]:
            if any(r.proc.poll() is not None for r in replicas):
                break
            if time.monotonic() - t_d > a.drain_timeout:
                drain_timeout = True
                break
            time.sleep(0.1)
        drain_s = time.monotonic() - t_d
        monitor.stop.set()
        monitor.join()
        for r in replicas:
            crashed, code = r.stop(signal.SIGTERM)
            if crashed:
                relay_failures.append(f"{r.name} crashed (exit {code}); log ends:\n{r.tail(15)}")
            elif code != 0:
                relay_failures.append(f"{r.name} exited {code} on SIGTERM; log ends:\n{r.tail(15)}")
        left_ids = [x[0] for x in admin.execute(sql.SQL("SELECT id FROM {}").format(t_)).fetchall()]
        dead_ids = [x[0] for x in admin.execute(sql.SQL("SELECT id FROM {}").format(
            cc.table_ident(table + "_dead_letters"))).fetchall()]
        msgs, _ = cc.read_topics(env.brokers, topics)
    finally:
        if monitor is not None:
            monitor.stop.set()
        wl.stop.set()
        for r in replicas:
            if r.proc is not None and r.proc.poll() is None:
                r.proc.kill()
                r.proc.wait()
        admin.close()

    res = cc.analyze(wl.txns, msgs, left_ids, restarted=True)
    committed = set()
    for x in wl.txns:
        if x.outcome == "committed":
            committed.update(rid for rid, _, _ in x.kept)
    in_kafka = {m["id"] for m in msgs if m["id"] is not None}
    lost_ids = sorted(committed - in_kafka - set(left_ids) - set(dead_ids))
    inversions = res["causal_inversions"] + res["intra_txn_inversions"]
    # A copy of a row landing after the last copy of a causally later row of its key: a consumer
    # keeping the latest value per key ends at the older one. broker-long made some until the
    # producer's sockets closed with a reset (see the case's comment).
    stale = res["stale_redeliveries"]
    recovery = None if monitor.recovered_at is None else round(max(0.0, monitor.recovered_at - t_heal), 2)

    # Per replica: what it sent, and when the isolated one last produced during the fault.
    by_replica = {}
    for m in msgs:
        by_replica[m["headers"].get(RELAY_HEADER, b"?").decode()] = by_replica.get(m["headers"].get(RELAY_HEADER, b"?").decode(), 0) + 1
    late = []
    margin = None
    last_iso = None
    iso_during = 0
    if case.takeover:
        iso = isolated[0]
        for m in msgs:
            if m["headers"].get(RELAY_HEADER, b"").decode() != iso or m["ts_ms"] is None:
                continue
            ts = m["ts_ms"] / 1000
            if not (t_fault <= ts < t_heal):
                continue
            last_iso = ts if last_iso is None else max(last_iso, ts)
            iso_during += 1
            k = int(m["key"][1:])
            took = monitor.takeover.get(key_shards[k])
            if took is None:
                continue
            gap = took[1] - ts
            margin = gap if margin is None else min(margin, gap)
            if gap <= 0:
                late.append({"id": m["id"], "key": f"k{k}", "shard": key_shards[k], "create_time": ts,
                             "taken_over_by": took[0], "acquired_at": took[1]})
    takeover_s = None
    if monitor.takeover:
        takeover_s = round(min(v[1] for v in monitor.takeover.values()) - t_fault, 2)

    events = {r.name: count_events(os.path.join(log_dir, f"{r.name}.1.log")) for r in replicas}
    notes = []
    if case.takeover:
        notes.append(f"take-over {takeover_s} s after the cut began (lease {LEASE_MS / 1000:g} s; {len(monitor.takeover)} of the "
                     f"cut replica's {len(iso_shards)} shards with rows moved); the cut replica produced {iso_during} messages "
                     f"during the cut" + ("" if last_iso is None else f", the last {last_iso - t_fault:.2f} s into it"
                                          + ("" if margin is None else f", >= {margin:.2f} s before its shard was taken"))
                     + f"; produced after take-over: {len(late)}")
    first = '-' if monitor.first_progress_at is None else f"{max(0.0, monitor.first_progress_at - t_heal):.2f} s"
    notes.append(f"recovery = heal to the backlog it left drained (first delete {first} after the heal)")
    if case.takeover:
        pre = '-' if monitor.pre_backlog_drained_at is None else f"{monitor.pre_backlog_drained_at - t_fault:.2f} s"
        notes.append(f"rows committed before the cut all relayed {pre} after it began")
    if burst_note:
        notes.append(burst_note)
    notes.append(latency_note(wl.txns, msgs, t_fault, t_heal))
    if stale:
        ex = res["examples"].get("stale_redeliveries") or []
        notes.append(f"STALE RE-DELIVERIES {stale}: copies of a row delivered after the last "
                     f"copy of a causally later row of its key, e.g. " + "; ".join(
                         f"{e['key']}: id {e['a_id']} again at offset {e['a_copy_offset']} after id {e['b_id']} at {e['b_last_offset']}"
                         for e in ex[:2]))
    dup_note = duplicate_provenance(msgs)
    if dup_note:
        notes.append(dup_note)
    ev = []
    for rname, c in events.items():
        shown = ", ".join(f"{k} {v}" for k, v in c.items() if v)
        ev.append(f"{short_replica(rname)}: {shown or 'no warnings'}")
    notes.append("relay log: " + "; ".join(ev))
    if case.note:
        notes.append(case.note)

    # On a loss, say per replica how many deliveries it was told of (its `relay stopped` line) against
    # the messages in the topics carrying its header: a replica acknowledged more than the topics hold
    # from it points at the broker, none at the relay. Either way the loss fails the case. (Tansu's
    # losses once reported here were the reader's: it stopped at ListOffsets(latest), which Tansu
    # 0.6.0 answers with the last batch's base offset + 1; concurrency.read_topics reads to EOF now.)
    if lost_ids:
        acked = [acknowledged_by_relay(os.path.join(log_dir, f"{r.name}.1.log")) for r in replicas]
        notes.append("lost rows; acknowledged to each replica vs in the topics from it: " + ", ".join(
            f"{short_replica(x[0])}: {x[1]} vs {by_replica.get(x[0], 0)}" if x else "(a replica without its stop line)"
            for x in acked))

    viol = {}
    if lost_ids:
        viol["lost"] = len(lost_ids)
    if inversions:
        viol["order_inversions"] = inversions
    if stale:
        viol["stale_redeliveries"] = stale
    if res["duplicates"] > case.dup_bound:
        viol["duplicates"] = f"{res['duplicates']} > {case.dup_bound}"
    if len(dead_ids) > case.expect_dead:
        viol["dead_lettered"] = len(dead_ids)
    for k in ("rolled_back_delivered", "unexpected_ids", "payload_mismatches", "keys_on_several_partitions"):
        if res[k]:
            viol[k] = res[k]
    if late:
        viol["produced_after_takeover"] = len(late)
    if case.takeover and not monitor.takeover:
        viol["no_takeover"] = "no shard of the isolated replica was taken over during the cut"
    if recovery is None:
        viol["no_recovery"] = f"backlog left by the fault not drained within {a.recovery_timeout} s"
    if drain_timeout or left_ids:
        viol["pending"] = len(left_ids)
    if relay_failures:
        viol["relay_failures"] = relay_failures
    if wl.crashes:
        viol["writer_crashes"] = wl.crashes
    if monitor.error:
        viol["monitor_error"] = monitor.error
    if n_committed == 0:
        viol["no_committed_rows"] = 1

    bound = f"lost 0, order inversions 0, stale re-deliveries 0, dead-lettered {case.expect_dead}, duplicates {case.dup_why}"
    if case.takeover:
        bound += "; the cut replica produces nothing after its shard was taken over"
    line = {
        "name": case.title, "bound": bound, "inserted": len(committed), "lost": len(lost_ids),
        "duplicates": res["duplicates"], "orderInversions": inversions, "pending": len(left_ids),
        "deadLettered": len(dead_ids), "recoverySeconds": recovery, "note": "; ".join(notes),
    }
    detail = {"case": case.key, "ok": not viol, "violations": viol, "line": line, "table": table, "topics": topics,
              "peak_backlog": monitor.peak_backlog,
              "messages_by_replica": by_replica, "relay_events": events, "writes_s": round(t1 - t0, 2),
              "rows_per_s": round(n_committed / (t1 - t0), 1), "drain_s_after_writes": round(drain_s, 2),
              "lost_ids": lost_ids[:10], "order_examples": {k: res["examples"].get(k) for k in ("causal_inversions", "stale_redeliveries")}, "late_produces": late[:5], "takeover": {str(k): v for k, v in monitor.takeover.items()},
              "log_dir": log_dir}
    return detail


def wait_until(cond, seconds, what, replicas):
    deadline = time.monotonic() + seconds
    while not cond():
        for r in replicas:
            if r.proc.poll() is not None:
                raise HarnessError(f"{r.name} exited with {r.proc.returncode} while waiting for {what}:\n{r.tail()}")
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {seconds} s waiting for {what}:\n" + "".join(r.tail(8) for r in replicas))
        time.sleep(0.1)


def wait_balanced(admin, table, names, shard_count, replicas):
    """Until every shard is held by the replica ShardAssignment gives it (contiguous ranges over the
    sorted names) — the state a fault should start from."""
    srt = sorted(names)
    n = len(srt)
    want = {}
    for i, name in enumerate(srt):
        base, extra = shard_count // n, shard_count % n
        start = i * base + min(i, extra)
        for s in range(start, start + base + (1 if i < extra else 0)):
            want[s] = name
    q = sql.SQL("SELECT shard, owner FROM {} WHERE expires_at > now()").format(cc.table_ident(table + "_leases"))
    wait_until(lambda: dict(admin.execute(q).fetchall()) == want, 60, "the shards balanced over the replicas", replicas)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--relay", default=os.path.join(ROOT, ".build", "debug", "outbox-relay"))
    ap.add_argument("--reliability-out", help="append one fault-case JSON line per case (docs/RELIABILITY.md)")
    ap.add_argument("--log-dir", help="relay logs, one directory per case (default: a temporary directory)")
    ap.add_argument("--check", action="store_true", help="exit 1 when a case's bound is violated")
    ap.add_argument("--seed", type=int, help="workload seed (default: random, printed)")
    ap.add_argument("--case", action="append", help="run only this case (repeatable); default all")
    ap.add_argument("--rate", type=float, default=300, help="committed rows/s over all writers (default 300)")
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--keys", type=int, default=20)
    ap.add_argument("--recovery-timeout", type=float, default=90)
    ap.add_argument("--drain-timeout", type=float, default=90)
    ap.add_argument("--keep", action="store_true", help="keep the PostgreSQL/Tansu run directory")
    ap.add_argument("--json-out", help="write every case's details here (JSON)")
    ap.add_argument("--fault-seconds", type=float, help="override the selected cases' fault duration (experiments)")
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1, 2**31)
    log(f"seed {seed}")
    if not os.access(a.relay, os.X_OK):
        log(f"harness error: relay binary {a.relay} not found or not executable")
        return 2
    log_root = a.log_dir or tempfile.mkdtemp(prefix="netfault-logs.")
    os.makedirs(log_root, exist_ok=True)

    env = Env(keep=a.keep)
    atexit.register(env.teardown)

    def on_signal(signum, _frame):
        log(f"signal {signum}: stopping and cleaning up")
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    results = []
    started = time.monotonic()
    try:
        env.setup()
        netem, netem_msg = env.netem_available()
        all_cases = cases(env)
        known = {c.key for c in all_cases}
        for c in a.case or []:
            if c not in known:
                log(f"unknown case {c}; known: {', '.join(sorted(known))}")
                return 2
        for c in all_cases:
            if c.key == "lossy-link":
                c.note = ("added latency not staged: `tc qdisc add dev … root netem` fails in this kernel"
                          f" ({netem_msg or 'no message'})" if not netem else
                          "tc netem is available here but this case stages loss only")
        for i, c in enumerate(x for x in all_cases if not a.case or x.key in a.case):
            if a.fault_seconds is not None:
                c.seconds = a.fault_seconds
            t_c = time.monotonic()
            d = run_case(env, a, c, seed + i, log_root)
            d["wall_s"] = round(time.monotonic() - t_c, 1)
            results.append(d)
            L = d["line"]
            log(f"{c.key}: inserted {L['inserted']}, lost {L['lost']}, duplicates {L['duplicates']} (bound {c.dup_bound}), "
                f"inversions {L['orderInversions']}, pending {L['pending']}, dead-lettered {L['deadLettered']}, "
                f"recovery {L['recoverySeconds']} s; {d['rows_per_s']} rows/s; case took {d['wall_s']} s")
            log(f"  {L['note']}")
            log(f"  messages by replica: {d['messages_by_replica']}")
            log(f"  {'OK' if d['ok'] else 'VIOLATED: ' + json.dumps(d['violations'], default=str)}")
            if a.reliability_out:
                with open(a.reliability_out, "a") as f:
                    f.write(json.dumps(L, sort_keys=True) + "\n")
    except (HarnessError, subprocess.CalledProcessError, psycopg.Error, cc.HarnessError) as e:
        log(f"harness error: {e}")
        return 2
    finally:
        env.teardown()
        if a.json_out:
            with open(a.json_out, "w") as f:
                json.dump({"seed": seed, "cases": results}, f, indent=1, default=str)
    bad = [d["case"] for d in results if not d["ok"]]
    log(f"{len(results)} case(s) in {time.monotonic() - started:.0f} s, seed {seed}: "
        + ("all within their bounds" if not bad else f"VIOLATED: {', '.join(bad)}; relay logs in {log_root}"))
    return 1 if (a.check and bad) else 0


if __name__ == "__main__":
    sys.exit(main())
