#!/usr/bin/env python3
"""outbox-relay benchmark (driven by scripts/bench, which builds the relay in release mode and
starts a throwaway PostgreSQL 15 cluster and a Tansu broker via scripts/lib/services.sh).

Python 3 standard library only. It talks to PostgreSQL through a minimal frontend/backend
protocol v3 client below (trust authentication, simple query protocol), so polling and paced
inserts do not fork a psql per statement; pgbench is used for the database ceiling.

Scenarios (each on a fresh table and a fresh topic):
  drain    backlog of --rows rows inserted before the relay starts; time from relay start to an
           empty table; verified by consuming the topic (lost, duplicates, per-key order)
  ceiling  the relay's own claim SELECT and lease-checked DELETE, 1000 rows a round, run by
           pgbench on the same backlog without Kafka: the database's serial upper bound
  steady   single-row autocommit INSERTs at fixed rates (random arrivals; --arrivals) while the relay runs; per-row latency
           from the row's created_at (clock_timestamp() at INSERT) to the relay's DELETE of it,
           recorded by a bench-only AFTER DELETE row trigger. Each rate runs once per relay in
           --steady-relays (default: outbox-relay, outbox-relay with --busy-poll-ms of
           --batched-busy-poll-ms, then the naive SKIP LOCKED relay of
           scripts/lib/naive_relay.py), with per-row costs: relay and PostgreSQL CPU, statements
           and transactions per row; --steady-rounds repeats it all, and the report's section 6
           gives issue 13's targets against the naive relay per round (median, range, rounds met)
  steady_scale  the same at --steady-scale-rate rows/s with --steady-scale-replicas relay
           processes (default 1 and 3) of each relay in --steady-relays: what replicas cost
  insert_only  the same paced INSERTs at the highest rate without any relay: can the machine
           and the database take that rate at all?
  insert_cost  backend CPU per single-row INSERT transaction on each outbox shape — as migrated,
           less the NOTIFY trigger (the naive relay's table in steady and concurrent), a minimal
           outbox table, and the minimal one plus each part the migration adds: what the table
           costs every application INSERT, which the steady ratios leave out (both relays run on
           the migrated table there)
  scale    drain of --scale-rows rows with 1, 2, 4 relay processes on one table
  concurrent  8 writer threads commit randomized transactions (xid taken first, savepoints, long
           and rolled-back transactions, REPEATABLE READ) at --concurrent-rate rows/s for
           --concurrent-seconds, once with one relay and once with one naive SKIP LOCKED relay
           (scripts/lib/naive_relay.py), same seed; scripts/lib/concurrency.py runs and checks
           each (causal per-key order, loss, rolled-back rows; latency COMMIT returned → Kafka
           CreateTime) and measures the relay's and PostgreSQL's CPU per row from the writers'
           start to the outbox empty (the naive relay on the relay's migrated table less its
           NOTIFY trigger, as in the steady state); --concurrent-rounds repeats the pair.
           Needs .tools/venv's psycopg and confluent-kafka (scripts/bootstrap).
It prints a human-readable table and one line `BENCH_JSON {...}`. The method, and what each
figure does and does not measure, is in docs/BENCHMARKS.md.
"""
import argparse
import bisect
import json
import statistics
import math
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts", "lib"))
from procstat import BrokerSends, all_cpu, parent_pid, proc_cpu, threads_counters  # noqa: E402  (scripts/lib, shared with concurrency.py)
from acklog import read_ack_logs  # noqa: E402
CONCURRENCY_PY = os.path.join(ROOT, "scripts", "lib", "concurrency.py")
NAIVE_RELAY_PY = os.path.join(ROOT, "scripts", "lib", "naive_relay.py")
VENV_PYTHON = os.path.join(ROOT, ".tools", "venv", "bin", "python")
# Topics' partitions unless --partitions says otherwise: the steady and drain scenarios', and the
# concurrent scenario's two topics. The naive relay's sleep after an empty poll (the issue's relay).
PARTITIONS = 8
CONCURRENT_PARTITIONS = 4
NAIVE_IDLE_MS = 20
SHARDS = 256  # migrate's default shard count; the ceiling passes all of them like one relay would


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Minimal PostgreSQL client (protocol v3, trust auth, simple query protocol)
# --------------------------------------------------------------------------------------------

class PGError(Exception):
    pass


class PG:
    def __init__(self, host, port, user, database, application_name="outbox-bench"):
        self.sock = socket.create_connection((host, port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = self.sock.makefile("rb", buffering=1 << 16)
        self.queries = 0  # statements sent (each a transaction of its own unless in BEGIN)
        params = b""
        for k, v in (("user", user), ("database", database), ("application_name", application_name)):
            params += k.encode() + b"\0" + v.encode() + b"\0"
        params += b"\0"
        self.sock.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
        while True:
            t, body = self._read()
            if t == b"R":
                code = struct.unpack("!i", body[:4])[0]
                if code != 0:
                    raise PGError(f"authentication method {code} not supported (needs trust)")
            elif t == b"E":
                raise PGError(self._err(body))
            elif t == b"K":
                self.backend_pid = struct.unpack("!i", body[:4])[0]
            elif t == b"Z":
                break

    @classmethod
    def from_url(cls, url, **kw):
        u = urllib.parse.urlparse(url)
        return cls(u.hostname or "127.0.0.1", u.port or 5432, u.username or "postgres",
                   (u.path or "/postgres").lstrip("/") or "postgres", **kw)

    def _read(self):
        head = self.rfile.read(5)
        if len(head) < 5:
            raise PGError("connection closed")
        t, n = head[:1], struct.unpack("!i", head[1:])[0]
        return t, self.rfile.read(n - 4)

    @staticmethod
    def _err(body):
        fields = {}
        for part in body.split(b"\0"):
            if part:
                fields[part[:1]] = part[1:].decode(errors="replace")
        return f"{fields.get(b'S', 'ERROR')}: {fields.get(b'M', '?')} (SQLSTATE {fields.get(b'C', '?')})"

    def send(self, sql):
        """Sends one simple-protocol Query without waiting (pipelining); read with result()."""
        data = sql.encode() + b"\0"
        self.sock.sendall(b"Q" + struct.pack("!i", len(data) + 4) + data)
        self.queries += 1

    @staticmethod
    def encode(sql):
        data = sql.encode() + b"\0"
        return b"Q" + struct.pack("!i", len(data) + 4) + data

    def result(self):
        rows, error = [], None
        while True:
            t, body = self._read()
            if t == b"D":
                ncol = struct.unpack("!h", body[:2])[0]
                pos, row = 2, []
                for _ in range(ncol):
                    n = struct.unpack("!i", body[pos:pos + 4])[0]
                    pos += 4
                    if n < 0:
                        row.append(None)
                    else:
                        row.append(body[pos:pos + n].decode())
                        pos += n
                rows.append(row)
            elif t == b"E":
                error = self._err(body)
            elif t == b"Z":
                if error:
                    raise PGError(error)
                return rows
            # T (row description), C (complete), N (notice), S, A, I: ignored

    def query(self, sql):
        self.send(sql)
        return self.result()

    def scalar(self, sql):
        rows = self.query(sql)
        return rows[0][0] if rows else None

    def close(self):
        try:
            self.sock.sendall(b"X" + struct.pack("!i", 4))
        except OSError:
            pass
        self.sock.close()


def quantiles_ms(sorted_ms):
    """p50 / p90 / p99 / p99.9 / max of sorted millisecond figures, to the µs; None when there are none."""
    if not sorted_ms:
        return None
    at = lambda q: round(sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))], 3)  # noqa: E731
    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "p999": at(0.999), "max": round(sorted_ms[-1], 3)}


class Inserters:
    """The paced INSERTs' connections."""

    def __init__(self, conns, committed):
        self.conns = conns
        self.backend_pids = [c.backend_pid for c in conns]
        self.committed = committed  # {row id: wall-clock time its autocommit INSERT returned}
        self.commit_ms = []  # sorted: each INSERT's send → its response (the application's commit latency)

    def close(self):
        for c in self.conns:
            c.close()


def qident(name):
    return '"' + name.replace('"', '""') + '"'


def qlit(s):
    return "'" + s.replace("'", "''") + "'"


# --------------------------------------------------------------------------------------------
# /proc helpers
# --------------------------------------------------------------------------------------------

def proc_hwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def self_cpu():
    t = os.times()
    return t.user + t.system


def children_cpu():
    t = os.times()
    return t.children_user + t.children_system


class CpuWindow:
    """CPU used in a window by the relay(s), the postgres processes, Tansu, this bench, and all
    processes of the machine (from /proc/PID/stat of the processes alive at the end; a process
    that started and ended inside the window is missed — the bench keeps its own connections
    open until after finish()). /proc/stat's machine-wide counters proved unreliable on the
    benchmark VM (busy ticks far below the processes' own CPU time), so they are not used."""

    postmaster_pid = None  # set once by Bench: this cluster's postmaster (its children are its backends)

    def __init__(self, tansu_pid, relay_pids=()):
        self.tansu_pid = tansu_pid
        self.self0 = self_cpu()
        self.children0 = children_cpu()
        self.relay0 = {p: proc_cpu(p) or 0.0 for p in relay_pids}
        self.all0 = all_cpu(CpuWindow.postmaster_pid)
        self.t0 = time.monotonic()

    def finish(self, relay_pids, pg_groups=None):
        """pg_groups: {name: pids} of postgres backends whose CPU in the window is also reported
        on its own (postgres_cpu_s_by_group; "rest" is the cluster's remainder)."""
        all1 = all_cpu(CpuWindow.postmaster_pid)
        wall = time.monotonic() - self.t0
        delta = {pid: (start, ppid, c - self.all0[pid][2] if pid in self.all0 and self.all0[pid][0] == start else c)
                 for pid, (start, ppid, c) in all1.items()}
        pm = CpuWindow.postmaster_pid
        pg = sum(c for pid, (_, ppid, c) in delta.items() if pid == pm or ppid == pm)
        tansu = delta[self.tansu_pid][2] if self.tansu_pid in delta else None
        relay = [proc_cpu(p) for p in relay_pids]
        relay_s = sum(c - self.relay0.get(p, 0.0) for p, c in zip(relay_pids, relay) if c is not None)
        bench_s = self_cpu() - self.self0
        kids = children_cpu() - self.children0
        everything = sum(c for _, _, c in delta.values()) + kids
        by_group = None
        if pg_groups is not None:
            by_group = {name: round(sum(delta[p][2] for p in set(pids) if p in delta), 3)
                        for name, pids in pg_groups.items()}
            rest = round(pg - sum(by_group.values()), 3)
            by_group["rest"] = rest if abs(rest) >= 0.001 else 0.0  # no "-0.000" from rounding
        return {
            "bench_cpu_s": round(bench_s, 3),
            # Programs the bench ran and waited for in the window (pgbench in the ceiling).
            "bench_children_cpu_s": round(kids, 3),
            "relay_cpu_s": round(relay_s, 3),
            "relay_peak_rss_mib": round(max(((proc_hwm_kib(p) or 0) for p in relay_pids), default=0) / 1024, 1),
            "postgres_cpu_s": round(pg, 3),
            **({"postgres_cpu_s_by_group": by_group} if by_group is not None else {}),
            "tansu_cpu_s": None if tansu is None else round(tansu, 3),
            # Every process's CPU (including anything else running on the machine) against
            # wall time × CPUs.
            "machine_busy_cpu_s": round(everything, 3),
            # The machine's other processes (and kernel threads): on a shared machine, the noise.
            "others_cpu_s": round(everything - relay_s - pg - (tansu or 0) - bench_s - kids, 3),
            "machine_cpu_capacity_s": round(wall * (os.cpu_count() or 1), 3),
        }


# --------------------------------------------------------------------------------------------
# The bench
# --------------------------------------------------------------------------------------------

CONSUME_RE = re.compile(r"^topic=(\S+) partition=(\d+) offset=(\d+)(?: timestamp=(-?\d+))? key=(.*?) headers=\{(.*)\}")
OUTBOX_ID_RE = re.compile(r"(?:^|, )outbox-id=(\d+)")


class Bench:
    def __init__(self, a):
        self.a = a
        self.run_dir = a.run_dir
        self.admin_url = a.database_url
        u = urllib.parse.urlparse(a.database_url)
        self.pg_host, self.pg_port = u.hostname, u.port
        self.dbname = (u.path or "/postgres").lstrip("/") or "postgres"
        # The relay connects as its own role so its statements can be told apart from the bench's.
        self.relay_user = "bench_relay"
        self.relay_url = f"postgresql://{self.relay_user}@{self.pg_host}:{self.pg_port}/{self.dbname}"
        self.relays = []  # live Popen objects, stopped in cleanup()
        self.admin = PG.from_url(self.admin_url)
        self.admin.query(f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{self.relay_user}') "
                         f"THEN CREATE ROLE {self.relay_user} LOGIN SUPERUSER; END IF; END $$")
        self.admin.query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        self.relay_oid = self.admin.scalar(f"SELECT oid FROM pg_roles WHERE rolname = '{self.relay_user}'")
        CpuWindow.postmaster_pid = parent_pid(self.admin.backend_pid)
        self.seq = 0
        self.perf_rates = {int(x) for x in (a.perf_rates or "").split(",") if x.strip()}

    def postgres_settings(self):
        """The durability settings the cluster runs with: "durable" when fsync, synchronous_commit
        and full_page_writes are all on (scripts/bench's default), "unsafe" when all are off
        (scripts/bench --unsafe-db, scripts/test), else "mixed"."""
        s = {k: self.admin.scalar(f"SHOW {k}") for k in ("fsync", "synchronous_commit", "full_page_writes")}
        s["durability"] = ("durable" if all(v == "on" for v in s.values())
                           else "unsafe" if all(v == "off" for v in s.values()) else "mixed")
        return s

    # ---- helpers --------------------------------------------------------------------------
    def relay_args(self):
        # Port 0: each relay binds a free port for /healthz, /readyz and /metrics; with the default
        # 8080 the 2 and 4 relay scale-out runs would fight over one port.
        args = ["--log-level", self.a.log_level, "--http-port", "0"]
        if self.a.batch_size:
            args += ["--batch-size", str(self.a.batch_size)]
        if self.a.max_in_flight_rows:
            args += ["--max-in-flight-rows", str(self.a.max_in_flight_rows)]
        for p in self.a.kafka_property:
            args += ["--kafka-property", p]
        return args

    def migrate(self, table, binary=None):
        """Creates `table` with `binary`'s migration (default the bench's relay): another build
        of the relay (--batched-binary) runs on the schema of its own version."""
        subprocess.run([binary or self.a.relay, "migrate", "--database-url", self.admin_url, "--table", table, "--shards", str(SHARDS)],
                       check=True, stdout=subprocess.DEVNULL)

    def drop_triggers(self, table):
        """Drops every trigger `migrate` made on `table`, whatever its name (the NOTIFY trigger)."""
        for (tg,) in self.admin.query(f"SELECT tgname FROM pg_trigger WHERE tgrelid = {qlit(qident(table))}::regclass "
                                      f"AND NOT tgisinternal"):
            self.admin.query(f"DROP TRIGGER {qident(tg)} ON {qident(table)}")

    def create_topic(self, topic):
        subprocess.run([self.a.tansu, "topic", "create", topic, "--broker", f"tcp://{self.a.brokers}",
                        "--partitions", str(self.a.partitions or PARTITIONS)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def load(self, table, topic, rows):
        """rows rows, 256-byte values, 1000 distinct keys, one small header, in one INSERT."""
        t0 = time.monotonic()
        self.admin.query(f"""
            INSERT INTO {qident(table)} (topic, key, value, headers)
            SELECT {qlit(topic)}, convert_to('key-' || (g % {self.a.keys}), 'UTF8'),
                   substring(decode(repeat(md5(g::text), 16), 'hex') FROM 1 FOR {self.a.value_bytes}),
                   '{{"type": "BenchEvent"}}'::jsonb
            FROM generate_series(1, {rows}) AS g""")
        # Same preparation for the relay's table and the ceiling's: statistics, hint bits, a
        # visibility map and no pending dirty pages before the clock starts.
        self.admin.query(f"VACUUM (ANALYZE) {qident(table)}")
        self.admin.query("CHECKPOINT")
        lo, hi, n = self.admin.query(f"SELECT min(id), max(id), count(*) FROM {qident(table)}")[0]
        log(f"loaded {n} rows into {table} in {time.monotonic() - t0:.1f}s")
        return int(lo), int(hi), int(n)

    def start_relay(self, table, name, extra=(), binary=None, application_name=None, ack_log=None):
        """`ack_log`: a file for the relay's acknowledgement log (OUTBOX_RELAY_ACK_LOG: each
        acknowledged row's outbox id and acknowledgement time, for COMMIT → acknowledgement)."""
        logf = open(os.path.join(self.run_dir, f"relay-{name}.log"), "wb")
        url = self.relay_url + (f"?application_name={urllib.parse.quote(application_name)}" if application_name else "")
        env = dict(os.environ, OUTBOX_RELAY_ACK_LOG=ack_log) if ack_log else None
        p = subprocess.Popen([binary or self.a.relay, "run", "--database-url", url, "--brokers", self.a.brokers,
                              "--table", table, "--replica-name", name] + self.relay_args() + list(extra),
                             stdout=logf, stderr=subprocess.STDOUT, env=env)
        p.bench_log = logf.name
        self.relays.append(p)
        return p

    def stop_relays(self, procs):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = []
        for p in procs:
            try:
                codes.append(p.wait(timeout=30))
            except subprocess.TimeoutExpired:
                log(f"relay pid {p.pid} did not stop within 30 s of SIGTERM; killing it")
                p.kill()
                codes.append(p.wait())
            if p in self.relays:
                self.relays.remove(p)
        for p, c in zip(procs, codes):
            if c != 0:
                log(f"relay pid {p.pid} exited with {c}; log tail:\n" + self.tail(p.bench_log))
        return codes

    @staticmethod
    def tail(path, n=30):
        try:
            with open(path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def check_alive(self, procs):
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"relay pid {p.pid} exited early with {p.returncode}:\n" + self.tail(p.bench_log))

    def wait_no_relay_backends(self, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if int(self.admin.scalar(f"SELECT count(*) FROM pg_stat_activity WHERE usename = '{self.relay_user}'")) == 0:
                return
            time.sleep(0.05)

    def wait_backend_gone(self, pid, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if int(self.admin.scalar(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}")) == 0:
                return
            time.sleep(0.02)

    def xact_commit(self):
        return int(self.admin.scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"))

    def relay_statements(self, table):
        """pg_stat_statements calls of the relay's role: those naming the outbox table itself
        (claims, deletes) and all of them (also leases, replicas, LISTEN, heartbeats)."""
        rows = self.admin.query(f"SELECT query, calls FROM pg_stat_statements WHERE userid = {self.relay_oid}")
        pat = re.compile(r'(?<![\w"])"?' + re.escape(table) + r'"?(?![\w"])')
        on_table = sum(int(c) for q, c in rows if pat.search(q))
        return on_table, sum(int(c) for _, c in rows)

    def relay_statement_kinds(self, table):
        """The relay's calls on the outbox table split into claims (SELECT) and DELETEs."""
        rows = self.admin.query(f"SELECT query, calls FROM pg_stat_statements WHERE userid = {self.relay_oid}")
        pat = re.compile(r'(?<![\w"])"?' + re.escape(table) + r'"?(?![\w"])')
        kinds = {"select": 0, "delete": 0, "other": 0, "claims_with_delete": 0}
        for q, c in rows:
            if pat.search(q):
                head = q.lstrip().split(None, 1)[0].upper() if q.strip() else ""
                kinds["select" if head in ("SELECT", "WITH") else "delete" if head == "DELETE" else "other"] += int(c)
                if head == "WITH" and re.match(r"WITH\s+d\s+AS\s*\(\s*DELETE", q.lstrip(), re.I):
                    kinds["claims_with_delete"] += int(c)
        return kinds

    def consume(self, topic, timestamps=None):
        """The topic's messages as (partition, offset, key, outbox id). `timestamps`: a dict that
        receives each outbox id's first Kafka timestamp (CreateTime, ms since the epoch)."""
        t0 = time.monotonic()
        out = subprocess.run([self.a.relay, "consume", "--brokers", self.a.brokers, "--topic", topic, "--timestamps"],
                             check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True).stdout
        msgs = []
        for line in out.splitlines():
            m = CONSUME_RE.match(line)
            if not m:
                continue
            idm = OUTBOX_ID_RE.search(m.group(6))
            oid = int(idm.group(1)) if idm else None
            msgs.append((int(m.group(2)), int(m.group(3)), m.group(5), oid))
            if timestamps is not None and oid is not None and m.group(4) is not None and oid not in timestamps:
                timestamps[oid] = int(m.group(4))
        log(f"consumed {len(msgs)} messages of {topic} in {time.monotonic() - t0:.1f}s")
        return msgs

    @staticmethod
    def verify(msgs, expected_ids):
        ids = [m[3] for m in msgs if m[3] is not None]
        seen = set(ids)
        expected = set(expected_ids)
        # Per-key order: within a partition, in offset order, the first appearance of each id of
        # a key must be above every id of that key seen before (a re-sent duplicate is counted
        # as a duplicate, not as an order violation).
        order_violations = 0
        key_partitions = {}
        last = {}
        first_seen = set()
        for part, _off, key, oid in sorted(msgs, key=lambda m: (m[0], m[1])):
            key_partitions.setdefault(key, set()).add(part)
            if oid is None or oid in first_seen:
                continue
            first_seen.add(oid)
            prev = last.get((part, key))
            if prev is not None and oid < prev:
                order_violations += 1
            else:
                last[(part, key)] = oid
        return {
            "messages": len(msgs),
            "lost": len(expected - seen),
            "duplicates": len(ids) - len(seen),
            "unexpected": len(seen - expected),
            "without_outbox_id": sum(1 for m in msgs if m[3] is None),
            "key_order_violations": order_violations,
            "keys_on_several_partitions": sum(1 for s in key_partitions.values() if len(s) > 1),
        }

    def expected_ids(self, lo, hi, n, table):
        if hi - lo + 1 == n:
            return range(lo, hi + 1)
        return [int(r[0]) for r in self.admin.query(f"SELECT id FROM {qident(table)}")]

    def name(self, kind):
        self.seq += 1
        return f"bench_{kind}_{self.seq}"

    # ---- a timed drain with k relays ------------------------------------------------------
    def timed_drain(self, kind, rows, replicas):
        table = self.name(kind)
        topic = table.replace("_", "-")
        self.create_topic(topic)
        self.migrate(table)
        lo, hi, n = self.load(table, topic, rows)
        expected = self.expected_ids(lo, hi, n, table)

        poller = PG.from_url(self.admin_url, application_name="outbox-bench-poller")
        # The one count(*) at the first delete scans the whole heap: in one process, not three
        # (a parallel scan forks two workers just as the relay gets going).
        poller.query("SET max_parallel_workers_per_gather = 0")
        self.admin.query("SELECT pg_stat_statements_reset()")
        # Transactions: pg_stat_database counts every committed transaction of the database, but
        # a backend publishes its counts lazily (when idle, at most once a second, and at exit).
        # So: flush the bench's own connection now, take the baseline, and at the end have the
        # relays' and the poller's backends exit and flush the bench's connection again; then
        # subtract the bench's own statements (each its own transaction) from the delta.
        self.admin.query("SELECT pg_stat_force_next_flush()")
        admin_q0 = self.admin.queries
        xact0 = self.xact_commit()
        cpu = CpuWindow(self.a.tansu_pid)
        t0 = time.monotonic()
        procs = [self.start_relay(table, f"{table}-r{i}") for i in range(replicas)]
        first_delete = None
        left_at_first_delete = None
        cpu_at_first_delete = None
        leased = None
        # min(id) is index-backed and NULL exactly when the table is empty (count(*) would scan
        # the whole heap 50 times a second). It starts at the last minimum seen: the backlog was
        # complete before the relays started, so ids only disappear, and a plain min(id) walks
        # every dead index entry the drain has left so far — measured 5 ms per poll late in a
        # drain, a quarter of a core of PostgreSQL CPU at 50 polls a second, charged to the relay.
        # Until every shard is leased, also watch the leases.
        floor = lo
        def poll_sql():
            return f"SELECT min(id) FROM {qident(table)} WHERE id >= {int(floor)}"
        def lease_sql():
            return (f"SELECT ({poll_sql()}), "
                    f"(SELECT count(*) FROM {qident(table + '_leases')} WHERE owner IS NOT NULL)")
        polls = 0
        deadline = t0 + self.a.timeout
        while True:
            if leased is None:
                m, held = poller.query(lease_sql())[0]
            else:
                m, held = poller.scalar(poll_sql()), None
            if m is not None:
                floor = m
            now = time.monotonic()
            polls += 1
            if leased is None and int(held) >= SHARDS:
                leased = now
            if m is None:
                t1 = now
                break
            if first_delete is None and int(m) != lo:
                first_delete = now
                # One full count, once: how much was left when the deleting started.
                left_at_first_delete = int(poller.scalar(f"SELECT count(*) FROM {qident(table)}"))
                polls += 1
                cpu_at_first_delete = sum(proc_cpu(p.pid) or 0.0 for p in procs)
            if now > deadline:
                raise RuntimeError(f"{table} not empty after {self.a.timeout}s (min id {m})")
            if polls % 50 == 0:
                self.check_alive(procs)
            time.sleep(0.02)
        res = cpu.finish([p.pid for p in procs])
        codes = self.stop_relays(procs)
        elapsed = t1 - t0
        poller_pid = poller.backend_pid
        poller.close()
        self.wait_no_relay_backends()
        self.wait_backend_gone(poller_pid)
        self.admin.query("SELECT pg_stat_force_next_flush()")
        own = polls + 1 + (self.admin.queries - admin_q0)  # + the poller's SET
        xact = self.xact_commit() - xact0 - own
        st_table, st_all = self.relay_statements(table)
        kinds = self.relay_statement_kinds(table)
        ver = self.verify(self.consume(topic), expected)
        res.update({
            "table": table, "topic": topic, "replicas": replicas, "rows": n,
            "seconds": round(elapsed, 3),
            "rows_per_s": round(n / elapsed, 1),
            "seconds_to_all_shards_leased": None if leased is None else round(leased - t0, 3),
            "seconds_to_first_delete": None if first_delete is None else round(first_delete - t0, 3),
            "rows_per_s_after_first_delete": None if first_delete is None or t1 <= first_delete
            else round(left_at_first_delete / (t1 - first_delete), 1),
            "relay_cpu_s_before_first_delete": None if cpu_at_first_delete is None else round(cpu_at_first_delete, 3),
            "relay_exit_codes": codes,
            "db_statements_on_table_per_1000_rows": round(st_table * 1000 / n, 2),
            "db_statements_all_relay_per_1000_rows": round(st_all * 1000 / n, 2),
            "db_claims_per_1000_rows": round(kinds["select"] * 1000 / n, 2),
            "db_deletes_per_1000_rows": round(kinds["delete"] * 1000 / n, 2),
            "db_transactions_per_1000_rows": round(xact * 1000 / n, 2),
            "verify": ver,
        })
        res["rows_per_relay_cpu_s"] = round(n / res["relay_cpu_s"], 1) if res["relay_cpu_s"] else None
        res["relay_cpu_share_of_wall"] = round(res["relay_cpu_s"] / elapsed, 3)
        res["machine_busy_share"] = round(res["machine_busy_cpu_s"] / res["machine_cpu_capacity_s"], 3) \
            if res["machine_cpu_capacity_s"] else None
        self.admin.query(f"DROP TABLE IF EXISTS {qident(table)}")
        return res

    # ---- scenario 1 -------------------------------------------------------------------------
    def drain(self):
        log(f"drain: {self.a.rows} rows, 1 relay")
        return self.timed_drain("drain", self.a.rows, 1)

    # ---- scenario 4 -------------------------------------------------------------------------
    def ceiling(self):
        """The relay's two statements per 1000 rows, serially, by pgbench, without Kafka.
        The claim is the relay's sweep SELECT for a replica holding every shard (OutboxQueries.swift,
        sweepSQL.all: no shard filter; a backlog present at start-up is drained by one sweep), with the cursor
        and LIMIT 1000; the DELETE is its lease-checked DELETE … WHERE id = ANY(array) with the
        1000 ids the claim returned, in the form the relay uses for 32 ids or more
        (OutboxQueries.deleteManySQL: the held shards read once, an InitPlan; the join form it
        replaced can get a generic plan that scans the whole outbox for every DELETE: most likely
        what made one ceiling here take 55.8 s instead of 1.7 s, 279 ms a round, all of it
        PostgreSQL CPU) (the backlog's ids are contiguous, so the array is built as
        generate_series(cursor+1, cursor+1000) — pgbench cannot carry the claim's result)."""
        rows = self.a.rows
        table = self.name("ceiling")
        topic = table.replace("_", "-")
        self.migrate(table)
        lo, hi, n = self.load(table, topic, rows)
        if hi - lo + 1 != n:
            raise RuntimeError("ceiling table ids are not contiguous")
        leases = qident(table + "_leases")
        self.admin.query(f"UPDATE {leases} SET owner = 'bench-ceiling', epoch = 1, "
                         f"expires_at = now() + interval '1 hour', acquired_at = now()")
        epochs = "{" + ",".join("1" for _ in range(SHARDS)) + "}"
        b = 1000
        script = f"""\
SELECT s.snap::text, o.id, o.shard, o.topic, o.key, o.value, o.created_at, o.headers::text, CASE WHEN o.not_before > s.now THEN ceil(EXTRACT(EPOCH FROM o.not_before - s.now) * 1000)::bigint ELSE 0::bigint END FROM (SELECT COALESCE(NULL::text::pg_snapshot, pg_current_snapshot()) AS snap, clock_timestamp() AS now OFFSET 0) AS s LEFT JOIN LATERAL (SELECT id, {qident(table + '_shard')}(key, id) AS shard, topic, key, value, created_at, headers, not_before FROM {qident(table)} WHERE id > :cursor AND id NOT IN (SELECT unnest('{{}}'::bigint[])) AND pg_visible_in_snapshot(txid, s.snap) ORDER BY id LIMIT {b}) AS o ON true ORDER BY o.id;
DELETE FROM {qident(table)} AS o WHERE o.id = ANY(ARRAY(SELECT generate_series(:cursor + 1, :cursor + {b})::bigint)) AND {qident(table + '_shard')}(o.key, o.id) = ANY(ARRAY(SELECT l.shard FROM {leases} AS l WHERE l.owner = 'bench-ceiling' AND l.epoch = ('{epochs}'::bigint[])[l.shard + 1]));
\\set cursor :cursor + {b}
"""
        path = os.path.join(self.run_dir, "ceiling.sql")
        with open(path, "w") as f:
            f.write(script)
        txs = math.ceil(n / b)
        cmd = [os.path.join(self.a.pg_bin, "pgbench"), "-n", "-M", "prepared", "-f", path, "-c", "1", "-j", "1",
               "-t", str(txs), "-D", f"cursor={lo - 1}",
               f"host={self.pg_host} port={self.pg_port} user=postgres dbname={self.dbname}"]
        log(f"ceiling: pgbench {txs} transactions over {n} rows")
        xact0 = self.xact_commit()
        cpu = CpuWindow(None)
        t0 = time.monotonic()
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout
        elapsed = time.monotonic() - t0
        res = cpu.finish([])
        left = int(self.admin.scalar(f"SELECT count(*) FROM {qident(table)}"))
        deleted = n - left
        tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
        lat = re.search(r"latency average = ([\d.]+) ms", out)
        time.sleep(0.2)
        self.admin.query(f"DROP TABLE IF EXISTS {qident(table)}")
        return {
            "table": table, "rows": n, "rows_deleted": deleted, "rows_left": left,
            "seconds": round(elapsed, 3), "rows_per_s": round(deleted / elapsed, 1),
            "pgbench_tps": float(tps.group(1)) if tps else None,
            "pgbench_rows_per_s": round(float(tps.group(1)) * b, 1) if tps else None,
            "pgbench_latency_ms": float(lat.group(1)) if lat else None,
            "postgres_cpu_s": res["postgres_cpu_s"], "pgbench_cpu_s": res["bench_children_cpu_s"],
            "machine_busy_cpu_s": res["machine_busy_cpu_s"], "others_cpu_s": res["others_cpu_s"],
            "method": "pgbench -M prepared -c 1 -j 1: relay sweep SELECT of a replica holding every shard (no shard filter, id > cursor, visible in the snapshot, LIMIT 1000) + "
                      "lease-checked DELETE ... WHERE id = ANY(1000 ids), one autocommit transaction each",
        }

    # ---- scenario 2 -------------------------------------------------------------------------
    def insert_sql(self, table, topic, j):
        """The steady state's single-row INSERT of row number `j` (key j % --keys, a --value-bytes
        value, a small JSON header), which insert_cost measures as well."""
        return (f"INSERT INTO {qident(table)} (topic, key, value, headers) VALUES ({qlit(topic)}, "
                f"convert_to('key-{j % self.a.keys}', 'UTF8'), "
                f"substring(decode(repeat(md5('{j}'), 16), 'hex') FROM 1 FOR {self.a.value_bytes}), "
                f"'{{\"type\": \"BenchEvent\"}}')")

    def paced_inserts(self, table, topic, rate, seconds, seed=None):
        """Single-row autocommit INSERTs at `rate` rows/s for `seconds`, over --insert-connections
        connections, pipelined: this thread sends every INSERT due (1 ms pacing granularity), one
        reader thread per connection consumes the responses, so a slow response does not delay the
        next send unless the socket's buffers are full (the database is not keeping up; see
        max_send_lag_ms). Row j has key j % keys and goes to connection key % connections, so each
        key's rows commit in id order. Several connections because with synchronous_commit=on a
        connection commits one row per WAL flush (0.3–3 ms on this VM's disk, depending on what
        else is written): one connection caps the rate at one row per flush, while concurrent
        commits can share a flush (unless something serializes them: see docs/BENCHMARKS.md).
        Returns the open connections (close them after measuring CPU: a backend's CPU counts only
        while it lives) and the timings."""
        n = max(1, self.a.insert_connections)
        conns = [PG.from_url(self.admin_url, application_name="outbox-bench-inserter") for _ in range(n)]
        total = int(rate * seconds)
        conn_of = [(j % self.a.keys) % n for j in range(total)]
        per_conn = [0] * n
        for c in conn_of:
            per_conn[c] += 1
        errors = []
        # (id, wall-clock time the INSERT's autocommit returned), per connection: for commit →
        # DELETE latency (the reader's clock read can lag the response by a GIL switch).
        committed = [[] for _ in range(n)]
        # Per connection, when each INSERT was sent (monotonic), in send order: its response is the
        # same-numbered one, so each commit's latency as the application sees it (with the
        # pipelining's queueing behind earlier INSERTs of the connection) is response − send.
        sent_at = [[] for _ in range(n)]
        commit_ms = [[] for _ in range(n)]

        def reader(conn, count, out, sent, lat):
            try:
                for k in range(count):
                    rows = conn.result()
                    out.append((int(rows[0][0]), time.time()))
                    lat.append((time.monotonic() - sent[k]) * 1000)
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        readers = [threading.Thread(target=reader, args=(c, k, o, sa, cl), daemon=True)
                   for c, k, o, sa, cl in zip(conns, per_conn, committed, sent_at, commit_ms)]
        for rt in readers:
            rt.start()
        # When row j is due, seconds after t0: evenly spaced, or (--arrivals poisson, the default)
        # exponential gaps of the same mean, seeded by the rate — what independent application
        # requests look like, and what pgbench -R sends.
        if self.a.arrivals == "poisson":
            rng = random.Random(seed or f"arrivals-{rate}")
            due_at, at = [], 0.0
            for _ in range(total):
                due_at.append(at)
                at += rng.expovariate(rate)
        elif self.a.arrivals == "bursts":
            # --burst-rows rows at once, bursts evenly spaced at the same mean rate.
            k = max(1, self.a.burst_rows)
            due_at = [(j // k) * k / rate for j in range(total)]
        else:
            due_at = [j / rate for j in range(total)]
        max_lag = 0.0
        t0 = time.monotonic()
        i = 0
        while i < total:
            now = time.monotonic()
            due = bisect.bisect_right(due_at, now - t0, lo=i)
            if due > i:
                bufs = [[] for _ in range(n)]
                for j in range(i, due):
                    bufs[conn_of[j]].append(PG.encode(self.insert_sql(table, topic, j) + " RETURNING id"))
                max_lag = max(max_lag, now - (t0 + due_at[i]))
                for ci, (c, b) in enumerate(zip(conns, bufs)):
                    if b:
                        sent_at[ci].extend([time.monotonic()] * len(b))
                        c.sock.sendall(b"".join(b))
                        c.queries += len(b)
                i = due
            delay = (t0 + due_at[i] - time.monotonic()) if i < total else 0
            if delay > 0:
                time.sleep(delay)
        send_done = time.monotonic()
        deadline = time.monotonic() + 300
        for rt in readers:
            rt.join(timeout=max(0.1, deadline - time.monotonic()))
        if errors:
            raise RuntimeError(f"insert failed: {errors[0]}")
        if any(rt.is_alive() for rt in readers):
            raise RuntimeError("inserts not answered within 300 s")
        ins = Inserters(conns, {i: t for out in committed for i, t in out})
        ins.commit_ms = sorted(x for lat in commit_ms for x in lat)
        return ins, total, t0, send_done, time.monotonic(), max_lag

    def insert_only(self, rate):
        """The load generator and the database alone (no relay, no Kafka, no latency trigger):
        can this machine take `rate` single-row INSERT transactions a second at all?"""
        seconds = self.a.steady_seconds
        table = self.name(f"insertonly{rate}")
        self.migrate(table)
        self.admin.query("CHECKPOINT")
        cpu = CpuWindow(None)
        ins, total, t0, send_done, ins_done, max_lag = self.paced_inserts(table, "bench-insert-only", rate, seconds)
        res = cpu.finish([])
        ins.close()
        n = int(self.admin.scalar(f"SELECT count(*) FROM {qident(table)}"))
        self.admin.query(f"DROP TABLE IF EXISTS {qident(table)}")
        return {
            "table": table, "rate_target": rate, "seconds": seconds, "rows": n,
            "rate_achieved": round(total / (ins_done - t0), 1),
            "max_send_lag_ms": round(max_lag * 1000, 2),
            "insert_commit_ms": quantiles_ms(ins.commit_ms),
            "postgres_cpu_s": res["postgres_cpu_s"], "bench_cpu_s": res["bench_cpu_s"], "others_cpu_s": res["others_cpu_s"],
            "machine_busy_share": round(res["machine_busy_cpu_s"] / res["machine_cpu_capacity_s"], 3),
        }

    # ---- insert cost by table shape ------------------------------------------------------------
    @staticmethod
    def backend_cpu_ns(pid):
        """A backend's CPU time in ns: /proc/PID/schedstat (ns), else /proc/PID/stat (ticks)."""
        try:
            with open(f"/proc/{pid}/schedstat") as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            t = proc_cpu(pid)
            return None if t is None else int(t * 1e9)

    def insert_cost_shapes(self, base):
        """The outbox shapes the insert_cost scenario compares, as (label, table, DDL run after
        the table is made). The migrated table's parts (defaults, the generated shard, CHECKs)
        are read from the catalog of a table `migrate` made, so the shapes follow the migration."""
        migrated, bare = base + "_migrated", base + "_notrigger"
        self.migrate(migrated)
        self.migrate(bare)
        self.drop_triggers(bare)
        cols = {r[0]: r[1:] for r in self.admin.query(f"""
            SELECT a.attname, format_type(a.atttypid, a.atttypmod), pg_get_expr(d.adbin, d.adrelid), a.attgenerated::text
            FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
            WHERE a.attrelid = {qlit(qident(migrated))}::regclass AND a.attnum > 0 AND NOT a.attisdropped""")}
        checks = [r[0] for r in self.admin.query(
            f"SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = {qlit(qident(migrated))}::regclass AND contype = 'c'")]

        def col(name):
            typ, expr, gen = cols[name]
            if gen == "s":
                return f"{name} {typ} NOT NULL GENERATED ALWAYS AS ({expr}) STORED"
            return f"{name} {typ} NOT NULL DEFAULT {expr}" if expr else f"{name} {typ}"
        minimal = ("id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, topic text NOT NULL, key bytea, value bytea, "
                   "headers jsonb, created_at timestamptz NOT NULL DEFAULT clock_timestamp()")
        shapes = [("as migrated (NOTIFY trigger, gate closed)", migrated, None),
                  ("as migrated less the NOTIFY trigger", bare, None),
                  ("minimal outbox (id, topic, key, value, headers, created_at)", base + "_minimal", f"({minimal})")]
        if "shard" in cols:
            stored_shard = col("shard")
        else:
            # Schema version 3 computes the shard with <table>_shard(key, id); version 2 stored the
            # same expression (its parameters are named as the columns) in a generated column.
            body = self.admin.scalar(f"SELECT pg_get_functiondef({qlit(qident(migrated + '_shard') + '(bytea, bigint)')}::regprocedure)")
            stored_shard = f"shard integer NOT NULL GENERATED ALWAYS AS ({body.split(chr(10) + 'RETURN ', 1)[1].strip()}) STORED"
        parts = [("shard", "schema version 2's stored shard column", [stored_shard], ""),
                 ("checks", "the CHECK constraints", checks and [", ".join(f"CHECK {c[len('CHECK '):]}" for c in checks)], ""),
                 ("txid", "txid and its index", [col("txid")], f"CREATE INDEX ON {{t}} (txid)"),
                 ("retry", "attempts, last_error, not_before", [col("attempts"), col("last_error"), col("not_before")], "")]
        for key, label, extra, after in parts:
            if extra:
                shapes.append((f"minimal + {label}", f"{base}_{key}", f"({minimal}, {', '.join(extra)})" + (f"; {after}" if after else "")))
        for label, table, ddl in shapes:
            if ddl:
                self.admin.query(f"CREATE TABLE {qident(table)} {ddl.replace('{t}', qident(table))}")
        # The trigger with its gate open, as while a replica waits for notifications (a trickle):
        # the gate's lowest bit even (the one listening replica holds every shard: no shard named)
        # and odd (the row's shard named). One connection of the bench LISTENs to both.
        if self.admin.scalar(f"SELECT to_regclass({qlit(qident(migrated + '_relay_notify'))}) IS NOT NULL") == "t":
            for parity, label in ((0, "as migrated, gate open, even (no shard named)"), (1, "as migrated, gate open, odd (shard named)")):
                table = f"{base}_open{parity}"
                self.migrate(table)
                self.admin.query(f"SELECT setval({qlit(qident(table + '_relay_notify'))}, "
                                 f"((date_part('epoch', clock_timestamp()) * 1000)::bigint + 86400000) & -2 | {parity})")
                shapes.append((label, table, None))
        return shapes

    def notify_channels(self, table):
        """The channels `table`'s NOTIFY trigger function notifies (read from its definition)."""
        fn = self.admin.scalar(f"SELECT to_regproc({qlit(qident(table + '_notify'))})")
        if not fn:
            return []
        body = self.admin.scalar(f"SELECT pg_get_functiondef({qlit(qident(table + '_notify'))}::regproc)")
        return sorted({ch.replace("''", "'") for ch in re.findall(r"pg_notify\('((?:[^']|'')*)'", body)})

    def insert_cost(self):
        """Backend CPU per single-row INSERT transaction (the bench's INSERT, durable commits) on
        each outbox shape of insert_cost_shapes: what the table's shape costs every application
        INSERT, whichever relay reads it. Per round, one connection per shape, warmed with 200
        INSERTs; then the shapes take turns, 100 INSERTs (pipelined) each, in an order that
        rotates every cycle, until each has sent --insert-cost-rows: the machine's speed changes
        within seconds (by a third in the runs of 2026-12-04, when a shape's 4 000 INSERTs ran as
        one block and the table less its trigger measured more than the one with it), and
        interleaved cycles give every shape the same phases. Each shape is also compared with the
        minimal table cycle by cycle (median of the paired differences)."""
        base = self.name("insertcost")
        shapes = self.insert_cost_shapes(base)
        self.admin.query("CHECKPOINT")
        rows, chunk = self.a.insert_cost_rows, 100
        runs = {label: [] for label, _, _ in shapes}
        paired = {label: [] for label, _, _ in shapes}  # per cycle: µs per INSERT over the minimal table's
        minimal_label = next(label for label, _, _ in shapes if label.startswith("minimal outbox"))
        # A listener for the gate-open shapes, read after every cycle (notifications the bench
        # ignores), so that each NOTIFY signals a listening backend as a waiting replica's does.
        listener = PG(self.pg_host, self.pg_port, "postgres", self.dbname, application_name="outbox-bench-insert-cost-listener")
        for label, table, _ in shapes:
            if "gate open" in label:
                for ch in self.notify_channels(table):
                    listener.query("LISTEN " + qident(ch))
        for rnd in range(self.a.insert_cost_rounds):
            conns = {label: PG(self.pg_host, self.pg_port, "postgres", self.dbname, application_name="outbox-bench-insert-cost")
                     for label, _, _ in shapes}
            try:
                def insert(label, table, n, start):
                    conn = conns[label]
                    conn.sock.sendall(b"".join(PG.encode(self.insert_sql(table, "bench-insert-cost", start + j)) for j in range(n)))
                    for _ in range(n):
                        conn.result()
                for label, table, _ in shapes:
                    insert(label, table, 200, 0)
                ns = {label: 0 for label, _, _ in shapes}
                wall = {label: 0.0 for label, _, _ in shapes}
                for cyc, c0 in enumerate(range(0, rows, chunk)):
                    k = min(chunk, rows - c0)
                    r = (cyc + rnd) % len(shapes)
                    cycle = {}
                    for label, table, _ in shapes[r:] + shapes[:r]:
                        pid = conns[label].backend_pid
                        n0, t0 = self.backend_cpu_ns(pid), time.monotonic()
                        insert(label, table, k, 200 + c0)
                        n1, t1 = self.backend_cpu_ns(pid), time.monotonic()
                        if n0 is not None and n1 is not None:
                            ns[label] += n1 - n0
                            cycle[label] = (n1 - n0) / 1000 / k
                        wall[label] += t1 - t0
                    if minimal_label in cycle:
                        for label, us in cycle.items():
                            paired[label].append(us - cycle[minimal_label])
                    listener.query("SELECT 1")
                for label, _, _ in shapes:
                    if ns[label]:
                        runs[label].append({"us_per_insert": round(ns[label] / 1000 / rows, 2),
                                            "inserts_per_s": round(rows / wall[label], 1) if wall[label] else None})
            finally:
                for conn in conns.values():
                    conn.close()
        listener.close()
        for _, table, _ in shapes:
            self.admin.query(f"DROP TABLE IF EXISTS {qident(table)}")
        out = []
        for label, table, _ in shapes:
            us = [r["us_per_insert"] for r in runs[label]]
            out.append({"shape": label, "rounds": runs[label],
                        "us_per_insert_median": round(statistics.median(us), 2) if us else None,
                        "us_per_insert_range": [min(us), max(us)] if us else None,
                        "us_over_minimal_paired_median": round(statistics.median(paired[label]), 2) if paired[label] else None})
        return {"rows_per_run": rows, "rounds": self.a.insert_cost_rounds, "interleaved_chunk": chunk, "shapes": out}

    def naive_args(self):
        """The naive relay's arguments beyond its table and batch size: its sleep after an empty
        poll (--naive-idle-ms; shorter buys it a shorter latency tail for more polls)."""
        return ["--idle-ms", str(self.a.naive_idle_ms)]

    def start_naive(self, table, name):
        """One naive SKIP LOCKED relay (scripts/lib/naive_relay.py under .tools/venv's Python). It
        connects as the relay's role, bench_relay, so that pg_stat_statements and
        pg_stat_activity account its statements and backends exactly as they do the relay's."""
        logf = open(os.path.join(self.run_dir, f"relay-{name}.log"), "wb")
        cmd = [VENV_PYTHON, NAIVE_RELAY_PY, "--database-url", self.relay_url, "--brokers", self.a.brokers,
               "--table", table]
        if self.a.batch_size:
            cmd += ["--batch-size", str(self.a.batch_size)]
        cmd += self.naive_args()
        p = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
        p.bench_log = logf.name
        self.relays.append(p)
        return p

    def wait_relays_ready(self, table, relay, procs, extra=(), timeout=90):
        """outbox-relay: len(procs) replicas live (heartbeating), every shard leased, by replicas
        with even shares (sizes differ by at most one, as ShardAssignment splits them): all of
        them with --shard-spread even, as few as the load needs with load (the default; a quiet
        group has one claim and the others stand by). naive: each instance connected."""
        n = len(procs)
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive(procs)
            if relay == "naive":
                if int(self.admin.scalar(f"SELECT count(*) FROM pg_stat_activity WHERE usename = '{self.relay_user}' "
                                         f"AND application_name = 'naive-relay'")) >= n:
                    return
            else:
                counts = [int(c) for _, c in self.admin.query(
                    f"SELECT owner, count(*) FROM {qident(table + '_leases')} WHERE owner IS NOT NULL GROUP BY owner")]
                live = int(self.admin.scalar(f"SELECT count(*) FROM {qident(table + '_replicas')} WHERE expires_at > now()"))
                extra = list(extra)
                even = "--shard-spread" in extra[:-1] and extra[extra.index("--shard-spread") + 1] == "even"
                if (sum(counts) == SHARDS and live == n and max(counts) - min(counts) <= 1
                        and (len(counts) == n or not even)):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{n} {relay} relay(s) not ready within {timeout} s")
            time.sleep(0.05)

    def wal_stats(self):
        """pg_stat_wal's counters (PostgreSQL 14+): records, full-page images, bytes, writes, syncs."""
        r = self.admin.query("SELECT wal_records, wal_fpi, wal_bytes, wal_write, wal_sync FROM pg_stat_wal")[0]
        return dict(zip(("records", "fpi", "bytes", "writes", "syncs"), (int(x) for x in r)))

    def xacts(self):
        c, r = self.admin.query("SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = current_database()")[0]
        return int(c), int(r)

    def start_perf(self, table, rate, seconds):
        """perf record -a -g over the paced load (--perf-dir, only at --perf-rates): every process
        on the machine, so the relay(s), the postgres backends and the rest can be told apart by pid."""
        if not self.a.perf_dir or rate not in self.perf_rates:
            return None
        os.makedirs(self.a.perf_dir, exist_ok=True)
        path = os.path.join(os.path.abspath(self.a.perf_dir), f"{table}.perf.data")
        p = subprocess.Popen(["perf", "record", "-a", "-g", "-F", str(self.a.perf_freq), "-o", path, "--",
                              "sleep", str(seconds)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        p.bench_path = path
        return p

    def perf_summary(self, perf, groups, rows):
        """Top self-time symbols per group of pids, and each group's samples as CPU ms per row."""
        perf.wait()
        out = {"file": perf.bench_path, "frequency_hz": self.a.perf_freq, "pids": {k: sorted(v) for k, v in groups.items()}}
        counts = {}
        try:
            script = subprocess.run(["perf", "script", "-i", perf.bench_path, "-F", "pid"], check=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
            for line in script.split():
                if line.isdigit():
                    counts[int(line)] = counts.get(int(line), 0) + 1
        except (OSError, subprocess.CalledProcessError) as e:
            out["error"] = str(e)
            return out
        for name, pids in groups.items():
            pids = sorted(set(pids))
            n = sum(counts.get(p, 0) for p in pids)
            g = {"samples": n, "cpu_ms_per_row": round(n / self.a.perf_freq * 1000 / rows, 4) if rows else None, "top": []}
            if n and pids:
                def report(sort):
                    return subprocess.run(["perf", "report", "-i", perf.bench_path, "--stdio", "--no-children", "-g", "none",
                                           "--percentage", "relative", "--sort", sort, "--pid", ",".join(map(str, pids))],
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
                dsos = {}
                for line in report("dso,sym").splitlines():
                    m = re.match(r"^\s+([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*\S)\s*$", line)
                    if m:
                        pct = float(m.group(1))
                        g["top"].append([pct, m.group(2), m.group(3)[:120]])
                        dsos[m.group(2)] = dsos.get(m.group(2), 0.0) + pct
                g["top"] = g["top"][:25]
                # By shared object (the program, libc, librdkafka, the kernel …), and by thread name
                # (digits dropped: the pool's threads together).
                g["by_dso"] = sorted(([round(v, 2), k] for k, v in dsos.items()), reverse=True)[:12]
                threads = {}
                for line in report("pid").splitlines():
                    m = re.match(r"^\s+([\d.]+)%\s+\d+:(.*\S)\s*$", line)
                    if m:
                        key = re.sub(r"\d+", "#", m.group(2))
                        threads[key] = threads.get(key, 0.0) + float(m.group(1))
                g["by_thread"] = sorted(([round(v, 2), k] for k, v in threads.items()), reverse=True)[:12]
            out[name] = g
        return out

    def batched_extra(self):
        """The "batched" steady relay's own arguments: --batched-args if given (an A/B of any
        setting), else --busy-poll-ms of --batched-busy-poll-ms."""
        if self.a.batched_args is not None:
            return self.a.batched_args.split()
        if self.a.batched_binary:
            return []
        return ["--busy-poll-ms", str(self.a.batched_busy_poll_ms)]

    def batched_busy_poll_ms(self):
        """The --busy-poll-ms the "batched" relay runs with (its own arguments, else the default)."""
        args = self.batched_extra()
        return int(args[args.index("--busy-poll-ms") + 1]) if "--busy-poll-ms" in args[:-1] else RELAY_BUSY_POLL_MS

    def steady(self, rate, relay="outbox", replicas=1):
        """Paced single-row INSERTs at `rate` rows/s with `replicas` processes of outbox-relay
        ("outbox"; "batched": with --busy-poll-ms of --batched-busy-poll-ms) or of the naive SKIP
        LOCKED relay ("naive") on a fresh table. Per-row costs over
        the load window (first INSERT → table empty again): relay and PostgreSQL CPU, the relay
        role's statements (pg_stat_statements, reset at the window's start) and the database's
        transactions less the INSERTs' and the bench's own."""
        return self.steady_runs(rate, [(relay, replicas)])[0]

    def steady_runs(self, rate, specs):
        """steady() for each (relay, replicas) of `specs`, all in one window (--steady-pairing
        together): each on its own table and topic with its own inserting connections and its own
        arrivals, at `rate` each. The relays then share the machine's phases — every process's CPU
        per row here moves with how busy the VM's host is, by up to 2 × within minutes — at the
        price of a machine twice as loaded as in a run of its own. What cannot be told apart
        between them is left out of each run (None): the database's transactions, WAL and the
        relay role's statements not naming the table (pg_stat_statements and pg_stat_database
        count per role and database), and Tansu's CPU. The cluster's CPU outside every relay's
        and inserter's backends (checkpointer, WAL writer, …) is shared by rows: each run's
        PostgreSQL CPU is its own backends' plus its share of that."""
        together = len(specs) > 1
        ctxs = [self.steady_prepare(rate, relay, replicas, together) for relay, replicas in specs]
        return self.steady_window(rate, ctxs)

    def steady_prepare(self, rate, relay, replicas, together=False):
        """A steady run's table, topic, latency trigger and started relays (ready, idle CPU measured)."""
        seconds = self.a.steady_seconds
        kind = (f"steady{rate}" + {"naive": "_naive", "batched": f"_bp{self.batched_busy_poll_ms()}"}.get(relay, "")
                + (f"_x{replicas}" if replicas > 1 else ""))
        table = self.name(kind)
        topic = table.replace("_", "-")
        lat = qident(table + "_latency")
        self.create_topic(topic)
        self.migrate(table, self.a.batched_binary if relay == "batched" else None)
        notify_trigger = True
        if relay == "naive" and not self.a.naive_keep_notify_trigger:
            # The naive relay polls and never LISTENs: its users would not have outbox-relay's
            # statement-level NOTIFY trigger, whose pg_notify costs every inserting transaction
            # (and, with synchronous_commit=on, serializes their commits: PostgreSQL holds a
            # database-wide lock from a notifying transaction's pre-commit until after its WAL
            # flush). The trigger is part of outbox-relay's cost per row, not the naive relay's.
            # (Every trigger migrate made, whatever its name; the bench's own is made below.)
            self.drop_triggers(table)
            notify_trigger = False
        # Bench-only: record, in the relay's DELETE, how long ago each row was inserted.
        self.admin.query(f"CREATE TABLE {lat} (id bigint, ms double precision, deleted_at double precision)")
        if self.a.latency_trigger:
            self.admin.query(f"""
            CREATE FUNCTION {qident(table + '_bench_latency')}() RETURNS trigger LANGUAGE plpgsql AS $f$
            DECLARE t timestamptz := clock_timestamp();
            BEGIN
                INSERT INTO {lat} VALUES (OLD.id, extract(epoch FROM t - OLD.created_at) * 1000, extract(epoch FROM t));
                RETURN NULL;
            END $f$""")
            self.admin.query(f"CREATE TRIGGER bench_latency AFTER DELETE ON {qident(table)} "
                             f"FOR EACH ROW EXECUTE FUNCTION {qident(table + '_bench_latency')}()")
        self.admin.query("CHECKPOINT")

        extra, ack_logs = [], []
        if relay == "naive":
            procs = [self.start_naive(table, f"{table}-n{i}") for i in range(replicas)]
        else:
            extra = self.batched_extra() if relay == "batched" else []
            binary = self.a.batched_binary if relay == "batched" else None
            # Together: its backends named after the table (the URL's setting wins over the
            # relay's own), so that they can be told apart from another relay's of the same role.
            name = table if together else None
            ack_logs = [os.path.join(self.run_dir, f"{table}-r{i}.acks") for i in range(replicas)]
            procs = [self.start_relay(table, f"{table}-r{i}", extra, binary, application_name=name, ack_log=ack_logs[i])
                     for i in range(replicas)]
        pids = [p.pid for p in procs]
        self.wait_relays_ready(table, relay, procs, extra)
        time.sleep(0.5)
        # Idle cost: the relays' CPU while the table stays empty.
        idle0, idle_t0 = sum(proc_cpu(p) or 0.0 for p in pids), time.monotonic()
        time.sleep(self.a.idle_seconds)
        idle_cpu = (sum(proc_cpu(p) or 0.0 for p in pids) - idle0) / (time.monotonic() - idle_t0)
        return {"rate": rate, "relay": relay, "replicas": replicas, "seconds": seconds, "table": table, "topic": topic,
                "lat": lat, "notify_trigger": notify_trigger, "extra": extra, "procs": procs, "pids": pids,
                "idle_cpu": idle_cpu, "together": together, "ack_logs": ack_logs}

    def steady_window(self, rate, ctxs):
        """The load window of steady_runs: paced INSERTs into every run's table at once (each its
        own connections and arrivals), each run's CPU window closed when its table is empty."""
        together = len(ctxs) > 1
        # The window. Statements: reset now, so start-up and the idle probe are not counted.
        # Transactions: as in the drain (flush, baseline; at the end the relays' and the inserter's
        # backends exit, which flushes their counts), less the INSERTs (one each) and the bench's
        # own statements. A backend publishes its counts at most once a second while running, so
        # up to a second of the relays' idle-probe transactions can land in the window.
        self.admin.query("SELECT pg_stat_statements_reset()")
        self.admin.query("SELECT pg_stat_force_next_flush()")
        admin_q0 = self.admin.queries
        c0, r0 = self.xacts()
        wal0 = self.wal_stats()
        probe = start_machine_probe()
        for c in ctxs:
            c["cpu"] = CpuWindow(self.a.tansu_pid, c["pids"])
            c["rdk0"], c["sleeps0"] = threads_counters(c["pids"])
        perf = None if together else self.start_perf(ctxs[0]["table"], rate, ctxs[0]["seconds"])
        sends = BrokerSends.start([p for c in ctxs for p in c["pids"]],
                                  os.path.join(self.run_dir, f"{ctxs[0]['table']}.sends.csv"))
        if together:
            loads, errors = [None] * len(ctxs), []

            def load(k, c):
                try:
                    # Arrivals of their own: the same seed would send both tables' rows in lock step.
                    loads[k] = self.paced_inserts(c["table"], c["topic"], rate, c["seconds"], seed=f"arrivals-{rate}-{k}")
                except Exception as e:  # noqa: BLE001
                    errors.append(e)
            threads = [threading.Thread(target=load, args=(k, c), daemon=True) for k, c in enumerate(ctxs)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]
        else:
            loads = [self.paced_inserts(ctxs[0]["table"], ctxs[0]["topic"], rate, ctxs[0]["seconds"])]
        for c, ld in zip(ctxs, loads):
            c["ins"], c["total"], c["t0"], c["send_done"], c["ins_done"], c["max_lag"] = ld
        # Let the relays finish the tail; each run's window closes as its table empties.
        pending = list(ctxs)
        deadline = time.monotonic() + 120
        while pending:
            for c in list(pending):
                if self.admin.scalar(f"SELECT min(id) FROM {qident(c['table'])}") is None:
                    c["drained"] = time.monotonic()
                    self.steady_cpu(c, ctxs)
                    pending.remove(c)
                else:
                    self.check_alive(c["procs"])
            if pending:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{pending[0]['table']} not empty 120 s after the last insert")
                time.sleep(0.02)
        machine_probe = stop_machine_probe(probe)
        counted = sends.finish() if sends else {}
        for c in ctxs:
            c["res"]["machine_probe_ms"] = machine_probe
            # Counted until the last run's table was empty: a run that emptied sooner idled
            # meanwhile, and an idle relay sends nothing.
            c["sends"] = BrokerSends.per_row({p: counted[p] for p in c["pids"] if p in counted}, c["total"])
            # How many replicas held shards at the end (with --shard-spread load, as few as the
            # load needed; with even, all).
            c["lease_owners"] = None if c["relay"] == "naive" else int(self.admin.scalar(
                f"SELECT count(DISTINCT owner) FROM {qident(c['table'] + '_leases')} WHERE owner IS NOT NULL"))
        for c in ctxs:
            c["ins"].close()
        for c in ctxs:
            c["codes"] = self.stop_relays(c["procs"])
        self.wait_no_relay_backends()
        for c in ctxs:
            for pid in c["ins"].backend_pids:
                self.wait_backend_gone(pid)
        self.admin.query("SELECT pg_stat_force_next_flush()")
        own = self.admin.queries - admin_q0
        c1, r1 = self.xacts()
        wal = {k: v - wal0[k] for k, v in self.wal_stats().items()}
        total = sum(c["total"] for c in ctxs)
        xact = {"commits": c1 - c0 - own - total, "rollbacks": r1 - r0, "inserts_subtracted": total, "bench_own_subtracted": own}
        return [self.steady_result(c, xact, wal, perf) for c in ctxs]

    def steady_backends(self, c):
        """The relay's backends: the role's (a run of its own), else by application_name."""
        if not c["together"]:
            cond = ""
        else:
            cond = f" AND application_name = {qlit('naive-relay' if c['relay'] == 'naive' else c['table'])}"
        return [int(r[0]) for r in self.admin.query(
            f"SELECT pid FROM pg_stat_activity WHERE usename = '{self.relay_user}'{cond}")]

    def steady_cpu(self, c, ctxs):
        """Closes run c's CPU window (before its inserters' and relays' backends exit, so their
        CPU counts). Together: the cluster's CPU outside every run's backends is shared by rows."""
        c["relay_backends"] = self.steady_backends(c)
        pm = CpuWindow.postmaster_pid
        c["pg_pids"] = [pid for pid, (_, ppid, _) in all_cpu(pm).items() if pid == pm or ppid == pm]
        groups = {"relay_backends": c["relay_backends"], "inserter_backend": c["ins"].backend_pids}
        others = [o for o in ctxs if o is not c]
        if others:
            groups["other_runs"] = [p for o in others for p in self.steady_backends(o) + o["ins"].backend_pids]
        rdk, sleeps = threads_counters(c["pids"])
        rdk, sleeps = rdk - c["rdk0"], sleeps - c["sleeps0"]
        res = c["cpu"].finish(c["pids"], pg_groups=groups)
        # Of the relay's CPU, librdkafka's threads (rdk:*, in both relays the same library and its
        # requests) and the rest (this relay's code, or the naive relay's Python).
        res["relay_librdkafka_cpu_s"] = round(rdk, 3)
        res["relay_thread_sleeps"] = sleeps
        if others:
            g = res["postgres_cpu_s_by_group"]
            share = c["total"] / sum(o["total"] for o in ctxs)
            res["postgres_cluster_cpu_s"] = res["postgres_cpu_s"]
            res["postgres_other_runs_cpu_s"] = g.pop("other_runs")
            g["rest"] = round(g["rest"] * share, 3)
            res["postgres_cpu_s"] = round(g["relay_backends"] + g["inserter_backend"] + g["rest"], 3)
            res["tansu_cpu_s"] = None  # the runs' requests are not told apart
        c["res"] = res

    def steady_result(self, c, xact, wal, perf):
        """A steady run's figures (see steady())."""
        table, topic, lat, relay, replicas = c["table"], c["topic"], c["lat"], c["relay"], c["replicas"]
        ins, total, t0, send_done, ins_done, max_lag = c["ins"], c["total"], c["t0"], c["send_done"], c["ins_done"], c["max_lag"]
        res, drained, together = c["res"], c["drained"], c["together"]
        seconds, rate, codes, idle_cpu = c["seconds"], c["rate"], c["codes"], c["idle_cpu"]
        relay_backends, inserter_pids, pg_pids, pids = c["relay_backends"], ins.backend_pids, c["pg_pids"], c["pids"]
        notify_trigger, lease_owners = c["notify_trigger"], c["lease_owners"]
        commits, rollbacks = xact["commits"], xact["rollbacks"]
        r = self.admin.query(f"""
            SELECT count(*), percentile_cont(ARRAY[0.5, 0.9, 0.99, 0.999]) WITHIN GROUP (ORDER BY ms),
                   max(ms), avg(ms), min(ms) FROM {lat}""")[0]
        pct = [float(x) for x in r[1].strip("{}").split(",")] if r[1] else [None] * 4
        st_table, st_all = self.relay_statements(table)
        if together:  # the role's other statements (leases, heartbeats, LISTEN) are both runs'
            st_all = None
        kinds = self.relay_statement_kinds(table)
        # Where the relay role's statement time went (execution only; commits and their WAL
        # flushes are not in pg_stat_statements' times).
        # Together: only those naming this run's table.
        pat = re.compile(r'(?<![\w"])"?' + re.escape(table) + r'"?(?![\w"])')
        top_statements = [{"query": re.sub(r"\s+", " ", q)[:160], "calls": int(n), "total_ms": round(float(t), 1),
                           "mean_ms": round(float(m), 3), "rows": int(rw)}
                          for q, n, t, m, rw in self.admin.query(
                              f"SELECT query, calls, total_exec_time, mean_exec_time, rows FROM pg_stat_statements "
                              f"WHERE userid = {self.relay_oid} ORDER BY total_exec_time DESC")
                          if not together or pat.search(q)][:8]
        created = {}
        msgs = self.consume(topic, timestamps=created)
        # COMMIT returned (client wall clock) → the message's Kafka CreateTime, which both relays'
        # librdkafka stamps at the produce call (ms resolution, same machine's clock): what a
        # consumer waits for, less the broker round trip (about a millisecond here). Unlike
        # COMMIT → DELETE it leaves out when the relay deletes the row, which outbox-relay
        # defers to ride along with its next claim (see docs/DESIGN.md).
        ck = sorted(created[i] - ins.committed[i] * 1000 for i in created if i in ins.committed)
        commit_to_kafka = quantiles_ms(ck)
        # COMMIT returned → the broker's acknowledgement, row by row, for outbox-relay: what issue
        # 13's target is about. CreateTime is the produce call floored to a millisecond, so c→k is
        # short by that and by the broker's round trip; the relay's acknowledgement log dates each
        # row when librdkafka's broker thread handled its acknowledgement (µs, same clock).
        acked = read_ack_logs(c.get("ack_logs") or [])
        ca = sorted(acked[i] / 1000 - ins.committed[i] * 1000 for i in acked if i in ins.committed)
        commit_to_ack = quantiles_ms(ca)
        # The same rows' produce call (CreateTime, floored to the ms: 0-1 ms long) → acknowledgement:
        # which part of a COMMIT → acknowledgement tail came after the produce (the broker's
        # answers to a claim's requests, one partition each; see docs/BENCHMARKS.md).
        create_to_ack = quantiles_ms(sorted(acked[i] / 1000 - created[i] for i in acked if i in created))
        if self.a.dump_latencies:
            # Per row: outbox id, COMMIT returned (s since the epoch), Kafka CreateTime (ms), and
            # for outbox-relay the broker's acknowledgement (µs since the epoch, else null): for
            # looking at when the slow rows came (bursts, periodic stalls) and which leg was slow.
            with open(os.path.join(self.run_dir, f"{table}-latency.json"), "w") as f:
                json.dump([[i, ins.committed[i], created[i], acked.get(i)] for i in created if i in ins.committed], f)
        if commit_to_ack:
            commit_to_ack["rows"] = len(ca)
        if commit_to_kafka:
            commit_to_kafka["rows"] = len(ck)
        commit_lat = None
        if self.a.latency_trigger:
            recs = self.admin.query(f"SELECT id, deleted_at FROM {lat}")
            ids = [int(x[0]) for x in recs]
            # COMMIT returned (client wall clock) → the DELETE (server wall clock, same machine).
            # Unlike INSERT → DELETE it leaves out the inserting transaction's own commit: its WAL
            # flush and, on outbox-relay's table, its wait for the NOTIFY lock (below).
            cl = sorted((float(d) - ins.committed[int(i)]) * 1000 for i, d in recs if int(i) in ins.committed)
            commit_lat = quantiles_ms(cl)
            if commit_lat:
                commit_lat["below_zero"] = sum(1 for x in cl if x < 0)
        else:  # no record of the deleted ids: every id consumed is expected, lost = inserted - distinct
            ids = {m[3] for m in msgs if m[3] is not None}
        ver = self.verify(msgs, ids)
        if not self.a.latency_trigger:
            ver["lost"] = total - len(ids)
        ver["rows_inserted"] = total
        ver["latency_rows_recorded"] = int(r[0])
        g = res["postgres_cpu_s_by_group"]
        per_row = lambda x, k=1000: None if x is None else round(x * k / total, 4)  # noqa: E731
        res.update({
            "table": table, "relay": "naive" if relay == "naive" else "outbox-relay", "replicas": replicas,
            # outbox-relay's --busy-poll-ms in this run (5 is its default); None for the naive relay.
            "lease_owners": lease_owners,
            "busy_poll_ms": None if relay == "naive" else (self.batched_busy_poll_ms() if relay == "batched" else RELAY_BUSY_POLL_MS),
            "relay_args": self.batched_extra() if relay == "batched" else [],
            "relay_binary": self.a.batched_binary if relay == "batched" else None,
            "rate_target": rate, "seconds": seconds, "rows": total,
            "rate_achieved": round(total / (ins_done - t0), 1),
            "send_seconds": round(send_done - t0, 3),
            "max_send_lag_ms": round(max_lag * 1000, 2),
            # The application's side: each INSERT's send → its autocommit's response (a NOTIFY
            # serializes concurrent commits through their WAL flushes while the gate is open).
            "insert_commit_ms": quantiles_ms(ins.commit_ms),
            "tail_drain_seconds_after_last_insert": round(drained - ins_done, 3),
            "window_seconds": round(drained - t0, 3),
            "latency_ms": {"p50": pct[0], "p90": pct[1], "p99": pct[2], "p999": pct[3],
                           "max": float(r[2]) if r[2] else None, "mean": float(r[3]) if r[3] else None,
                           "min": float(r[4]) if r[4] else None},
            "commit_to_delete_ms": commit_lat,
            "commit_to_kafka_ms": commit_to_kafka,
            "commit_to_ack_ms": commit_to_ack,
            "create_to_ack_ms": create_to_ack,
            "relay_cpu_s_per_s": round(res["relay_cpu_s"] / (drained - t0), 3),
            "relay_idle_cpu_s_per_s": round(idle_cpu, 4),
            "machine_busy_share": round(res["machine_busy_cpu_s"] / res["machine_cpu_capacity_s"], 3),
            "db_statements_on_table_per_1000_rows": round(st_table * 1000 / total, 1),
            "db_statements_all_relay_per_1000_rows": None if st_all is None else round(st_all * 1000 / total, 1),
            # Together: the database's, for every run of the window (not per row of this one).
            "db_transactions": xact,
            # "apart": a window of its own; "together": beside the other relays of its round
            # (--steady-pairing).
            "pairing": "together" if together else "apart",
            # Per row, over the window: CPU in ms, statements and transactions as counts.
            "per_row": {
                "relay_cpu_ms": per_row(res["relay_cpu_s"]),
                "relay_librdkafka_cpu_ms": per_row(res["relay_librdkafka_cpu_s"]),
                "relay_other_cpu_ms": per_row(res["relay_cpu_s"] - res["relay_librdkafka_cpu_s"]),
                "postgres_cpu_ms": per_row(res["postgres_cpu_s"]),
                "postgres_relay_backends_cpu_ms": per_row(g["relay_backends"]),
                "postgres_inserter_backend_cpu_ms": per_row(g["inserter_backend"]),
                "postgres_rest_cpu_ms": per_row(g["rest"]),
                "relay_plus_postgres_cpu_ms": per_row(res["relay_cpu_s"] + res["postgres_cpu_s"]),
                # The broker's (Tansu's) CPU: not in the issue's targets, but a cost the relay
                # causes — per ProduceRequest, and librdkafka sends one per partition.
                "broker_cpu_ms": per_row(res["tansu_cpu_s"]),
                # The librdkafka broker threads' sendmsg calls (one per request: BrokerSends), and
                # per send their recvmsg calls and context switches; absent where perf cannot count.
                **c["sends"],
                # The relay's threads' sleeps (voluntary context switches), each a wake-up after.
                "relay_wakeups": per_row(res["relay_thread_sleeps"], 1),
                "statements_on_table": per_row(st_table, 1),
                "claims": per_row(kinds["select"], 1),
                "deletes": per_row(kinds["delete"], 1),
                "claims_with_delete": per_row(kinds["claims_with_delete"], 1),
                "statements_all": per_row(st_all, 1),
                "transactions": None if together else per_row(commits + rollbacks, 1),
                "commits": None if together else per_row(commits, 1),
                "rollbacks": None if together else per_row(rollbacks, 1),
                # The whole cluster's WAL over the window (pg_stat_wal): records, full-page
                # images and bytes per row, and the WAL writes and flushes (fsyncs) per row,
                # whichever backend did them — an asynchronous commit's WAL is written by the
                # next backend (or the walwriter) that flushes past it.
                "wal": None if together else {k: per_row(v, 1) for k, v in wal.items()},
            },
            "relay_top_statements": top_statements,
            "relay_backend_pids": relay_backends, "relay_pids": pids, "notify_trigger": notify_trigger,
            "latency_trigger": self.a.latency_trigger,
            "relay_exit_codes": codes,
            "verify": ver,
        })
        if perf is not None:
            res["perf"] = self.perf_summary(perf, {
                "relay_process": pids, "relay_backends": relay_backends, "inserter_backend": inserter_pids,
                "postgres_other": [p for p in pg_pids if p not in relay_backends and p not in inserter_pids]}, total)
        for k in res["latency_ms"]:
            if res["latency_ms"][k] is not None:
                res["latency_ms"][k] = round(res["latency_ms"][k], 3)
        self.admin.query(f"DROP TABLE IF EXISTS {qident(table)}")
        self.admin.query(f"DROP TABLE IF EXISTS {lat}")
        return res

    # ---- scenario 3 -------------------------------------------------------------------------
    def scale(self, replicas):
        log(f"scale: {self.a.scale_rows} rows, {replicas} relay(s)")
        return self.timed_drain(f"scale{replicas}", self.a.scale_rows, replicas)

    # ---- scenario 5 -------------------------------------------------------------------------
    def concurrent(self, naive, seed):
        """One scripts/lib/concurrency.py run (its own fresh table and topics) with one relay of the
        bench's binary, or with one naive SKIP LOCKED relay; its JSON summary, with the relay's and
        PostgreSQL's CPU from the writers' start to the outbox empty ("cpu")."""
        table = self.name("concurrent_naive" if naive else "concurrent")
        json_out = os.path.join(self.run_dir, f"{table}.json")
        cmd = [VENV_PYTHON, CONCURRENCY_PY, "--database-url", self.admin_url, "--brokers", self.a.brokers,
               "--relay", self.a.relay, "--table", table, "--seed", str(seed), "--writers", "8",
               "--seconds", str(self.a.concurrent_seconds), "--rate", str(self.a.concurrent_rate),
               "--relays", "1", "--log-dir", os.path.join(self.run_dir, table), "--json-out", json_out, "--cpu"]
        cmd += ["--partitions", str(self.a.partitions or CONCURRENT_PARTITIONS)]
        if naive:
            # As in the steady scenario: the naive relay's table is the relay's migrated table less
            # the NOTIFY trigger, so both relays' writers pay for the same columns and indexes.
            cmd += ["--naive", "--naive-migrated-table"] + [f"--relay-arg={x}" for x in self.naive_args()]
        else:
            # The bench's relay options, except --http-port (concurrency.py passes its own).
            args = self.relay_args()
            i = args.index("--http-port")
            del args[i:i + 2]
            cmd += [f"--relay-arg={x}" for x in args]
        log(f"concurrent: {'naive relay' if naive else 'outbox-relay'}, 8 writers, {self.a.concurrent_rate} rows/s, "
            f"{self.a.concurrent_seconds} s, seed {seed}")
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in p.stdout.splitlines():
            if not line.startswith("CONCURRENCY_JSON "):
                print(f"bench:   {line}", file=sys.stderr, flush=True)
        if p.returncode != 0 or not os.path.exists(json_out):
            return {"relay": "naive" if naive else "outbox-relay", "error": f"concurrency.py exited {p.returncode}"}
        with open(json_out) as f:
            res = json.load(f)
        res["relay"] = "naive" if naive else "outbox-relay"
        return res

    def cleanup(self):
        for p in list(self.relays):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in list(self.relays):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.relays.clear()


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

def fmt(v, nd=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def ver_s(v):
    return (f"lost {v['lost']}, dup {v['duplicates']}, order violations {v['key_order_violations']}"
            + (f", unexpected {v['unexpected']}" if v.get("unexpected") else "")
            + (f", keys on >1 partition {v['keys_on_several_partitions']}" if v.get("keys_on_several_partitions") else ""))


# outbox-relay's --busy-poll-ms when not given (RelayConfiguration.effectiveBusyPollMillis with
# the default poll interval).
RELAY_BUSY_POLL_MS = 5


def relay_label(s):
    """A steady run's relay as the tables name it: outbox-relay, with a --busy-poll-ms other than
    its default, or the naive relay."""
    if s["relay"] != "outbox-relay":
        return "naive SKIP LOCKED"
    if s.get("relay_binary"):
        # Another build of the relay (--batched-binary): named by its file, with its arguments.
        return " ".join(["outbox-relay", "[" + os.path.basename(s["relay_binary"]) + "]"]
                        + [a.lstrip("-") for a in (s.get("relay_args") or [])])
    args = s.get("relay_args") or []
    if args and (len(args) != 2 or args[0] != "--busy-poll-ms"):
        return "outbox-relay " + " ".join(a.lstrip("-") for a in args)
    bp = s.get("busy_poll_ms")
    return "outbox-relay" if bp in (None, RELAY_BUSY_POLL_MS) else f"outbox-relay bp{bp}"


def replica_ratios(sc, label):
    """steady_scale runs of one relay label: relay + PostgreSQL CPU per row of k replicas ÷ 1
    replica, each taken within its round ({k: [ratio per round]}; None where a round lacks one)."""
    by_round = {}
    for s in sc:
        if relay_label(s) == label:
            by_round.setdefault(s.get("round", 0), {})[s["replicas"]] = s["per_row"]["relay_plus_postgres_cpu_ms"]
    ks = sorted({k for m in by_round.values() for k in m if k != 1})
    return {k: [m[k] / m[1] if m.get(k) and m.get(1) else None for _, m in sorted(by_round.items())] for k in ks}


def relay_order(s):
    return (s["relay"] != "outbox-relay", s.get("busy_poll_ms") or 0)


def round_order(relays, rnd):
    """The relays' order in steady round `rnd`: as given in even rounds, reversed in odd ones."""
    return list(relays) if rnd % 2 == 0 else list(reversed(relays))


def per_row_table(out, runs):
    """Steady-state costs per row, outbox-relay beside the naive relay (and steady_scale)."""
    lines = ["2b. Steady state per row (window: first INSERT → table empty; CPU ms per row; PostgreSQL = whole cluster,"
             " of which the relays' backends / the inserters' backends / the rest; broker = Tansu's CPU, not in the targets;",
             "    statements = the relay role's pg_stat_statements calls, on the table and all; transactions ="
             " pg_stat_database commits + rollbacks less the INSERTs and the bench's own;",
             "    latency ms: INSERT → DELETE (p50/p99/max, as in 2.), COMMIT returned → the broker's acknowledgement"
             " (c→a p50/p99, outbox-relay only: its acknowledgement log), COMMIT returned → Kafka CreateTime"
             " (c→k p50/p99/max) and COMMIT returned → DELETE (c→d p50/p99/max))"]
    if any(s.get("pairing") == "together" for s in runs):
        lines.append("    --steady-pairing together: a round's relays ran at once, each on its own table at the rate; PostgreSQL ="
                     " its backends and inserters plus its share of the rest; broker, statements all and transactions not per relay;"
                     " others s includes the other relays of the window")
    head = (f"   {'rate':>6} {'relay':<22}{'n':>3}{'achieved':>9}{'relay ms':>9}{'pg ms':>8}{'(relay bk/ins/rest)':>21}"
            f"{'relay+pg':>9}{'broker':>7}{'stmt tbl':>9}{'stmt all':>9}{'xact':>7}{'p50':>7}{'p99':>7}{'max':>7}"
            f"{'c→a p50':>8}{'p99':>7}{'c→k p50':>8}{'p99':>7}{'max':>7}{'c→d p50':>8}{'p99':>7}{'max':>7}{'machine':>8}{'others s':>9}  verification")
    def row(s):
        P, L, C = s["per_row"], s["latency_ms"], s.get("commit_to_delete_ms") or {}
        K = s.get("commit_to_kafka_ms") or {}
        A = s.get("commit_to_ack_ms") or {}
        name = relay_label(s) + (f" r{s['round'] + 1}" if out["config"].get("steady_rounds", 1) > 1 and "round" in s else "")
        split = (f"{fmt(P['postgres_relay_backends_cpu_ms'], 3)}/{fmt(P['postgres_inserter_backend_cpu_ms'], 3)}/"
                 f"{fmt(P['postgres_rest_cpu_ms'], 3)}")
        return (f"   {s['rate_target']:>6} {name:<22}{s['replicas']:>3}{fmt(s['rate_achieved'], 0):>9}"
                f"{fmt(P['relay_cpu_ms'], 3):>9}{fmt(P['postgres_cpu_ms'], 3):>8}{split:>21}"
                f"{fmt(P['relay_plus_postgres_cpu_ms'], 3):>9}{fmt(P.get('broker_cpu_ms'), 3):>7}{fmt(P['statements_on_table'], 3):>9}"
                f"{fmt(P['statements_all'], 3):>9}{fmt(P['transactions'], 3):>7}"
                f"{fmt(L['p50'], 2):>7}{fmt(L['p99'], 1):>7}{fmt(L['max'], 0):>7}"
                f"{fmt(A.get('p50'), 2):>8}{fmt(A.get('p99'), 1):>7}"
                f"{fmt(K.get('p50'), 2):>8}{fmt(K.get('p99'), 1):>7}{fmt(K.get('max'), 0):>7}"
                f"{fmt(C.get('p50'), 2):>8}{fmt(C.get('p99'), 1):>7}{fmt(C.get('max'), 0):>7}"
                f"{fmt(100 * s['machine_busy_share'], 0) + '%':>8}{fmt(s['others_cpu_s'], 1):>9}  {ver_s(s['verify'])}")
    if runs:
        lines.append(head)
        lines += [row(s) for s in runs]
    sc = out.get("steady_scale")
    if sc:
        lines.append(f"   replicas at {out['config'].get('steady_scale_rate')} rows/s (several naive instances"
                     " break per-key order: a comparison only)")
        lines.append(head)
        lines += [row(s) for s in sorted(sc, key=lambda s: (relay_order(s), s["replicas"]))]
        for relay in sorted({relay_label(s) for s in sc}):
            ratios = replica_ratios(sc, relay)
            if any(r is not None for rs in ratios.values() for r in rs):
                lines.append(f"   {relay}: relay + PostgreSQL CPU per row, k replicas ÷ 1 replica (each round): "
                             + "; ".join(f"{k}: " + ", ".join(fmt(r, 2) for r in rs) for k, rs in ratios.items()))
    for s in runs + (sc or []):
        pf = s.get("perf")
        if not pf or pf.get("error"):
            continue
        lines.append(f"   perf ({s['relay']}, {s['replicas']} x {s['rate_target']} rows/s, {pf['frequency_hz']} Hz, {pf['file']}):")
        for gname in ("relay_process", "relay_backends", "inserter_backend", "postgres_other"):
            g = pf.get(gname)
            if not g:
                continue
            top = "; ".join(f"{pct:.1f}% {sym}" for pct, _dso, sym in g["top"][:8])
            lines.append(f"     {gname:<17} {fmt(g['cpu_ms_per_row'], 3)} ms/row: {top}")
    lines.append("")
    return lines


PROBE_CODE = """
import hashlib, json, signal, time, zlib
data = b"".join(hashlib.sha256(i.to_bytes(4, "little")).hexdigest().encode() for i in range(4096))
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
out = []
end = time.monotonic() + 900  # a bench that failed mid-run leaves no probe behind for long
while not stop and time.monotonic() < end:
    t0 = time.thread_time()
    zlib.compress(data, 6)
    d = {}
    for i in range(12_500):
        d[(i * 2654435761) & 0xFFFFFFF] = i
    out.append(round((time.thread_time() - t0) * 1000, 3))
    for _ in range(25):
        if stop:
            break
        time.sleep(0.02)
print(json.dumps(out))
"""


def start_machine_probe():
    """The machine's speed during a run: a separate process (no GIL shared with the pacer) does a
    fixed piece of work every half second — zlib over 256 KiB of pseudo-random text and a
    12 500-entry dict, memory and caches as much as arithmetic, about 10 ms — and records its own
    CPU ms for each. The same work costs more CPU time when the VM's host is busier (its caches
    and memory bandwidth shared), and every process of the run pays that too: a pair of runs
    whose probes differ was measured in different phases of the machine, and their ratio says
    less. Its CPU (about 2 % of a core) counts as "others"."""
    return subprocess.Popen([sys.executable, "-c", PROBE_CODE], stdout=subprocess.PIPE, text=True)


def stop_machine_probe(p):
    """Median and range of the probe's samples (CPU ms each), and their count."""
    p.send_signal(signal.SIGTERM)
    try:
        samples = json.loads(p.communicate(timeout=10)[0] or "[]")
    except (subprocess.TimeoutExpired, ValueError):
        p.kill()
        return None
    if not samples:
        return None
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "samples": len(samples)}


def targets_table(out):
    """Issue 13's targets, each against the naive relay at the same rate in the same round (see
    --steady-rounds): the median over the rounds, its range, and in how many rounds it was met."""
    def summary(values, ok, unit=" ×", nd=2):
        values = [v for v in values if v is not None]
        if not values:
            return "-"
        med = statistics.median(values)
        met = sum(1 for v in values if ok(v))
        spread = f" ({fmt(min(values), nd)}–{fmt(max(values), nd)})" if len(values) > 1 else ""
        return f"{fmt(med, nd)}{unit}{spread} {'met' if ok(med) else 'MISSED'}" + (f" {met}/{len(values)}" if len(values) > 1 else "")
    def ratio(a, b):
        return None if a is None or not b else a / b
    def split_line(indent, rows):
        """Not targets: where the relay CPU ratio comes from, over (ours, naive) per-row pairs.
        librdkafka's threads do the same requests in both relays; the rest is this relay's code
        against the naive one's Python. None where no pair has the split (runs that predate it,
        or a part that was 0)."""
        rk = [v for v in (ratio(o.get("relay_librdkafka_cpu_ms"), n.get("relay_librdkafka_cpu_ms")) for o, n in rows) if v is not None]
        ro = [v for v in (ratio(o.get("relay_other_cpu_ms"), n.get("relay_other_cpu_ms")) for o, n in rows) if v is not None]
        if not (rk and ro):
            return None
        # What librdkafka's threads cost follows their requests (BrokerSends), where perf counted.
        bs = [(o["broker_sends"], n["broker_sends"]) for o, n in rows if o.get("broker_sends") and n.get("broker_sends")]
        sends = (f" (requests per row {fmt(statistics.median(o for o, _ in bs), 2)} against "
                 f"{fmt(statistics.median(n for _, n in bs), 2)})") if bs else ""
        # Much of either relay's CPU at a trickle is its threads' wake-ups (thread_counters).
        wk = [(o["relay_wakeups"], n["relay_wakeups"]) for o, n in rows if o.get("relay_wakeups") and n.get("relay_wakeups")]
        wakeups = (f"; thread wake-ups per row {fmt(statistics.median(o for o, _ in wk), 2)} against "
                   f"{fmt(statistics.median(n for _, n in wk), 2)}") if wk else ""
        return (f"{indent}of the relay CPU: librdkafka's threads {fmt(statistics.median(rk), 2)} × the naive's{sends}, "
                f"the rest {fmt(statistics.median(ro), 2)} × (medians){wakeups}")
    together = any(s.get("pairing") == "together" for s in out.get("steady", []))
    lines = ["6. Issue 13's targets (outbox-relay ÷ the naive relay at the same rate and round; median over rounds"
             " (range), verdict of the median, rounds met" + ("; steady at rates marked together: the relays of a round in one window" if together else "") + ")"]
    naive = {(s["rate_target"], s.get("round", 0)): s for s in out.get("steady_naive", []) if s["replicas"] == 1}
    ours = out.get("steady", []) + out.get("steady_batched", [])
    groups = {}
    for s in ours:
        groups.setdefault((relay_order(s), relay_label(s), s["rate_target"]), []).append(s)
    for (_, label, rate), runs in sorted(groups.items()):
        rc, pg, p99, np99, probe, split, a99 = [], [], [], [], [], [], []
        for s in runs:
            n = naive.get((rate, s.get("round", 0)))
            if not n:
                continue
            if s.get("machine_probe_ms") and n.get("machine_probe_ms"):
                probe.append(ratio(s["machine_probe_ms"]["median"], n["machine_probe_ms"]["median"]))
            rc.append(ratio(s["per_row"]["relay_cpu_ms"], n["per_row"]["relay_cpu_ms"]))
            split.append((s["per_row"], n["per_row"]))
            pg.append(ratio(s["per_row"]["postgres_cpu_ms"], n["per_row"]["postgres_cpu_ms"]))
            p99.append((s.get("commit_to_kafka_ms") or {}).get("p99"))
            a99.append((s.get("commit_to_ack_ms") or {}).get("p99"))
            np99.append((n.get("commit_to_kafka_ms") or {}).get("p99"))
        if not rc:
            continue
        nv = [v for v in np99 if v is not None]
        mark = " together" if any(s.get("pairing") == "together" for s in runs) else ""
        lines.append(f"   {label:<22}{rate:>5} rows/s{mark}: relay CPU {summary(rc, lambda v: v <= 0.5)} (≤ 0.5); "
                     f"PostgreSQL CPU {summary(pg, lambda v: v <= 1.0)} (≤ 1); "
                     + (f"COMMIT → acknowledgement p99 {summary(a99, lambda v: v <= 10, ' ms', 1)} (≤ 10); "
                        if all(v is not None for v in a99) else "")
                     + f"COMMIT → Kafka p99 {summary(p99, lambda v: v <= 10, ' ms', 1)} (≤ 10; naive "
                     f"{fmt(statistics.median(nv), 1) if nv else '-'} ms)")
        if probe and not mark:  # together: one probe for both, trivially 1
            # Not a target: how alike the machine was during the two runs of each pair.
            lines.append(f"   {'':<22}{'':>5}         machine probe ÷ the naive run's: "
                         + ", ".join(fmt(v, 2) for v in probe) + " (by round; 1 = the same speed)")
        line = split_line(f"   {'':<22}{'':>5}         ", split)
        if line:
            lines.append(line)
    sc = out.get("steady_scale") or []
    for label in sorted({relay_label(s) for s in sc if s["relay"] == "outbox-relay"}):
        for k, rs in replica_ratios(sc, label).items():
            lines.append(f"   {label:<22} {k} replicas ÷ 1 (relay + PostgreSQL CPU per row): {summary(rs, lambda v: v <= 1.3)} (≤ 1.3)")
    if out.get("drain_over_ceiling") is not None:
        pairs = out.get("drain_over_ceiling_pairs") or [out["drain_over_ceiling"]]
        lines.append(f"   {'drain ÷ ceiling':<22}{summary(pairs, lambda v: v >= 0.8, '')} (≥ 0.8; over the drain + ceiling pairs)")
    conc = [c for c in out.get("concurrent", []) if not c.get("error")]
    ours_c = [c for c in conc if c["relay"] == "outbox-relay"]
    naive_c = [c for c in conc if c["relay"] != "outbox-relay"]
    if ours_c:
        p99 = [c["latency_ms"]["p99"] for c in ours_c]
        a99 = [(c.get("commit_to_ack_ms") or {}).get("p99") for c in ours_c]
        np99 = [c["latency_ms"]["p99"] for c in naive_c]
        by_round = {c.get("round", 0): c for c in naive_c}
        rc, pg, split = [], [], []
        for c in ours_c:
            n = by_round.get(c.get("round", 0))
            if n and c.get("cpu") and n.get("cpu"):
                ours_row, naive_row = c["cpu"]["per_row"], n["cpu"]["per_row"]
                rc.append(ratio(ours_row["relay_cpu_ms"], naive_row["relay_cpu_ms"]))
                pg.append(ratio(ours_row["postgres_cpu_ms"], naive_row["postgres_cpu_ms"]))
                split.append((ours_row, naive_row))
        cpu = (f"relay CPU {summary(rc, lambda v: v <= 0.5)} (≤ 0.5); PostgreSQL CPU {summary(pg, lambda v: v <= 1.0)} (≤ 1); "
               if rc else "")
        if all(v is not None for v in a99):
            cpu += f"COMMIT → acknowledgement p99 {summary(a99, lambda v: v <= 10, ' ms', 1)} (≤ 10); "
        lines.append(f"   {'concurrent writers':<22}{cpu}COMMIT → Kafka p99 {summary(p99, lambda v: v <= 10, ' ms', 1)} (≤ 10; naive "
                     f"{fmt(statistics.median(np99) if np99 else None, 1)} ms)")
        line = split_line(f"   {'':<22}", split)
        if line:
            lines.append(line)
    rss = [r.get("relay_peak_rss_mib") for r in [out.get("drain")] + ours + sc + out.get("scale", [])
           if r and r.get("relay") != "naive" and r.get("relay_peak_rss_mib") is not None]
    if rss:
        lines.append(f"   {'peak RSS':<22}{fmt(max(rss), 1)} MiB ({'met' if max(rss) <= 64 else 'MISSED'}, ≤ 64 in every scenario)")
    lines.append("")
    return lines if len(lines) > 2 else []


def report(out):
    lines = []
    cfg = out["config"]
    lines.append("")
    lines.append(f"outbox-relay benchmark — {cfg['cpus']} CPUs, relay args: {' '.join(cfg['relay_args'])}")
    ps = cfg.get("postgres_settings") or {}
    lines.append(f"PostgreSQL {cfg.get('postgres')}, {ps.get('durability', '?').upper()}: fsync={ps.get('fsync')}, "
                 f"synchronous_commit={ps.get('synchronous_commit')}, full_page_writes={ps.get('full_page_writes')}; "
                 f"paced INSERTs: {cfg.get('arrivals', 'uniform')} arrivals")
    changed = [f"{n} {cfg[k]}" for k, n, default in (("partitions", "topics' partitions", PARTITIONS),
                                                       ("naive_idle_ms", "naive relay's idle sleep (ms)", NAIVE_IDLE_MS))
               if cfg.get(k, default) != default]
    if changed:
        lines.append("DIAGNOSTIC SETTINGS: " + ", ".join(changed))
    lines.append("")
    d = out.get("drain")
    c = out.get("ceiling")
    if d:
        lines.append(f"1. Backlog drain ({fmt(d['rows'])} rows, 256-byte values, 1000 keys, {cfg.get('partitions', PARTITIONS)} partitions, 1 relay)")
        rows = [
            ("relay start → empty table", f"{fmt(d['seconds'], 2)} s"),
            ("throughput", f"{fmt(d['rows_per_s'], 0)} rows/s"),
            ("time to all shards leased / first delete", f"{fmt(d['seconds_to_all_shards_leased'], 2)} s / "
                                                         f"{fmt(d['seconds_to_first_delete'], 2)} s"),
            ("throughput after the first delete", f"{fmt(d['rows_per_s_after_first_delete'], 0)} rows/s"),
            ("relay CPU", f"{fmt(d['relay_cpu_s'], 2)} s ({fmt(100 * d['relay_cpu_share_of_wall'], 0)}% of one core)"),
            ("rows per relay CPU second", fmt(d["rows_per_relay_cpu_s"], 0)),
            ("relay peak RSS (VmHWM)", f"{fmt(d['relay_peak_rss_mib'], 1)} MiB"),
            ("postgres / tansu / bench CPU", f"{fmt(d['postgres_cpu_s'], 2)} s / {fmt(d['tansu_cpu_s'], 2)} s / "
                                             f"{fmt(d['bench_cpu_s'], 2)} s"),
            ("machine busy (other processes)", f"{fmt(100 * d['machine_busy_share'], 0)}% of {cfg['cpus']} CPUs "
                                               f"({fmt(d['others_cpu_s'], 2)} s)"),
            ("DB statements on the table / 1000 rows", fmt(d["db_statements_on_table_per_1000_rows"], 2)),
            ("DB statements, all relay / 1000 rows", fmt(d["db_statements_all_relay_per_1000_rows"], 2)),
            ("  of them claims / DELETEs", f"{fmt(d.get('db_claims_per_1000_rows'), 2)} / {fmt(d.get('db_deletes_per_1000_rows'), 2)}"),
            ("DB transactions / 1000 rows", fmt(d["db_transactions_per_1000_rows"], 2)),
            ("verification (consumed topic)", ver_s(d["verify"])),
        ]
        lines += [f"   {k:<42} {v}" for k, v in rows]
        lines.append("")
    if c:
        lines.append(f"4. Database ceiling (same {fmt(c['rows'])}-row backlog, relay's claim + DELETE via pgbench, no Kafka)")
        lines.append(f"   {'rows deleted / elapsed':<42} {fmt(c['rows_deleted'])} / {fmt(c['seconds'], 2)} s = "
                     f"{fmt(c['rows_per_s'], 0)} rows/s (pgbench: {fmt(c['pgbench_rows_per_s'], 0)} rows/s)")
        lines.append(f"   {'postgres / pgbench CPU':<42} {fmt(c['postgres_cpu_s'], 2)} s / {fmt(c['pgbench_cpu_s'], 2)} s")
        if d:
            lines.append(f"   {'drain ÷ ceiling':<42} {fmt(out['drain_over_ceiling'], 2)} "
                         f"(after the first delete: {fmt(out.get('drain_after_first_delete_over_ceiling'), 2)})")
            if out.get("pairs"):
                lines.append(f"   {'  pairs (median shown above)':<42} "
                             + ", ".join(f"{fmt(p['drain']['rows_per_s'], 0)} ÷ {fmt(p['ceiling']['rows_per_s'], 0)} = "
                                         f"{fmt(p['drain_over_ceiling'], 2)}" for p in out["pairs"]))
        lines.append("")
    if out.get("steady"):
        lines.append("2. Steady state (single-row autocommit INSERTs at a fixed rate; latency = INSERT's clock_timestamp()"
                     " → relay's DELETE of the row)")
        lines.append(f"   {'rate (target/achieved)':<24}{'rows':>8}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'p99.9':>9}"
                     f"{'max ms':>9}{'relay CPU/s':>13}{'idle CPU/s':>12}{'machine':>9}{'others s':>10}{'stmts/1k':>10}  verification")
        for s in out["steady"]:
            L = s["latency_ms"]
            lines.append(f"   {str(s['rate_target']) + '/' + fmt(s['rate_achieved'], 0):<24}{fmt(s['rows']):>8}"
                         f"{fmt(L['p50'], 2):>9}{fmt(L['p90'], 2):>9}{fmt(L['p99'], 2):>9}{fmt(L['p999'], 2):>9}"
                         f"{fmt(L['max'], 1):>9}{fmt(s['relay_cpu_s_per_s'], 3):>13}{fmt(s['relay_idle_cpu_s_per_s'], 4):>12}"
                         f"{fmt(100 * s['machine_busy_share'], 0) + '%':>9}{fmt(s['others_cpu_s'], 1):>10}"
                         f"{fmt(s['db_statements_on_table_per_1000_rows'], 0):>10}  {ver_s(s['verify'])}")
        if any(s["rate_achieved"] < 0.95 * s["rate_target"] for s in out["steady"]):
            lines.append("   (a rate below its target: the INSERTs were answered more slowly than sent — the database"
                         " and machine did not keep up; see max_send_lag_ms)")
        lines.append("")
    per_row_runs = sorted(out.get("steady", []) + out.get("steady_batched", []) + out.get("steady_naive", []),
                          key=lambda s: (s["rate_target"], relay_order(s)))
    if per_row_runs or out.get("steady_scale"):
        lines += per_row_table(out, per_row_runs)
    io = out.get("insert_only")
    if io:
        lines.append(f"   without relay (INSERTs only, no latency trigger; NOTIFY trigger as migrated): {io['rate_target']}/{fmt(io['rate_achieved'], 0)} rows/s, "
                     f"machine {fmt(100 * io['machine_busy_share'], 0)}% busy, postgres CPU {fmt(io['postgres_cpu_s'], 1)} s, "
                     f"bench CPU {fmt(io['bench_cpu_s'], 1)} s, other processes {fmt(io['others_cpu_s'], 1)} s")
        lines.append("")
    ic = out.get("insert_cost")
    if ic:
        lines.append(f"7. INSERT cost by the outbox's shape (backend CPU µs per single-row INSERT transaction, durable; "
                     f"{fmt(ic['rows_per_run'])} INSERTs per shape and round, the shapes interleaved 100 at a time; median (range) of {ic['rounds']} rounds; any relay pays it)")
        minimal = next((x["us_per_insert_median"] for x in ic["shapes"] if x["shape"].startswith("minimal outbox")), None)
        for x in ic["shapes"]:
            m, rg = x["us_per_insert_median"], x["us_per_insert_range"]
            delta = f"{m - minimal:+.1f} µs against the minimal table" if m is not None and minimal else ""
            if x.get("us_over_minimal_paired_median") is not None:
                # Since the shapes run interleaved: the median of the cycle-by-cycle differences.
                delta = f"{x['us_over_minimal_paired_median']:+.1f} µs against the minimal table (median of paired cycles)"
            lines.append(f"   {x['shape']:<62}{fmt(m, 1):>8} µs ({fmt(rg[0], 1) if rg else '-'}–{fmt(rg[1], 1) if rg else '-'})  {delta}")
        lines.append("")
    if out.get("scale"):
        lines.append(f"3. Scale-out (drain of {fmt(out['scale'][0]['rows'])} rows, relays on one table)")
        lines.append(f"   {'relays':<8}{'seconds':>9}{'rows/s':>10}{'1st delete s':>14}{'relay CPU s':>13}{'pg CPU s':>10}"
                     f"{'machine':>9}{'others s':>10}  verification")
        for s in out["scale"]:
            lines.append(f"   {s['replicas']:<8}{fmt(s['seconds'], 2):>9}{fmt(s['rows_per_s'], 0):>10}"
                         f"{fmt(s['seconds_to_first_delete'], 2):>14}"
                         f"{fmt(s['relay_cpu_s'], 2):>13}{fmt(s['postgres_cpu_s'], 2):>10}"
                         f"{fmt(100 * s['machine_busy_share'], 0) + '%':>9}{fmt(s['others_cpu_s'], 2):>10}  {ver_s(s['verify'])}")
        lines.append("")
    if out.get("concurrent"):
        c0 = out["concurrent"][0]
        cfg_c = c0.get("config", {})
        lines.append(f"5. Concurrent writers ({cfg_c.get('writers', 8)} writers, target {out['config']['concurrent_rate']} rows/s, "
                     f"{out['config']['concurrent_seconds']} s, {cfg_c.get('keys', '-')} keys, seed {out['config']['concurrent_seed']}; "
                     "latency = COMMIT returned → Kafka CreateTime; c→a p50/p99 = COMMIT returned → the broker's acknowledgement,"
                     " outbox-relay only: its acknowledgement log)")
        lines.append("   CPU ms per row from the writers' start to the outbox empty: the relay (librdkafka's threads / the rest), "
                     "PostgreSQL (the relay's backends / the rest: writers, their domain rows, the cluster)")
        lines.append(f"   {'relay':<22}{'rows/s':>8}{'rows':>8}{'p50 ms':>9}{'p99 ms':>10}{'max ms':>10}{'>1 s':>7}"
                     f"{'c→a p50':>9}{'p99':>7}"
                     f"{'causal inv rows/pairs':>23}{'intra':>7}{'relay ms':>10}{'(rdk/rest)':>14}{'pg ms':>8}{'(relay bk/rest)':>17}"
                     f"{'machine':>9}  loss / rolled back delivered / dup / left")
        for c in out["concurrent"]:
            name = "outbox-relay" if c["relay"] == "outbox-relay" else "naive SKIP LOCKED"
            if c.get("error"):
                lines.append(f"   {name:<22}{c['error']}")
                continue
            L = c["latency_ms"]
            A = c.get("commit_to_ack_ms") or {}
            P = (c.get("cpu") or {}).get("per_row") or {}
            busy = (c.get("cpu") or {}).get("machine_busy_share")
            split = f"{fmt(P.get('postgres_relay_backends_cpu_ms'), 3)}/{fmt(P.get('postgres_other_cpu_ms'), 3)}"
            rsplit = f"{fmt(P.get('relay_librdkafka_cpu_ms'), 3)}/{fmt(P.get('relay_other_cpu_ms'), 3)}"
            name += f" r{c.get('round', 0) + 1}" if out["config"].get("concurrent_rounds", 1) > 1 else ""
            lines.append(f"   {name:<22}{fmt(c['rows_per_s'], 0):>8}{fmt(c['committed_rows']):>8}{fmt(L['p50'], 2):>9}"
                         f"{fmt(L['p99'], 1):>10}{fmt(L['max'], 1):>10}{fmt(L['over_1s']):>7}"
                         f"{fmt(A.get('p50'), 2):>9}{fmt(A.get('p99'), 1):>7}"
                         f"{fmt(c['causal_inversions']) + ' / ' + fmt(c['causal_inversion_pairs']):>23}"
                         f"{fmt(c['intra_txn_inversions']):>7}{fmt(P.get('relay_cpu_ms'), 3):>10}{rsplit:>14}{fmt(P.get('postgres_cpu_ms'), 3):>8}"
                         f"{split:>17}{(fmt(100 * busy, 0) + '%') if busy is not None else '-':>9}"
                         f"  {c['missing']} / {c['rolled_back_delivered']} / "
                         f"{c['duplicates']} / {c['left_in_outbox']}")
        lines.append("")
    lines += targets_table(out)
    return "\n".join(lines)


def main():
    global SHARDS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--relay", required=True)
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--tansu", required=True)
    ap.add_argument("--tansu-pid", type=int)
    ap.add_argument("--pg-bin", default="/usr/lib/postgresql/15/bin")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--source", default="", help="what the relay binary was built from (for the record)")
    ap.add_argument("--rows", type=int, default=200000, help="drain and ceiling backlog (default 200000)")
    ap.add_argument("--scale-rows", type=int, default=100000, help="scale-out backlog (default 100000)")
    ap.add_argument("--replicas", default="1,2,4", help="scale-out relay counts (default 1,2,4)")
    ap.add_argument("--steady-seconds", type=float, default=30)
    ap.add_argument("--naive-idle-ms", type=float, default=NAIVE_IDLE_MS,
                    help=f"the naive relay's sleep after an empty poll (default {NAIVE_IDLE_MS}, the issue's relay): shorter, for a naive relay "
                         "held to a shorter latency tail")
    ap.add_argument("--partitions", type=int, default=None,
                    help=f"partitions of every topic the bench creates (default {PARTITIONS}; the concurrent scenario's "
                         f"{CONCURRENT_PARTITIONS}): a diagnostic, "
                         "e.g. 1, where each claim is one ProduceRequest whatever its rows' keys")
    ap.add_argument("--rates", default="500,5000", help="steady-state insert rates, rows/s (default 500,5000)")
    ap.add_argument("--steady-relays", default="outbox,batched,naive",
                    help="relays run at each steady rate, in this order (reversed in every other round): outbox (outbox-relay), batched "
                         "(outbox-relay with --busy-poll-ms of --batched-busy-poll-ms) and/or naive "
                         "(scripts/lib/naive_relay.py) (default outbox,batched,naive)")
    ap.add_argument("--batched-args", default=None,
                    help="arguments of the \"batched\" steady relay instead of --busy-poll-ms (an A/B of any "
                         "outbox-relay setting, e.g. \"--latency-target-ms 0\")")
    ap.add_argument("--batched-binary", default=None,
                    help="run the \"batched\" steady relay from this binary (another build, e.g. a copy kept "
                         "from an earlier commit): an A/B of two builds in the same rounds; with it the batched "
                         "relay runs with --batched-args only (default none)")
    ap.add_argument("--batched-busy-poll-ms", type=int, default=20,
                    help="--busy-poll-ms of the \"batched\" steady relay (default 20: the naive relay's poll)")
    ap.add_argument("--naive-keep-notify-trigger", action="store_true",
                    help="steady: leave outbox-relay's NOTIFY insert trigger on the naive relay's table (by default "
                         "it is dropped there: the naive relay does not LISTEN)")
    ap.add_argument("--steady-scale-rate", type=int, default=1000,
                    help="steady_scale scenario: insert rate, rows/s (default 1000)")
    ap.add_argument("--steady-scale-replicas", default="1,3",
                    help="steady_scale scenario: relay process counts, each run with every relay in --steady-relays "
                         "(default 1,3)")
    ap.add_argument("--perf-dir", help="record `perf record -a -g` during the steady load at --perf-rates into this "
                                       "directory and summarize the top symbols per process group in the JSON")
    ap.add_argument("--perf-rates", default="", help="steady rates to profile with --perf-dir (e.g. 500)")
    ap.add_argument("--perf-freq", type=int, default=999, help="perf sampling frequency, Hz (default 999)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 20000 rows, 10000 scale rows, 5 s steady")
    ap.add_argument("--scenarios", default="drain,ceiling,steady,insert_only,insert_cost,scale,concurrent",
                    help="any of drain,ceiling,steady,insert_only,insert_cost,scale,concurrent,steady_scale "
                         "(default drain,ceiling,steady,insert_only,insert_cost,scale,concurrent)")
    ap.add_argument("--insert-cost-rows", type=int, default=4000,
                    help="insert_cost: single-row INSERT transactions per table shape and round (default 4000)")
    ap.add_argument("--insert-cost-rounds", type=int, default=3,
                    help="insert_cost: rounds over the table shapes, in rotating order (default 3)")
    ap.add_argument("--steady-pairing", choices=["apart", "together", "auto"], default="apart",
                    help="steady: run a round's relays one after another at each rate, each in a window of its own "
                         "(apart, the default), or all at once, each on its own table with its own inserting "
                         "connections at the rate (together: the machine's phases fall on every relay alike, on a "
                         "machine twice as loaded; transactions, WAL and Tansu's CPU are then not per relay); auto: "
                         "together at rates up to --together-max-rate, apart above")
    ap.add_argument("--together-max-rate", type=int, default=500,
                    help="--steady-pairing auto: the highest rate run together (default 500: at 2000 rows/s each, two "
                         "relays and their inserters saturate a 2-core machine)")
    ap.add_argument("--steady-rounds", type=int, default=1,
                    help="steady and steady_scale: run every rate (and replica count) this many times, alternating "
                         "the relays; the targets table shows each ratio's median and range over the rounds (default 1)")
    ap.add_argument("--pairs", type=int, default=3,
                    help="drain + ceiling pairs when both run (default 3; the pair with the median ratio is reported)")
    ap.add_argument("--no-latency-trigger", dest="latency_trigger", action="store_false",
                    help="steady state without the bench's AFTER DELETE trigger (no latency figures; "
                         "shows what the trigger itself costs)")
    ap.add_argument("--dump-latencies", action="store_true",
                    help="steady: write each row's COMMIT time, Kafka CreateTime and (outbox-relay) acknowledgement time to <run dir>/<table>-latency.json "
                         "(keep the run dir with OUTBOX_KEEP_RUN_DIR=1)")
    ap.add_argument("--concurrent-seconds", type=float, default=30, help="concurrent scenario: write phase (default 30)")
    ap.add_argument("--concurrent-rate", type=float, default=1000, help="concurrent scenario: rows/s over 8 writers (default 1000)")
    ap.add_argument("--concurrent-rounds", type=int, default=1,
                    help="concurrent scenario: runs of each relay, alternating (reverse order every other round; default 1)")
    ap.add_argument("--concurrent-seed", type=int, help="concurrent scenario: workload seed (default random; both runs use it)")
    ap.add_argument("--insert-connections", type=int, default=16,
                    help="steady and insert_only: connections the paced INSERTs are spread over, by key (default 16: "
                         "with synchronous_commit=on one connection commits at most one row per WAL flush)")
    ap.add_argument("--arrivals", choices=["poisson", "uniform", "bursts"], default="poisson",
                    help="steady and insert_only: when the paced INSERTs are sent — at random (exponential gaps, "
                         "seeded by the rate; the default, what independent requests look like), evenly spaced "
                         "(every result before the switch from uniform to poisson in docs/BENCHMARKS.md), or in "
                         "bursts of --burst-rows rows sent at once, evenly spaced at the same mean rate")
    ap.add_argument("--burst-rows", type=int, default=20, help="--arrivals bursts: rows per burst (default 20)")
    ap.add_argument("--idle-seconds", type=float, default=3, help="relay idle-CPU probe before each steady run")
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--shards", type=int, default=SHARDS, help=f"shards of each table (migrate --shards; default {SHARDS})")
    ap.add_argument("--value-bytes", type=int, default=256)
    ap.add_argument("--timeout", type=float, default=900, help="per drain, seconds")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--max-in-flight-rows", type=int)
    ap.add_argument("--kafka-property", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--log-level", default="warning")
    ap.add_argument("--json-out", help="also write the JSON to this file")
    a = ap.parse_args()
    SHARDS = a.shards
    if a.quick:
        a.rows = min(a.rows, 20000)
        a.scale_rows = min(a.scale_rows, 10000)
        a.steady_seconds = min(a.steady_seconds, 5)
        a.concurrent_seconds = min(a.concurrent_seconds, 5)
        a.idle_seconds = min(a.idle_seconds, 1)
        a.pairs = 1
    scenarios = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    steady_relays = [x.strip() for x in a.steady_relays.split(",") if x.strip()]
    if not steady_relays or any(x not in ("outbox", "batched", "naive") for x in steady_relays):
        ap.error("--steady-relays takes outbox, batched and/or naive")
    if a.steady_rounds < 1:
        ap.error("--steady-rounds must be at least 1")
    if a.batched_busy_poll_ms <= 0:
        ap.error("--batched-busy-poll-ms must be positive")

    bench = Bench(a)
    stop = {"sig": None}

    def on_signal(sig, _frame):
        stop["sig"] = sig
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    out = {"config": {
        "cpus": os.cpu_count(), "rows": a.rows, "scale_rows": a.scale_rows, "steady_seconds": a.steady_seconds,
        "steady_rounds": a.steady_rounds, "steady_pairing": a.steady_pairing, "together_max_rate": a.together_max_rate, "batched_busy_poll_ms": a.batched_busy_poll_ms,
        "rates": [int(x) for x in a.rates.split(",")], "keys": a.keys, "value_bytes": a.value_bytes,
        "naive_idle_ms": a.naive_idle_ms, "partitions": a.partitions or PARTITIONS, "concurrent_partitions": a.partitions or CONCURRENT_PARTITIONS, "shards": SHARDS, "relay_source": a.source, "relay_args": bench.relay_args(),
        "postgres": bench.admin.scalar("SHOW server_version"),
        "postgres_settings": bench.postgres_settings(),
        "insert_connections": a.insert_connections, "arrivals": a.arrivals,
        "burst_rows": a.burst_rows if a.arrivals == "bursts" else None,
        "steady_relays": steady_relays,
        "quick": a.quick, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }}
    if "concurrent" in scenarios:
        if a.concurrent_seed is None:
            a.concurrent_seed = random.SystemRandom().randrange(1, 2**31)
        out["config"].update({"concurrent_seconds": a.concurrent_seconds, "concurrent_rate": a.concurrent_rate,
                              "concurrent_seed": a.concurrent_seed, "concurrent_rounds": a.concurrent_rounds})
    try:
        if "drain" in scenarios and "ceiling" in scenarios:
            # This machine's speed changes by up to half within seconds (a shared VM): one drain and
            # one ceiling can land in different phases. Run them as --pairs back-to-back pairs and
            # report the pair with the median ratio (all its figures from that one pair) and the
            # median ratio; every pair's figures stay in the JSON.
            pairs = []
            for i in range(a.pairs):
                if a.pairs > 1:
                    log(f"drain/ceiling pair {i + 1} of {a.pairs}")
                d, c = bench.drain(), bench.ceiling()
                pair = {"drain": d, "ceiling": c, "drain_over_ceiling": round(d["rows_per_s"] / c["rows_per_s"], 3)}
                if d["rows_per_s_after_first_delete"]:
                    pair["drain_after_first_delete_over_ceiling"] = round(d["rows_per_s_after_first_delete"] / c["rows_per_s"], 3)
                pairs.append(pair)
            median = sorted(pairs, key=lambda p: p["drain_over_ceiling"])[(len(pairs) - 1) // 2]
            out.update(median)
            if len(pairs) > 1:
                out["pairs"] = pairs
                out["drain_over_ceiling_pairs"] = [p["drain_over_ceiling"] for p in pairs]
                after = sorted(p.get("drain_after_first_delete_over_ceiling") or 0 for p in pairs)
                out["drain_after_first_delete_over_ceiling"] = after[(len(after) - 1) // 2]
        elif "drain" in scenarios:
            out["drain"] = bench.drain()
        elif "ceiling" in scenarios:
            out["ceiling"] = bench.ceiling()
        if "steady" in scenarios:
            # The relays alternate per rate, so a change in the machine's speed hits both alike.
            # "steady" keeps outbox-relay's runs (checked: loss, duplicates, order); the naive
            # relay's are a comparison only ("steady_naive").
            # With --steady-rounds, every rate runs again per round (fresh tables), so each ratio
            # to the naive relay can be taken within a round and its spread shown. Every other
            # round runs the relays in reverse order: the machine's speed here drifts by up to 2 ×
            # within minutes, and a fixed order put outbox-relay first in every round.
            # --steady-pairing together runs a round's relays at one rate in one window instead,
            # each on its own table: the machine's phases then fall on all of them alike.
            for rnd in range(a.steady_rounds):
                for r in out["config"]["rates"]:
                    order = round_order(steady_relays, rnd)
                    together = a.steady_pairing == "together" or (a.steady_pairing == "auto" and r <= a.together_max_rate)
                    groups = [order] if together else [[relay] for relay in order]
                    for group in groups:
                        log(f"steady: {' + '.join(group)}{' together' if len(group) > 1 else ''}, {r} rows/s for {a.steady_seconds} s"
                            + (f" (round {rnd + 1} of {a.steady_rounds})" if a.steady_rounds > 1 else ""))
                        for relay, run in zip(group, bench.steady_runs(r, [(relay, 1) for relay in group])):
                            key = {"outbox": "steady", "batched": "steady_batched"}.get(relay, "steady_naive")
                            run["round"] = rnd
                            out.setdefault(key, []).append(run)
        if "steady_scale" in scenarios:
            out["config"].update({"steady_scale_rate": a.steady_scale_rate,
                                  "steady_scale_replicas": [int(k) for k in a.steady_scale_replicas.split(",")]})
            out["steady_scale"] = []
            for rnd in range(a.steady_rounds):
                for k in out["config"]["steady_scale_replicas"]:
                    for relay in round_order(steady_relays, rnd):
                        log(f"steady_scale: {k} x {relay}, {a.steady_scale_rate} rows/s for {a.steady_seconds} s"
                            + (f" (round {rnd + 1} of {a.steady_rounds})" if a.steady_rounds > 1 else ""))
                        run = bench.steady(a.steady_scale_rate, relay, k)
                        run["round"] = rnd
                        out["steady_scale"].append(run)
        if "insert_only" in scenarios:
            r = max(out["config"]["rates"])
            log(f"insert-only: {r} rows/s for {a.steady_seconds} s, no relay")
            out["insert_only"] = bench.insert_only(r)
        if "insert_cost" in scenarios:
            log(f"insert cost: {a.insert_cost_rows} INSERTs per table shape, {a.insert_cost_rounds} rounds")
            out["insert_cost"] = bench.insert_cost()
        if "scale" in scenarios:
            out["scale"] = [bench.scale(int(k)) for k in a.replicas.split(",")]
        if "concurrent" in scenarios:
            # Rounds as in the steady state: the relays alternate, in reverse order every other round.
            out["concurrent"] = []
            for rnd in range(a.concurrent_rounds):
                for relay in round_order(["outbox", "naive"], rnd):
                    run = bench.concurrent(relay == "naive", a.concurrent_seed)
                    run["round"] = rnd
                    out["concurrent"].append(run)
    except KeyboardInterrupt:
        log("interrupted")
        bench.cleanup()
        return 130
    finally:
        bench.cleanup()
    print(report(out))
    line = json.dumps(out, separators=(",", ":"), default=list)
    print("BENCH_JSON " + line, flush=True)
    if a.json_out:
        with open(a.json_out, "w") as f:
            f.write(line + "\n")
    ok = True
    # The naive relay's runs are a comparison only (several instances break per-key order).
    steady_scale_own = [s for s in out.get("steady_scale", []) if s["relay"] == "outbox-relay"]
    for r in [out.get("drain")] + out.get("steady", []) + out.get("steady_batched", []) + out.get("scale", []) + steady_scale_own:
        if r and (r["verify"]["lost"] or r["verify"]["duplicates"] or r["verify"]["key_order_violations"]):
            ok = False
    for c in out.get("concurrent", []):  # the relay's runs; the naive relay's are a comparison only
        if c["relay"] == "outbox-relay" and (c.get("error") or not c.get("ok")):
            ok = False
    if not ok:
        log("VERIFICATION FAILED: lost, duplicate or out-of-order messages (see above)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
