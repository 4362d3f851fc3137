#!/usr/bin/env python3
"""Database and clock faults staged for real against outbox-relay (issue 15, "real-world faults").

Every case runs against its own PostgreSQL cluster(s) (initdb as user postgres, like
scripts/lib/services.sh, but durable: fsync and synchronous_commit on) and a Tansu broker (memory
storage) of this run, starts outbox-relay replicas as subprocesses (lease 6 s, message.timeout.ms
2 s, statement timeout 1 s, in-flight window 2000 rows), drives the concurrent-writer workload of
concurrency.py (imported, not copied; 4 writers, 300 committed rows/s) and checks every committed
row against Kafka, read from offset 0 after the relays stopped, with concurrency.analyze. Rows are
identified by their *value* (unique per row), not by `outbox-id`: after an asynchronous failover
PostgreSQL hands out ids again (the sequence's WAL is lost with the old primary too), so ids are
checked on their own.

Cases (--case NAME, repeatable; default all):
  failover-fast       primary stopped with `pg_ctl -m fast` mid-drain (20 000-row backlog plus
                      writes), streaming standby (pg_basebackup -R) promoted; relay and writers on
                      postgresql://…@P1,P2/…?target_session_attrs=read-write
  failover-immediate  `pg_ctl -m immediate` during writes after 1.5 s of staged replication lag
                      (the primary's walsender SIGSTOPped), asynchronous standby promoted. Rows a
                      writer saw committed that the new primary never received are "lost by the
                      database", proven from the old primary's WAL (pg_waldump past the new
                      timeline's switch point, then the old primary started alone to read each
                      missing row's xmin); they are reported apart and are not relay loss
  failover-sync       the same with synchronous_standby_names = '*': the database loses nothing a
                      writer saw committed
  standby-only        the relay pointed at a hot standby only (plain URL, and with
                      target_session_attrs=read-write): what it says and does; then at the primary
  clock-forward       one of two replicas' wall clock stepped +10 min mid-run, then the broker
  clock-backward      paused 3 s (past message.timeout.ms) to run retries, back-off and producer
                      re-creation under the stepped clock; -10 min for clock-backward
  clock-skew          two replicas at -10 min and +10 min from the database's clock from the start;
                      the -10 min one SIGKILLed midway: the other must take its shards after the
                      lease (database clock), not at once and not after 10 minutes
  disk-full-wal       pg_wal on a 64 MB tmpfs, held by a replication slot, fills under writes
                      (PostgreSQL PANICs and cannot finish crash recovery); then remounted at 512 MB
                      and PostgreSQL started again
  disk-full-data      the database (outbox, lease tables, catalog) in a tablespace on a 64 MB tmpfs
                      fills; full for 8 s (longer than a lease); then remounted at 512 MB

Clock steps: a relay's CLOCK_REALTIME is shifted by a small LD_PRELOAD shim (CLOCK_SHIM_C, compiled
with cc into the run directory) that reads the offset from a file the harness rewrites, leaves
CLOCK_MONOTONIC alone and translates absolute CLOCK_REALTIME waits, as a step of the host clock
would. --clock-tool libfaketime runs the same cases with libfaketime instead (see clock_env for why
that is not the default: it also moves the relay's monotonic timers).

Appends one JSON line per case to --reliability-out (the keys concurrency.py writes; rendered into
docs/RELIABILITY.md by render_reliability.py) and prints each case's line and details. Exit status:
0 all bounds held (or violations without --check), 1 a bound was violated (with --check), 2 harness
error. Must run as root (initdb runs as postgres; mount). Everything started is stopped and every
tmpfs unmounted on exit, also on failure and on SIGTERM/SIGINT.
"""
import argparse
import datetime
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
import urllib.error
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # no __pycache__ in scripts/lib
import concurrency as cc  # noqa: E402  (the workload, Kafka reader and checker)

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402
from psycopg.types.json import Jsonb  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(HERE))
PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")
TANSU = os.path.join(ROOT, ".tools", "bin", "tansu")
LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"
WINDOW = 2000          # --max-in-flight-rows of every relay here
LEASE_MS = 6000
# --shard-spread even: the cases of two replicas stage a fault on one of them (its clock, say)
# while both hold shards; with the default load spread a quiet pair has one holder and the other
# stands by (concurrency.py runs that default under restarts and freezes).
RELAY_ARGS = ["--http-port", "0", "--http-host", "127.0.0.1", "--lease-duration-ms", str(LEASE_MS),
              "--message-timeout-ms", "2000", "--statement-timeout-ms", "1000", "--poll-interval-ms", "200",
              "--max-in-flight-rows", str(WINDOW), "--shard-spread", "even"]
CASES = ["failover-fast", "failover-immediate", "failover-sync", "standby-only",
         "clock-forward", "clock-backward", "clock-skew", "disk-full-wal", "disk-full-data"]


def log(msg):
    print(f"faults-db: {msg}", flush=True)


class HarnessError(Exception):
    pass


# --------------------------------------------------------------------------------------------
# Clean-up: everything started registers its undo; run in reverse on exit, failure or signal
# --------------------------------------------------------------------------------------------

class Cleanup:
    def __init__(self):
        self.stack = []
        self.lock = threading.Lock()

    def push(self, desc, fn):
        with self.lock:
            self.stack.append((desc, fn))
        return fn

    def pop(self, fn):
        """Runs one registered undo now (and forgets it)."""
        with self.lock:
            for i in range(len(self.stack) - 1, -1, -1):
                if self.stack[i][1] is fn:
                    desc, _ = self.stack.pop(i)
                    break
            else:
                return
        self._run(desc, fn)

    def run_all(self):
        while True:
            with self.lock:
                if not self.stack:
                    return
                desc, fn = self.stack.pop()
            self._run(desc, fn)

    @staticmethod
    def _run(desc, fn):
        try:
            fn()
        except Exception as e:  # clean-up goes on
            log(f"clean-up of {desc} failed: {e!r}")


CLEANUP = Cleanup()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_until(desc, cond, timeout, interval=0.1):
    """Polls cond() until it returns something truthy; returns it. Raises HarnessError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {timeout} s waiting for {desc}")
        time.sleep(interval)


def as_pg(cmd, **kw):
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--"] + cmd
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def chown_pg(path):
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


def connect(url, **kw):
    return psycopg.connect(url, autocommit=True, application_name="faults-db-admin", connect_timeout=3, **kw)


# --------------------------------------------------------------------------------------------
# PostgreSQL clusters
# --------------------------------------------------------------------------------------------

class Cluster:
    def __init__(self, base, name, log_dir):
        self.name = name
        self.data = os.path.join(base, name)
        self.port = free_port()
        self.log = os.path.join(log_dir, f"postgres-{name}.log")
        self.started = False
        self._undo = None

    @property
    def url(self):
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def initdb(self, conf="", waldir=None):
        cmd = [f"{PG_BIN}/initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        if waldir:
            cmd += ["--waldir", waldir]
        as_pg(cmd)
        self.conf(f"""
listen_addresses = '127.0.0.1'
port = {self.port}
unix_socket_directories = '{os.path.dirname(self.data)}'
max_connections = 100
shared_buffers = 64MB
wal_level = replica
max_wal_senders = 5
fsync = on
synchronous_commit = on
{conf}
""")
        with open(os.path.join(self.data, "pg_hba.conf"), "a") as f:
            f.write("host replication all 127.0.0.1/32 trust\n")

    def conf(self, text):
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(text)

    def start(self):
        as_pg([f"{PG_BIN}/pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "start"])
        self.started = True
        if self._undo is None:
            self._undo = CLEANUP.push(f"cluster {self.name}", self._cleanup)

    def close(self):
        """Stops the cluster now (immediate) and forgets its clean-up."""
        if self._undo is not None:
            CLEANUP.pop(self._undo)
            self._undo = None

    def _cleanup(self):
        subprocess.run((["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else [])
                       + [f"{PG_BIN}/pg_ctl", "-D", self.data, "-m", "immediate", "-w", "-t", "30", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self, mode="fast"):
        as_pg([f"{PG_BIN}/pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop"])

    def running(self):
        r = subprocess.run([f"{PG_BIN}/pg_ctl", "-D", self.data, "status"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, user="postgres" if os.geteuid() == 0 else None)
        return r.returncode == 0

    def promote(self):
        as_pg([f"{PG_BIN}/pg_ctl", "-D", self.data, "-w", "-t", "60", "promote"])

    def standby_of(self, primary):
        """pg_basebackup -R of a running primary into this cluster's directory, then started."""
        as_pg([f"{PG_BIN}/pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
               "-D", self.data, "-R", "-X", "stream", "-c", "fast"])
        self.conf(f"\nport = {self.port}\nhot_standby = on\n")
        self.start()

    def pm_status(self):
        """The postmaster's status line in postmaster.pid (starting, ready, standby, stopping), or None."""
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as f:
                lines = f.read().splitlines()
            return lines[7].strip() if len(lines) > 7 else None
        except OSError:
            return None


def make_dir(base, name):
    d = os.path.join(base, name)
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o755)
    chown_pg(d)
    return d


# --------------------------------------------------------------------------------------------
# Tansu
# --------------------------------------------------------------------------------------------

class Broker:
    def __init__(self, log_dir):
        self.port = free_port()
        self.brokers = f"127.0.0.1:{self.port}"
        logf = open(os.path.join(log_dir, "tansu.log"), "ab")
        self.proc = subprocess.Popen([TANSU, "broker", "--listener-url", f"tcp://{self.brokers}",
                                      "--advertised-listener-url", f"tcp://{self.brokers}",
                                      "--storage-engine", "memory://tansu/"], stdout=logf, stderr=subprocess.STDOUT)
        logf.close()
        CLEANUP.push("tansu", self.stop)

        def up():
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return True
            except OSError:
                if self.proc.poll() is not None:
                    raise HarnessError(f"tansu exited with {self.proc.returncode}")
                return False
        wait_until("tansu to listen", up, 30)

    def state(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)
        wait_until("tansu stopped", lambda: self.state() == "T", 5, interval=0.01)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --------------------------------------------------------------------------------------------
# Relays
# --------------------------------------------------------------------------------------------

class Relay(cc.Replica):
    """concurrency.Replica plus an environment (libfaketime), the HTTP port and log searches.
    The environment goes in front of the command through env(1): the relay is exec'd in place, so
    its pid and signals are the relay's own."""

    def __init__(self, binary, url, brokers, table, name, log_dir, extra=(), env=None):
        cmd = [binary, "run", "--database-url", url, "--brokers", brokers, "--table", table,
               "--replica-name", name] + RELAY_ARGS + list(extra)
        if env:
            cmd = ["env"] + [f"{k}={v}" for k, v in env.items()] + cmd
        super().__init__(cmd, name, log_dir)
        self.undo = None

    def start(self):
        super().start()
        if self.undo is None:
            self.undo = CLEANUP.push(f"relay {self.name}", self._kill)

    def _kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        # libfaketime's shared memory of a killed process (harmless, but tidy).
        for f in os.listdir("/dev/shm"):
            if self.proc is not None and re.fullmatch(rf"(faketime_shm_|sem\.faketime_sem_){self.proc.pid}", f):
                try:
                    os.unlink(os.path.join("/dev/shm", f))
                except OSError:
                    pass

    def text(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def http_port(self):
        m = re.search(r"http\.port=(\d+) \[RelayHTTP\] HTTP endpoints listening", self.text())
        return int(m.group(1)) if m else None

    def readyz(self):
        """(status, body) of GET /readyz, or (None, reason)."""
        port = self.http_port()
        if not port:
            return None, "no HTTP port logged yet"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")
        except OSError as e:
            return None, repr(e)

    def excerpt(self, pattern, n=3, width=400):
        lines = [l.strip() for l in self.text().splitlines() if re.search(pattern, l)]
        return [l[:width] for l in lines[:n]]

    def lines_after(self, offset, pattern):
        """Log lines from byte offset on that match pattern."""
        return [l.strip() for l in self.text()[offset:].splitlines() if re.search(pattern, l)]


def relay_summary(relays):
    """Exit codes of the relays stopped with SIGTERM; a relay that crashed or did not exit 0 is a failure."""
    failures = []
    for r in relays:
        if r.proc is None:
            continue
        crashed, code = r.stop(signal.SIGTERM)
        if crashed:
            failures.append(f"{r.name} gen {r.generation} had exited ({code}) before the end; log ends: {r.tail(5)[-600:]}")
        elif code != 0:
            failures.append(f"{r.name} gen {r.generation} exited {code} on SIGTERM")
    return failures


# --------------------------------------------------------------------------------------------
# Writers and tables
# --------------------------------------------------------------------------------------------

class Writers(cc.Workload):
    """concurrency.Workload whose sessions reconnect (through a failover, a crash, a full disk):
    a connection attempt that fails is retried every 100 ms for up to 90 s. Runs in the background
    until end()."""

    def __init__(self, url, table, topics, seed, writers=4, rate=300.0, keys=20):
        a = argparse.Namespace(database_url=url, writers=writers, rate=rate, keys=keys, think_ms=10.0)
        super().__init__(a, table, topics, seed)
        self.failed_connects = 0
        self.thread = None

    def connect(self):
        deadline = time.monotonic() + 90
        while True:
            try:
                return psycopg.connect(self.a.database_url, autocommit=True, application_name="concurrency-writer",
                                       connect_timeout=2)
            except psycopg.OperationalError:
                with self.lock:
                    self.failed_connects += 1
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def begin(self):
        self.thread = threading.Thread(target=self.run, args=(3600,), daemon=True)
        self.thread.start()

    def end(self):
        self.stop.set()
        if self.thread:
            self.thread.join(120)
            if self.thread.is_alive():
                raise HarnessError("writers did not stop within 120 s")

    def committed_rows(self, since=0.0):
        with self.lock:
            return sum(len(t.kept) for t in self.txns
                       if t.outcome == "committed" and t.writer >= 0 and t.commit_returned >= since)

    def first_commit_after(self, t0):
        with self.lock:
            ts = [t.commit_returned for t in self.txns if t.outcome == "committed" and t.commit_returned > t0]
        return min(ts) if ts else None

    def error_states(self):
        with self.lock:
            out = {}
            for t in self.txns:
                if t.outcome in ("error", "unknown"):
                    k = f"{t.outcome}:{t.sqlstate or 'no SQLSTATE'}"
                    out[k] = out.get(k, 0) + 1
            return out


def migrate(relay, url, table):
    subprocess.run([relay, "migrate", "--database-url", url, "--table", table], check=True, stdout=subprocess.DEVNULL)
    with connect(url) as c:
        c.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0)").format(
            cc.table_ident(table + "_domain")))
        c.execute(sql.SQL("INSERT INTO {} (id) SELECT generate_series(1, %s)").format(
            cc.table_ident(table + "_domain")), (2 * cc.DOMAIN_ROWS,))


def insert_rows(url, table, topics, label, n, keys=20):
    """One transaction of n rows over the keys (the workload's key → topic mapping), recorded as a
    concurrency.Txn (writer -1: not in the latency figures). Returns (txn, {key index: shard})."""
    t = cc.Txn(label, -1)
    with connect(url) as c:
        with c.transaction():
            t.first_insert_began = time.time()
            rows = c.execute(sql.SQL("""
                INSERT INTO {} (topic, key, value, headers)
                SELECT (%s::text[])[(i %% %s) %% %s + 1], convert_to('k' || (i %% %s), 'UTF8'),
                       convert_to(%s || '/' || i || '/' || md5(random()::text), 'UTF8'), %s
                FROM generate_series(0, %s - 1) i RETURNING id, key, value, {}(key, id)""").format(
                cc.table_ident(table), cc.table_ident(table + "_shard")),
                (topics, keys, len(topics), keys, label, Jsonb({"txn": label}), n)).fetchall()
        t.commit_returned = time.time()
    t.outcome = "committed"
    shards = {}
    for rid, key, value, shard in rows:
        k = int(bytes(key)[1:])
        t.kept.append((rid, k, bytes(value)))
        shards[k] = shard
    t.kept.sort()
    return t, shards


def count_rows(url, table, older_than=None):
    with connect(url) as c:
        if older_than is None:
            return c.execute(sql.SQL("SELECT count(*) FROM {}").format(cc.table_ident(table))).fetchone()[0]
        return c.execute(sql.SQL("SELECT count(*) FROM {} WHERE created_at < to_timestamp(%s)").format(
            cc.table_ident(table)), (older_than,)).fetchone()[0]


def safe(fn, default=None):
    try:
        return fn()
    except (psycopg.Error, OSError):
        return default


def wait_drained(url, table, timeout, older_than=None, relays=()):
    """Waits until the outbox (or its rows older than a time) is empty; returns the seconds taken.
    Connection failures count as 'not yet' (the database may be coming back)."""
    t0 = time.monotonic()

    def drained():
        for r in relays:
            if r.proc is not None and r.proc.poll() is not None:
                raise HarnessError(f"relay {r.name} exited with {r.proc.returncode} while draining:\n{r.tail(10)}")
        return safe(lambda: count_rows(url, table, older_than), -1) == 0
    wait_until(f"{table} drained" + (" of the rows older than the fault" if older_than else ""), drained, timeout)
    return time.monotonic() - t0


def final_state(url, table):
    """(values still in the outbox, values dead-lettered)."""
    with connect(url) as c:
        pending = {bytes(r[0]) for r in c.execute(sql.SQL("SELECT value FROM {}").format(cc.table_ident(table)))}
        dead = {bytes(r[0]) for r in c.execute(sql.SQL("SELECT value FROM {}").format(
            cc.table_ident(table + "_dead_letters")))}
    return pending, dead


def leases(url, table):
    with connect(url) as c:
        return {s: (o, e) for s, o, e in c.execute(sql.SQL("SELECT shard, owner, epoch FROM {}").format(
            cc.table_ident(table + "_leases")))}


class BacklogSampler:
    """Samples the age of the oldest outbox row (database clock) every 200 ms on its own connection."""

    def __init__(self, url, table):
        self.url, self.table = url, table
        self.samples = []  # (time.time(), age seconds or None)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        CLEANUP.push("backlog sampler", self.end)

    def _run(self):
        conn = None
        q = sql.SQL("SELECT extract(epoch FROM clock_timestamp() - min(created_at))::float8 FROM {}").format(
            cc.table_ident(self.table))
        while not self.stop.wait(0.2):
            try:
                if conn is None or conn.broken:
                    conn = connect(self.url)
                self.samples.append((time.time(), conn.execute(q).fetchone()[0] or 0.0))
            except psycopg.Error:
                self.samples.append((time.time(), None))
                conn = None
        if conn is not None:
            conn.close()

    def end(self):
        self.stop.set()
        self.thread.join(5)

    def max_age(self, t0, t1):
        ages = [a for t, a in self.samples if t0 <= t <= t1 and a is not None]
        return max(ages) if ages else None


# --------------------------------------------------------------------------------------------
# The check: concurrency.analyze, with rows identified by value
# --------------------------------------------------------------------------------------------

def check_rows(txns, msgs, pending, dead, db_lost=frozenset()):
    """Every committed row against Kafka, by value. concurrency.analyze does the work (causal and
    intra-transaction order, duplicates, payload) on ids renumbered by value (in the order of the
    ids the writers saw), so an outbox-id the database handed out twice does not merge two rows;
    the outbox-ids are checked on their own (reused_ids)."""
    committed, uncertain = {}, set()
    for t in txns:
        if t.outcome == "committed":
            for rid, k, v in t.kept:
                committed[v] = (t, k, rid)
        elif t.outcome == "unknown":
            uncertain.update(v for _rid, _k, v in t.kept)
    syn = {v: i + 1 for i, v in enumerate(sorted(committed, key=lambda v: (committed[v][2], committed[v][0].label)))}
    for v in sorted(uncertain - set(committed)):
        syn[v] = len(syn) + 1
    remapped = []
    for t in txns:
        n = cc.Txn(t.label, t.writer)
        for attr in cc.Txn.__slots__:
            setattr(n, attr, getattr(t, attr, None))
        n.kept = [(syn[v], k, v) for _rid, k, v in t.kept] if t.outcome in ("committed", "unknown") else []
        n.rolled = []
        remapped.append(n)
    by_id, foreign, wrong_id, msgs2 = {}, [], 0, []
    for m in msgs:
        by_id.setdefault(m["id"], set()).add(m["value"])
        s = syn.get(m["value"])
        if s is None:
            foreign.append(m["id"])
            continue
        if m["value"] in committed and m["id"] != committed[m["value"]][2]:
            wrong_id += 1
        msgs2.append(dict(m, id=s))
    res = cc.analyze(remapped, msgs2, [syn[v] for v in pending if v in syn], restarted=True)
    delivered = {m["value"] for m in msgs2}
    lost = set(committed) - delivered - pending - dead - set(db_lost)
    res.update({
        "inserted": len(committed), "lost": len(lost), "lost_ids": sorted(committed[v][2] for v in lost)[:10],
        "pending": len(pending & set(committed)), "dead": len(dead & set(committed)),
        "delivered_rolled_back_or_foreign": len(foreign), "foreign_ids": sorted(i for i in foreign if i is not None)[:10],
        "reused_ids": sum(1 for vals in by_id.values() if len(vals) > 1), "wrong_id": wrong_id,
        "uncertain": len(uncertain),
    })
    return res


def order_violations(res):
    """The checks every case asserts besides loss and duplicates."""
    v = {}
    for k in ("causal_inversions", "intra_txn_inversions", "stale_redeliveries", "payload_mismatches",
              "keys_on_several_partitions", "delivered_rolled_back_or_foreign", "wrong_id"):
        if res.get(k):
            v[k] = res[k]
    return v


def window_violations(res, failures):
    """The bound of the cases whose duplicates are limited by one in-flight window: order checks,
    nothing lost or left pending, duplicates <= WINDOW, no relay failure."""
    viol = order_violations(res)
    for k in ("lost", "pending"):
        if res[k]:
            viol[k] = res[k]
    if res["duplicates"] > WINDOW:
        viol["duplicates"] = res["duplicates"]
    if failures:
        viol["relay_failures"] = failures
    return viol


def producer_switches(msgs, shard_of_key, epochs):
    """Exclusivity seen from Kafka: per key, how often the relaying replica (relay header) changes
    along the partition, against the lease acquisitions of the key's shard (its epoch; every
    acquisition bumps it, the first is not a change). Returns the keys with more changes."""
    seq = {}
    for m in sorted(msgs, key=lambda m: (m["topic"], m["partition"], m["offset"])):
        r = (m.get("headers") or {}).get("relay")
        if r is not None and m["key"] is not None:
            seq.setdefault(m["key"], []).append(r)
    bad = {}
    for key, names in seq.items():
        changes = sum(1 for a, b in zip(names, names[1:]) if a != b)
        shard = shard_of_key.get(int(key[1:]))
        allowed = max(0, epochs.get(shard, 0) - 1)
        if changes > allowed:
            bad[key.decode()] = {"changes": changes, "acquisitions": epochs.get(shard, 0)}
    return bad


def parse_rfc3339(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def created_at_mismatches(msgs, txns, header="created-at"):
    """The created-at header must be the row's created_at (clock_timestamp() at the INSERT, database
    clock), i.e. between the moment the writer began inserting and the moment COMMIT returned (same
    host clock), not the relay's clock. Returns (mismatches, examples)."""
    when = {}
    for t in txns:
        if t.outcome == "committed":
            for _rid, _k, v in t.kept:
                when[v] = (t.first_insert_began, t.commit_returned)
    bad, examples = 0, []
    for m in msgs:
        h = (m.get("headers") or {}).get(header)
        if m["value"] not in when:
            continue
        w0, w1 = when[m["value"]]
        ts = parse_rfc3339(h.decode()) if h is not None else None
        if ts is None or not (w0 - 0.5 <= ts <= w1 + 0.5):
            bad += 1
            if len(examples) < 3:
                examples.append({"id": m["id"], "header": h.decode() if h else None,
                                 "insert_began": round(w0, 3), "commit_returned": round(w1, 3)})
    return bad, examples


def create_time_offsets(msgs, txns, replica, t0=None, t1=None):
    """Median of (Kafka CreateTime − COMMIT returned) in seconds, for the rows one replica relayed
    whose transaction committed in [t0, t1]."""
    when = {v: t.commit_returned for t in txns if t.outcome == "committed" for _r, _k, v in t.kept}
    d = sorted(m["ts_ms"] / 1000 - when[m["value"]] for m in msgs
               if m["value"] in when and m["ts_ms"] is not None
               and (m.get("headers") or {}).get("relay") == replica.encode()
               and (t0 is None or when[m["value"]] >= t0) and (t1 is None or when[m["value"]] <= t1))
    return round(d[len(d) // 2], 1) if d else None


# --------------------------------------------------------------------------------------------
# Evidence of what the database itself lost in a failover
# --------------------------------------------------------------------------------------------

def lsn_int(s):
    hi, lo = s.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def failover_evidence(ctx, old, new, table, missing_values):
    """Which rows the *database* lost when the standby was promoted, proven from the old primary's WAL.

    The promoted standby's timeline history file names the switch point: the end of the last WAL
    record it replayed from timeline 1. pg_waldump of the old primary's pg_wal from there lists the
    transactions that committed on the old primary after it, i.e. that the new primary never saw.
    The old primary is then started alone on a fresh port (the relay's URL does not name it) to read
    the xmin of each row that is missing from Kafka and from the new primary: a missing row whose
    inserting transaction committed past the switch point is lost by the database; any other
    missing row is relay loss. Also counts the outbox rows whose DELETE committed past the switch
    point: they are back on the new primary, and are relayed again (duplicates)."""
    hist = sorted(f for f in os.listdir(os.path.join(new.data, "pg_wal")) if f.endswith(".history"))
    if not hist:
        raise HarnessError("the promoted standby has no timeline history file")
    with open(os.path.join(new.data, "pg_wal", hist[-1])) as f:
        switch = f.read().split()[1]
    with connect(new.url) as c:
        relpath = c.execute("SELECT pg_relation_filepath(%s::regclass)", (table,)).fetchone()[0]  # base/DB/REL
    rel = "1663/" + "/".join(relpath.split("/")[1:])
    dump = subprocess.run([f"{PG_BIN}/pg_waldump", "-p", os.path.join(old.data, "pg_wal"), "-t", "1", "-s", switch],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    committed_after = set()
    tuples = []  # (INSERT or DELETE, xid, (block, offset)) of outbox heap tuples past the switch point, in WAL order
    for line in dump.stdout.splitlines():
        m = re.search(r"tx:\s+(\d+), lsn: ([0-9A-F]+/[0-9A-F]+)", line)
        if not m:
            continue
        xid = int(m.group(1))
        if "rmgr: Transaction" in line and "desc: COMMIT" in line:
            committed_after.add(xid)
            # Rows inserted after a ROLLBACK TO SAVEPOINT carry a subtransaction's xid.
            sub = re.search(r"subxacts: ([\d ]+)", line)
            if sub:
                committed_after.update(int(x) for x in sub.group(1).split())
            continue
        h = re.search(r"rmgr: Heap .*desc: (INSERT|INSERT\+INIT|DELETE) off (\d+).*blkref #0: rel (\S+) blk (\d+)", line)
        if h and h.group(3) == rel:
            tuples.append(("DELETE" if h.group(1) == "DELETE" else "INSERT", xid, (int(h.group(4)), int(h.group(2)))))
    # In WAL order: a tuple inserted and then deleted past the switch point is a row the relay
    # delivered (it deletes only after the broker's acknowledgement) whose transaction the new
    # primary never saw. A DELETE of a tuple inserted before the switch point: the row is back on
    # the new primary and relayed again — unless its transaction committed past the switch point
    # too (its INSERT record came before it), so this count is an upper bound.
    live, phantom, resurrected = set(), 0, 0
    for kind, x, t in tuples:
        if x not in committed_after:
            continue
        if kind == "INSERT":
            live.add(t)
        elif t in live:
            live.discard(t)
            phantom += 1
        else:
            resurrected += 1
    lost_deletes = phantom + resurrected
    # The old primary, alone: it recovers timeline 1 to its end.
    old.port = free_port()
    old.conf(f"\nport = {old.port}\nsynchronous_standby_names = ''\n")
    old.start()
    db_lost, relay_lost_there = set(), set()
    if missing_values:
        with connect(old.url) as c:
            for v, xmin in c.execute(sql.SQL("SELECT value, xmin::text::bigint FROM {} WHERE value = ANY(%s)").format(
                    cc.table_ident(table)), (list(missing_values),)):
                (db_lost if int(xmin) in committed_after else relay_lost_there).add(bytes(v))
    old.stop("fast")
    return {"switch_point": switch, "commits_after_switch": len(committed_after), "lost_deletes": lost_deletes,
            "phantom": phantom, "resurrected": resurrected, "db_lost": db_lost, "waldump_tail": (dump.stderr.strip().splitlines() or [""])[-1][:200]}


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------

class Ctx:
    def __init__(self, a, base, log_dir, broker, seed):
        self.a, self.base, self.log_dir, self.broker, self.seed = a, base, log_dir, broker, seed
        self._main = None

    def names(self, case):
        tag = uuid.uuid4().hex[:8]
        table = f"{case.replace('-', '_')}_{tag}"
        topics = [f"fdb-{case}-{tag}-t{i}" for i in range(2)]
        cc.create_topics(self.broker.brokers, topics, 4)
        return table, topics

    def case_dir(self, case):
        return make_dir(self.log_dir, case)

    def main_cluster(self):
        """One plain primary shared by the cases that need no special cluster."""
        if self._main is None:
            self._main = Cluster(self.base, "main", self.log_dir)
            self._main.initdb()
            self._main.start()
        return self._main


def case_line(name, bound, res, recovery, note):
    # One line of a Markdown table (render_reliability.py): no newlines, pipes escaped.
    note = re.sub(r"\s+", " ", note).replace("|", "\\|")
    return {"name": name, "bound": bound, "inserted": res["inserted"], "lost": res["lost"],
            "duplicates": res["duplicates"], "orderInversions": res["causal_inversions"], "pending": res["pending"],
            "deadLettered": res["dead"], "recoverySeconds": None if recovery is None else round(recovery, 2),
            "note": note}


def first_error_after(relay, offset, n=2):
    lines = relay.lines_after(offset, r" (warning|error|critical) ")
    return [strip_time(l)[:300] for l in lines[:n]]


def case_failover(ctx, mode):
    """mode: fast, immediate (asynchronous, with staged lag), sync (immediate, synchronous standby)."""
    case = {"fast": "failover-fast", "immediate": "failover-immediate", "sync": "failover-sync"}[mode]
    d = ctx.case_dir(case)
    p = Cluster(ctx.base, f"{case}-primary", d)
    p.initdb()
    p.start()
    table, topics = ctx.names(case)
    migrate(ctx.a.relay, p.url, table)
    s = Cluster(ctx.base, f"{case}-standby", d)
    s.standby_of(p)
    with connect(p.url) as c:
        wait_until("the standby streaming", lambda: c.execute(
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'").fetchone()[0], 30)
        if mode == "sync":
            c.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
            c.execute("SELECT pg_reload_conf()")
            wait_until("the standby synchronous", lambda: c.execute(
                "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'").fetchone()[0], 30)
    url = (f"postgresql://postgres@127.0.0.1:{p.port},127.0.0.1:{s.port}/postgres"
           "?target_session_attrs=read-write&connect_timeout=2")
    backlog_n = 20000 if mode == "fast" else 0
    txns = []
    if backlog_n:
        t, _ = insert_rows(p.url, table, topics, "backlog", backlog_n)
        txns.append(t)
    relay = Relay(ctx.a.relay, url, ctx.broker.brokers, table, f"{table}-r0", d)
    relay.start()
    wl = Writers(url, table, topics, ctx.seed)
    wl.begin()
    if backlog_n:
        wait_until("the drain under way", lambda: count_rows(p.url, table) < 0.6 * backlog_n, 60)
    else:
        wait_until("2 s of writes", lambda: wl.committed_rows() >= 600, 30)
        wait_until("the relay keeping up", lambda: count_rows(p.url, table) < 100, 30)
    at_fault = count_rows(p.url, table)
    log_off = len(relay.text())
    lag = None
    if mode == "fast":
        t_fault = time.time()
        p.stop("fast")
    else:
        with connect(p.url) as c:
            walsender = c.execute("SELECT pid FROM pg_stat_replication").fetchone()[0]
        # Replication lag, staged: the walsender stopped; WAL accumulates on the primary only.
        os.kill(walsender, signal.SIGSTOP)
        time.sleep(1.5)  # the length of the lag (the fault itself, not a synchronisation)
        lag = 1.5
        t_fault = time.time()
        stopper = subprocess.Popen((["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else [])
                                   + [f"{PG_BIN}/pg_ctl", "-D", p.data, "-m", "immediate", "-w", "-t", "60", "stop"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until("the postmaster stopping", lambda: p.pm_status() in ("stopping", None), 10, interval=0.005)
        os.kill(walsender, signal.SIGKILL)  # the stopped walsender would hold up the shutdown 5 s
        if stopper.wait(60) != 0:
            raise HarnessError("pg_ctl stop -m immediate failed")
    t_stopped = time.time()
    s.promote()
    t_promoted = time.time()
    recovery = wait_drained(s.url, table, 90, older_than=t_promoted, relays=[relay])
    first_commit = wait_until("a writer committing on the new primary", lambda: wl.first_commit_after(t_promoted), 60)
    relay_saw = first_error_after(relay, log_off)
    wl.stop.wait(3)  # writes go on a while on the new primary
    wl.end()
    wait_drained(s.url, table, 60, relays=[relay])
    failures = relay_summary([relay])
    pending, dead = final_state(s.url, table)
    txns += wl.txns
    msgs, _ = cc.read_topics(ctx.broker.brokers, topics)
    missing = {v for t in txns if t.outcome == "committed" for _r, _k, v in t.kept} - {m["value"] for m in msgs} - pending - dead
    ev = failover_evidence(ctx, p, s, table, missing)
    res = check_rows(txns, msgs, pending, dead, db_lost=ev["db_lost"])
    db_lost = len(ev["db_lost"])
    viol = order_violations(res)
    # A row whose DELETE the failover undid is back in the outbox. Sent again, it would land after
    # later rows of its key (a stale re-delivery: 2-8 per run before the relay remembered what the
    # broker had acknowledged); it is deleted again instead, so order_violations allows none.
    if res["lost"]:
        viol["lost"] = res["lost"]
    dup_bound = WINDOW + ev["resurrected"]
    if res["duplicates"] > dup_bound:
        viol["duplicates"] = f"{res['duplicates']} > {dup_bound}"
    if res["pending"]:
        viol["pending"] = res["pending"]
    if mode in ("fast", "sync") and db_lost:
        viol["lost_by_database"] = db_lost
    if failures:
        viol["relay_failures"] = failures
    stop_s = t_stopped - t_fault
    common = (f"{at_fault} rows in the outbox at the stop; primary down {stop_s:.2f} s + promote {t_promoted - t_stopped:.2f} s; writers' first commit on the new "
              f"primary {first_commit - t_fault:.2f} s after the stop; relay logged: {' | '.join(relay_saw) or 'nothing'}; "
              f"old primary's WAL past the switch point {ev['switch_point']}: {ev['lost_deletes']} outbox DELETEs, of rows "
              f"inserted past it {ev['phantom']} (relayed, then undone by the failover) and before it "
              f"{ev['resurrected']} (back on the new primary and relayed again unless their transaction committed past "
              f"it too, or the relay retried its DELETE); outbox-ids in Kafka carrying two different rows: "
              f"{res['reused_ids']}; writer COMMITs with unknown outcome: {res['uncertain']} rows; stale re-deliveries "
              f"{res.get('stale_redeliveries', 0)} (rows whose DELETE the failover undid are deleted again, not sent again)")
    if mode == "fast":
        name = ("PostgreSQL failover: primary stopped (pg_ctl -m fast) mid-drain (20 000-row backlog + writes), "
                "streaming standby promoted; relay and writers on a multi-host URL (target_session_attrs=read-write)")
        bound = "lost 0 (database and relay), duplicates <= in-flight window (2000), order inversions 0"
        note = f"recovery = promotion done to no row older than the promotion left; lost by the database {db_lost}; {common}"
    else:
        sync = mode == "sync"
        name = (f"PostgreSQL failover: primary crash-stopped (pg_ctl -m immediate) during writes (300 rows/s) after "
                f"{lag:g} s of replication lag (walsender SIGSTOPped), {'synchronous' if sync else 'asynchronous'} "
                f"standby promoted" + (" (synchronous_standby_names = '*')" if sync else ""))
        bound = ("lost 0 by the relay" + (" and by the database" if sync else
                 " (rows lost by the database are counted apart, each proven from the old primary's WAL)")
                 + ", duplicates <= in-flight window (2000) + rows whose DELETE (not INSERT) was lost with the old "
                 "primary, order inversions 0")
        reuse = (f"; OUTBOX-ID REUSED: {res['reused_ids']} ids in Kafka carry two different rows — the new primary's "
                 f"sequence resumed behind ids the old primary had handed out after the switch point (and the relay had "
                 f"delivered); a consumer de-duplicating on outbox-id drops the later rows" if res["reused_ids"] else "")
        phantom = (f"; IN KAFKA BUT UNDONE BY THE FAILOVER: {ev['phantom']} rows the relay delivered from transactions "
                   f"the new primary never received" if ev["phantom"] else "")
        note = (f"recovery = promotion done to no row older than the promotion left; LOST BY THE DATABASE (committed on "
                f"the old primary, never replicated, absent from the new primary; not relay loss): {db_lost} rows "
                f"({ev['commits_after_switch']} transactions committed past the switch point){phantom}{reuse}; {common}")
    p.close()
    s.close()
    line = case_line(name, bound, res, recovery, note)
    detail = {"evidence": {k: (len(v) if isinstance(v, set) else v) for k, v in ev.items()},
              "writer_errors": wl.error_states(), "failed_connects": wl.failed_connects, "check": short(res)}
    return line, viol, detail


def short(res):
    keep = ("inserted", "lost", "lost_ids", "pending", "dead", "duplicates", "causal_inversions", "intra_txn_inversions",
            "stale_redeliveries", "payload_mismatches", "keys_on_several_partitions", "delivered_rolled_back_or_foreign", "foreign_ids",
            "reused_ids", "wrong_id", "uncertain", "messages", "latency_ms")
    out = {k: res.get(k) for k in keep}
    if res.get("stale_redeliveries"):
        out["stale_examples"] = (res.get("examples") or {}).get("stale_redeliveries", [])[:3]
    return out


CLEAR = r"read-only|read only|recovery|standby|25006"


def strip_time(line):
    """A relay log line without its timestamp, program name and replica/table metadata."""
    line = re.sub(r"^\S+ (\w+) outbox-relay: ", r"\1 ", line.strip())
    return re.sub(r" ?outbox\.(replica|table)=\S+", "", line)


def case_standby_only(ctx):
    case = "standby-only"
    d = ctx.case_dir(case)
    p = ctx.main_cluster()
    table, topics = ctx.names(case)
    migrate(ctx.a.relay, p.url, table)
    s = Cluster(ctx.base, "main-standby", d)
    s.standby_of(p)
    t, _ = insert_rows(p.url, table, topics, "before", 3000)
    txns = [t]
    with connect(p.url) as c:
        lsn = c.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    with connect(s.url) as c:
        wait_until("the standby to replay the rows", lambda: c.execute(
            "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0], 30)
    seen = {}
    viol = {}
    for variant, url in (("plain URL", s.url), ("target_session_attrs=read-write", s.url + "?target_session_attrs=read-write")):
        r = Relay(ctx.a.relay, url, ctx.broker.brokers, table, f"{table}-{'rw' if '?' in url else 'plain'}", d)
        t0 = time.monotonic()
        r.start()

        def settled():
            if r.proc.poll() is not None:
                return "exited"
            st, body = r.readyz()
            # Holding: not ready, and several failed heartbeats (about 3 s of it) in the log.
            if st is not None and st != 200 and len(r.excerpt("lease heartbeat failed", n=3)) >= 3:
                return "holding"
            return None
        how = wait_until(f"the relay on the standby ({variant}) to exit or hold", settled, 60)
        if how == "exited":
            code = r.proc.returncode
            msg = " / ".join(l.strip() for l in r.text().strip().splitlines()[-2:])[:400]
            seen[variant] = f"exited {code} after {time.monotonic() - t0:.1f} s: {msg}"
            clear = code != 0 and re.search(CLEAR, msg, re.I)
            r.stop()
        else:
            st, body = r.readyz()
            try:
                checks = json.loads(body).get("checks", {})
                detail = "; ".join(f"{k}: {v.get('detail')}" for k, v in sorted(checks.items()) if not v.get("ok"))
            except (ValueError, AttributeError):
                detail = body[:300]
            first = r.excerpt(r"25006|read-only|recovery", n=2, width=300)
            crashed, code = r.stop(signal.SIGTERM)
            first = " | ".join(strip_time(l) for l in first)
            seen[variant] = f"kept running, /readyz {st} ({detail}); log: {first}; SIGTERM → exit {code}"
            clear = st == 503 and re.search(CLEAR, body, re.I)
        if not clear:
            viol[f"unclear_{variant}"] = seen[variant]
    produced = sum(hi for hi in cc.read_topics(ctx.broker.brokers, topics)[1].values())
    left = count_rows(p.url, table)
    if produced:
        viol["produced_from_standby"] = produced
    if left != 3000:
        viol["deleted_while_on_standby"] = 3000 - left
    s.close()
    # Then pointed at the primary.
    r = Relay(ctx.a.relay, p.url, ctx.broker.brokers, table, f"{table}-primary", d)
    r.start()
    recovery = wait_drained(p.url, table, 60, relays=[r])
    failures = relay_summary([r])
    pending, dead = final_state(p.url, table)
    msgs, _ = cc.read_topics(ctx.broker.brokers, topics)
    res = check_rows(txns, msgs, pending, dead)
    viol.update(order_violations(res))
    for k in ("lost", "duplicates", "pending"):
        if res[k]:
            viol[k] = res[k]
    if failures:
        viol["relay_failures"] = failures
    name = "relay pointed at a hot standby only (plain URL; with target_session_attrs=read-write), then at the primary"
    bound = ("on the standby: exits non-zero or holds with /readyz 503, naming read-only/recovery; produces and deletes "
             "nothing; then on the primary: lost 0, duplicates 0, order inversions 0")
    note = ("recovery = relay started on the primary to backlog 0 (3 000 rows); "
            + "; ".join(f"{k}: {v}" for k, v in seen.items())
            + f"; messages produced while on the standby: {produced}")
    return case_line(name, bound, res, recovery, note), viol, {"check": short(res)}


def write_atomically(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)


CLOCK_SHIM_C = r"""/* Shifts CLOCK_REALTIME, as this process sees it, by the seconds written in $CLOCK_SHIFT_FILE
 * (re-read at most every 100 ms): a step of the host's wall clock (NTP, an operator's date -s).
 * CLOCK_MONOTONIC and CLOCK_BOOTTIME are left alone, as a step leaves them. Absolute waits on
 * CLOCK_REALTIME (pthread and C11 condition variables, semaphores, timed locks, clock_nanosleep,
 * realtime timerfds) are translated back to the real clock when they start, so a deadline computed
 * from the shifted clock expires when it would on a stepped host. (Not modelled: a wait already
 * blocked in the kernel when the shift changes keeps its real deadline; on a stepped host it would
 * move with the clock.) Nothing is written to the environment. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <threads.h>
#include <time.h>
#include <unistd.h>

static _Atomic long long shift_ns, next_read_ns;
static _Atomic unsigned char realtime_fd[65536];
static int (*r_clock_gettime)(clockid_t, struct timespec *);
static int (*r_cond_timedwait)(pthread_cond_t *, pthread_mutex_t *, const struct timespec *);
static int (*r_cond_clockwait)(pthread_cond_t *, pthread_mutex_t *, clockid_t, const struct timespec *);
static int (*r_sem_timedwait)(sem_t *, const struct timespec *);
static int (*r_sem_clockwait)(sem_t *, clockid_t, const struct timespec *);
static int (*r_mutex_timedlock)(pthread_mutex_t *, const struct timespec *);
static int (*r_mutex_clocklock)(pthread_mutex_t *, clockid_t, const struct timespec *);
static int (*r_rw_timedrd)(pthread_rwlock_t *, const struct timespec *);
static int (*r_rw_timedwr)(pthread_rwlock_t *, const struct timespec *);
static int (*r_rw_clockrd)(pthread_rwlock_t *, clockid_t, const struct timespec *);
static int (*r_rw_clockwr)(pthread_rwlock_t *, clockid_t, const struct timespec *);
static int (*r_clock_nanosleep)(clockid_t, int, const struct timespec *, struct timespec *);
static int (*r_timerfd_create)(int, int);
static int (*r_timerfd_settime)(int, int, const struct itimerspec *, struct itimerspec *);
static int (*r_timedjoin)(pthread_t, void **, const struct timespec *);
static int (*r_cnd_timedwait)(cnd_t *, mtx_t *, const struct timespec *);
static int (*r_mtx_timedlock)(mtx_t *, const struct timespec *);

#define LOAD(v, name) if (!v) v = dlsym(RTLD_NEXT, name)
static void init(void) {
  LOAD(r_clock_gettime, "clock_gettime");
  LOAD(r_cond_timedwait, "pthread_cond_timedwait");
  LOAD(r_cond_clockwait, "pthread_cond_clockwait");
  LOAD(r_sem_timedwait, "sem_timedwait");
  LOAD(r_sem_clockwait, "sem_clockwait");
  LOAD(r_mutex_timedlock, "pthread_mutex_timedlock");
  LOAD(r_mutex_clocklock, "pthread_mutex_clocklock");
  LOAD(r_rw_timedrd, "pthread_rwlock_timedrdlock");
  LOAD(r_rw_timedwr, "pthread_rwlock_timedwrlock");
  LOAD(r_rw_clockrd, "pthread_rwlock_clockrdlock");
  LOAD(r_rw_clockwr, "pthread_rwlock_clockwrlock");
  LOAD(r_clock_nanosleep, "clock_nanosleep");
  LOAD(r_timerfd_create, "timerfd_create");
  LOAD(r_timerfd_settime, "timerfd_settime");
  LOAD(r_timedjoin, "pthread_timedjoin_np");
  LOAD(r_cnd_timedwait, "cnd_timedwait");
  LOAD(r_mtx_timedlock, "mtx_timedlock");
}
__attribute__((constructor)) static void ctor(void) { init(); }

static long long shift(void) {
  static const char *path;
  static int looked;
  if (!looked) { path = getenv("CLOCK_SHIFT_FILE"); looked = 1; }
  if (path) {
    struct timespec m;
    r_clock_gettime(CLOCK_MONOTONIC_COARSE, &m);
    long long now = m.tv_sec * 1000000000LL + m.tv_nsec, next = atomic_load(&next_read_ns);
    if (now >= next && atomic_compare_exchange_strong(&next_read_ns, &next, now + 100000000LL)) {
      int saved = errno, fd = open(path, O_RDONLY | O_CLOEXEC);
      if (fd >= 0) {
        char b[64];
        ssize_t n = read(fd, b, sizeof b - 1);
        close(fd);
        if (n > 0) { b[n] = 0; atomic_store(&shift_ns, (long long)(strtod(b, NULL) * 1e9)); }
      }
      errno = saved;
    }
  }
  return atomic_load(&shift_ns);
}

static void add(struct timespec *t, long long ns) {
  long long v = t->tv_sec * 1000000000LL + t->tv_nsec + ns;
  t->tv_sec = v / 1000000000LL; t->tv_nsec = v % 1000000000LL;
  if (t->tv_nsec < 0) { t->tv_nsec += 1000000000LL; t->tv_sec -= 1; }
}
/* A deadline on the shifted realtime clock, on the real one. */
static const struct timespec *back(const struct timespec *abs, struct timespec *out) {
  if (!abs) return abs;
  *out = *abs;
  add(out, -shift());
  return out;
}
static int is_realtime(clockid_t c) { return c == CLOCK_REALTIME || c == CLOCK_REALTIME_COARSE; }

int clock_gettime(clockid_t c, struct timespec *tp) {
  init();
  int r = r_clock_gettime(c, tp);
  if (r == 0 && is_realtime(c)) add(tp, shift());
  return r;
}
int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
  (void)tz;
  struct timespec t;
  int r = clock_gettime(CLOCK_REALTIME, &t);
  if (r == 0) { tv->tv_sec = t.tv_sec; tv->tv_usec = t.tv_nsec / 1000; }
  return r;
}
time_t time(time_t *out) {
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  if (out) *out = t.tv_sec;
  return t.tv_sec;
}
int timespec_get(struct timespec *ts, int base) {
  if (base != TIME_UTC) return 0;
  return clock_gettime(CLOCK_REALTIME, ts) == 0 ? base : 0;
}
int pthread_cond_timedwait(pthread_cond_t *restrict c, pthread_mutex_t *restrict m, const struct timespec *restrict abs) {
  init();
  struct timespec t;
  /* glibc >= 2.25 keeps the condition variable's clock in bit 1 of __wrefs (1 = CLOCK_MONOTONIC). */
  int monotonic = (atomic_load((_Atomic unsigned int *)&c->__data.__wrefs) & 2) != 0;
  return r_cond_timedwait(c, m, monotonic ? abs : back(abs, &t));
}
int pthread_cond_clockwait(pthread_cond_t *restrict c, pthread_mutex_t *restrict m, clockid_t k, const struct timespec *restrict abs) {
  init();
  struct timespec t;
  return r_cond_clockwait(c, m, k, is_realtime(k) ? back(abs, &t) : abs);
}
int sem_timedwait(sem_t *restrict s, const struct timespec *restrict abs) {
  init();
  struct timespec t;
  return r_sem_timedwait(s, back(abs, &t));
}
int sem_clockwait(sem_t *restrict s, clockid_t k, const struct timespec *restrict abs) {
  init();
  struct timespec t;
  return r_sem_clockwait(s, k, is_realtime(k) ? back(abs, &t) : abs);
}
int pthread_mutex_timedlock(pthread_mutex_t *restrict m, const struct timespec *restrict abs) {
  init();
  struct timespec t;
  return r_mutex_timedlock(m, back(abs, &t));
}
int pthread_mutex_clocklock(pthread_mutex_t *restrict m, clockid_t k, const struct timespec *restrict abs) {
  init();
  struct timespec t;
  return r_mutex_clocklock(m, k, is_realtime(k) ? back(abs, &t) : abs);
}
int pthread_rwlock_timedrdlock(pthread_rwlock_t *restrict l, const struct timespec *restrict abs) {
  init();
  struct timespec t;
  return r_rw_timedrd(l, back(abs, &t));
}
int pthread_rwlock_timedwrlock(pthread_rwlock_t *restrict l, const struct timespec *restrict abs) {
  init();
  struct timespec t;
  return r_rw_timedwr(l, back(abs, &t));
}
int pthread_rwlock_clockrdlock(pthread_rwlock_t *restrict l, clockid_t k, const struct timespec *restrict abs) {
  init();
  struct timespec t;
  return r_rw_clockrd(l, k, is_realtime(k) ? back(abs, &t) : abs);
}
int pthread_rwlock_clockwrlock(pthread_rwlock_t *restrict l, clockid_t k, const struct timespec *restrict abs) {
  init();
  struct timespec t;
  return r_rw_clockwr(l, k, is_realtime(k) ? back(abs, &t) : abs);
}
int pthread_timedjoin_np(pthread_t th, void **ret, const struct timespec *abs) {
  init();
  struct timespec t;
  return r_timedjoin(th, ret, back(abs, &t));
}
/* C11 threads (librdkafka uses them): always CLOCK_REALTIME. */
int cnd_timedwait(cnd_t *restrict c, mtx_t *restrict m, const struct timespec *restrict abs) {
  init();
  struct timespec t;
  return r_cnd_timedwait(c, m, back(abs, &t));
}
int mtx_timedlock(mtx_t *restrict m, const struct timespec *restrict abs) {
  init();
  struct timespec t;
  return r_mtx_timedlock(m, back(abs, &t));
}
int clock_nanosleep(clockid_t k, int flags, const struct timespec *req, struct timespec *rem) {
  init();
  struct timespec t;
  return r_clock_nanosleep(k, flags, (flags & TIMER_ABSTIME) && is_realtime(k) ? back(req, &t) : req, rem);
}
int timerfd_create(int k, int flags) {
  init();
  int fd = r_timerfd_create(k, flags);
  if (fd >= 0 && fd < 65536) atomic_store(&realtime_fd[fd], is_realtime(k));
  return fd;
}
int timerfd_settime(int fd, int flags, const struct itimerspec *nv, struct itimerspec *ov) {
  init();
  struct itimerspec t;
  if (nv && (flags & TFD_TIMER_ABSTIME) && fd >= 0 && fd < 65536 && atomic_load(&realtime_fd[fd]) &&
      (nv->it_value.tv_sec || nv->it_value.tv_nsec)) {
    t = *nv;
    add(&t.it_value, -shift());
    nv = &t;
  }
  return r_timerfd_settime(fd, flags, nv, ov);
}
"""


def clock_env(ctx, shift_file):
    """The environment that shifts one relay's wall clock by the seconds in shift_file (rewritten to step it).

    Default: the small LD_PRELOAD shim above (compiled once per run with cc), which shifts only
    CLOCK_REALTIME reads and translates absolute CLOCK_REALTIME waits back, i.e. what a step of the
    host clock does. --clock-tool libfaketime uses libfaketime instead (FAKETIME_TIMESTAMP_FILE,
    FAKETIME_DONT_FAKE_MONOTONIC=1), for comparison: libfaketime 0.9.10 (bookworm) also moves
    absolute CLOCK_MONOTONIC timerfd deadlines by the offset (it treats every TFD_TIMER_ABSTIME timer as
    CLOCK_REALTIME; libdispatch arms Swift's Task.sleep timers that way), and with DONT_FAKE_MONOTONIC
    it shifts absolute waits on CLOCK_MONOTONIC condition variables (fixed upstream in 2025): under
    -10 min the relay's sleeps last 10 minutes longer, under +10 min they return at once — a fault no
    real clock step causes. FAKETIME_SHARED is preset to a stale name on purpose: libfaketime's
    constructor otherwise *adds* FAKETIME_SHARED to the environment, glibc then moves `environ` to
    the heap, and the Swift runtime, which apparently finds argv next to the initial environment,
    sees no arguments (outbox-relay prints its top-level help and exits 0; it depends on the address
    layout: `setarch -R` hides it). With the variable already present libfaketime replaces it in place."""
    if ctx.a.clock_tool == "libfaketime":
        return {"LD_PRELOAD": LIBFAKETIME, "FAKETIME_DONT_FAKE_MONOTONIC": "1", "FAKETIME_TIMESTAMP_FILE": shift_file,
                "FAKETIME_CACHE_DURATION": "1", "FAKETIME_SHARED": "/faketime_sem_stale /faketime_shm_stale"}
    so = os.path.join(ctx.base, "clockshift.so")
    if not os.path.exists(so):
        src = os.path.join(ctx.base, "clockshift.c")
        with open(src, "w") as f:
            f.write(CLOCK_SHIM_C)
        subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", so, src, "-ldl", "-pthread"], check=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return {"LD_PRELOAD": so, "CLOCK_SHIFT_FILE": shift_file}


def tool_desc(ctx):
    return ("libfaketime, CLOCK_MONOTONIC not faked" if ctx.a.clock_tool == "libfaketime"
            else "CLOCK_REALTIME shifted by an LD_PRELOAD shim, CLOCK_MONOTONIC untouched")


def owners(url, table):
    return {o for o, _e in leases(url, table).values()}


def case_clock_step(ctx, offset):
    case = "clock-forward" if offset > 0 else "clock-backward"
    d = ctx.case_dir(case)
    p = ctx.main_cluster()
    table, topics = ctx.names(case)
    migrate(ctx.a.relay, p.url, table)
    warm, shard_of_key = insert_rows(p.url, table, topics, "warmup", 20)
    rc = os.path.join(d, "clock-shift")
    write_atomically(rc, "+0")
    extra = ["--created-at-header", "created-at", "--relay-header", "relay"]
    r0 = Relay(ctx.a.relay, p.url, ctx.broker.brokers, table, f"{table}-r0", d, extra, clock_env(ctx, rc))
    r1 = Relay(ctx.a.relay, p.url, ctx.broker.brokers, table, f"{table}-r1", d, extra)
    r0.start()
    r1.start()
    wait_until("both replicas holding shards", lambda: owners(p.url, table) == {r0.name, r1.name}, 60)
    wait_drained(p.url, table, 30, relays=[r0, r1])
    sampler = BacklogSampler(p.url, table)
    wl = Writers(p.url, table, topics, ctx.seed)
    wl.begin()
    wl.stop.wait(2)  # steady state before the step
    before = leases(p.url, table)
    off0, off1 = len(r0.text()), len(r1.text())
    write_atomically(rc, f"{offset:+d}")
    t_step = time.time()
    time.sleep(4)  # phase A: the step alone (the shift file is re-read within 0.1 s, libfaketime's within 1 s)
    t_a = time.time()
    off_a0, off_a1 = len(r0.text()), len(r1.text())
    ctx.broker.pause()
    time.sleep(3)  # phase B: the broker paused past message.timeout.ms under the stepped clock
    ctx.broker.resume()
    t_resume = time.time()
    recovery = wait_drained(p.url, table, 60, older_than=t_resume, relays=[r0, r1])
    wl.stop.wait(2)
    wl.end()
    wait_drained(p.url, table, 60, relays=[r0, r1])
    sampler.end()
    after = leases(p.url, table)
    step_only = len([l for l in r0.text()[off0:off_a0].splitlines() if re.search(r" (warning|error|critical) ", l)])
    step_only1 = len([l for l in r1.text()[off1:off_a1].splitlines() if re.search(r" (warning|error|critical) ", l)])
    logged = r0.lines_after(off0, r" (warning|error|critical) ")
    logged1 = r1.lines_after(off1, r" (warning|error|critical) ")
    backoffs = [int(m.group(1)) for l in logged for m in [re.search(r"outbox\.retry_in_ms=(\d+)", l)] if m]
    recreated = sum(1 for l in r0.lines_after(off0, r"re-creat|recreat"))
    failures = relay_summary([r0, r1])
    pending, dead = final_state(p.url, table)
    txns = [warm] + wl.txns
    msgs, _ = cc.read_topics(ctx.broker.brokers, topics)
    res = check_rows(txns, msgs, pending, dead)
    takeovers = sum(after[s][1] - before[s][1] for s in after)
    switches = producer_switches(msgs, shard_of_key, {s: e for s, (_o, e) in after.items()})
    cat_bad, cat_ex = created_at_mismatches(msgs, txns)
    off_before = create_time_offsets(msgs, txns, r0.name, t1=t_step - 0.5)
    off_after = create_time_offsets(msgs, txns, r0.name, t0=t_step + 1.5, t1=t_a)
    off_r1 = create_time_offsets(msgs, txns, r1.name, t0=t_step + 1.5, t1=t_a)
    wait_a = sampler.max_age(t_step, t_a)
    wait_pause = sampler.max_age(t_a, t_resume + recovery)
    viol = window_violations(res, failures)
    if takeovers:
        viol["lease_takeovers_after_step"] = takeovers
    if switches:
        viol["producer_changes_beyond_lease_acquisitions"] = dict(list(switches.items())[:5])
    if cat_bad:
        viol["created_at_header_mismatches"] = {"count": cat_bad, "examples": cat_ex}
    if wait_a is None or wait_a > 5:
        viol["stall_after_step"] = wait_a
    if off_after is None or abs(off_after - offset) > 30:
        viol["step_not_in_effect"] = off_after  # a harness failure: the fault did not happen
    name = (f"relay wall clock stepped {'+' if offset > 0 else '-'}{abs(offset) // 60} min mid-run ({tool_desc(ctx)}) "
            f"on one of two replicas, then broker paused 3 s (past message.timeout.ms)")
    bound = ("lost 0, order inversions 0, duplicates <= in-flight window (2000, the broker pause), no lease take-over "
             "after the step, created-at header = the row's created_at, oldest row < 5 s old after the step, "
             "backlog drained after the pause")
    note = (f"recovery = broker resumed to no row older than the resume left; oldest row in the 4 s after the step "
            f"{wait_a if wait_a is None else round(wait_a, 2)} s, during the pause and recovery "
            f"{wait_pause if wait_pause is None else round(wait_pause, 2)} s; Kafka CreateTime − commit of the stepped replica's rows: "
            f"{off_before} s before the step, {off_after} s after (the untouched replica: {off_r1} s): message timestamps "
            f"follow the relay host's clock; created-at headers off by more than 0.5 s: {cat_bad}; lease epochs bumped "
            f"after the step: {takeovers}; warnings in the 4 s between the step and the pause: {step_only} (stepped "
            f"replica), {step_only1} (other); from the step to the end: {len(logged)} and {len(logged1)}, nearly all "
            f"the pause's message time-outs; the stepped replica scheduled {len(backoffs)} row retries (back-off "
            f"{min(backoffs) if backoffs else '-'}–{max(backoffs) if backoffs else '-'} ms, monotonic clock) and logged "
            f"{recreated} producer re-creation lines")
    return case_line(name, bound, res, recovery, note), viol, {"check": short(res), "r0_warnings": logged[:5]}


def case_clock_skew(ctx):
    case = "clock-skew"
    d = ctx.case_dir(case)
    p = ctx.main_cluster()
    table, topics = ctx.names(case)
    migrate(ctx.a.relay, p.url, table)
    warm, shard_of_key = insert_rows(p.url, table, topics, "warmup", 20)
    extra = ["--created-at-header", "created-at", "--relay-header", "relay"]
    slow, fast = os.path.join(d, "shift-slow"), os.path.join(d, "shift-fast")
    write_atomically(slow, "-600")
    write_atomically(fast, "+600")
    r0 = Relay(ctx.a.relay, p.url, ctx.broker.brokers, table, f"{table}-slow", d, extra, clock_env(ctx, slow))
    r1 = Relay(ctx.a.relay, p.url, ctx.broker.brokers, table, f"{table}-fast", d, extra, clock_env(ctx, fast))
    nshards = len(leases(p.url, table))
    r0.start()
    wait_until("the -10 min replica holding every shard",
               lambda: all(o == r0.name for o, _e in leases(p.url, table).values()), 60)
    wait_drained(p.url, table, 30, relays=[r0])
    wl = Writers(p.url, table, topics, ctx.seed)
    wl.begin()
    wait_until("1 s of writes", lambda: wl.committed_rows() >= 300, 30)
    t_join = time.monotonic()
    r1.start()

    def split():
        ls = leases(p.url, table).values()
        a = sum(1 for o, _e in ls if o == r0.name)
        b = sum(1 for o, _e in ls if o == r1.name)
        return a + b == nshards and a > 0 and b > 0
    wait_until("the shards split between the replicas", split, 60)
    handover = time.monotonic() - t_join
    wl.stop.wait(2)
    before_kill = leases(p.url, table)
    flapping = {s: e for s, (_o, e) in before_kill.items() if e > 2}
    r0.stop(signal.SIGKILL)
    t_kill = time.time()
    tk = time.monotonic()
    wait_until("the +10 min replica taking every shard",
               lambda: all(o == r1.name for o, _e in leases(p.url, table).values()), 60, interval=0.05)
    takeover = time.monotonic() - tk
    wait_drained(p.url, table, 60, older_than=t_kill, relays=[r1])
    recovery = time.time() - t_kill
    r0.start()
    wait_until("the shards split again", split, 60)
    wl.stop.wait(2)
    wl.end()
    wait_drained(p.url, table, 60, relays=[r0, r1])
    after = leases(p.url, table)
    failures = relay_summary([r0, r1])
    pending, dead = final_state(p.url, table)
    txns = [warm] + wl.txns
    msgs, _ = cc.read_topics(ctx.broker.brokers, topics)
    res = check_rows(txns, msgs, pending, dead)
    switches = producer_switches(msgs, shard_of_key, {s: e for s, (_o, e) in after.items()})
    cat_bad, cat_ex = created_at_mismatches(msgs, txns)
    viol = window_violations(res, failures)
    lo, hi = LEASE_MS / 1000 - 2, LEASE_MS / 1000 + 6
    if not lo <= takeover <= hi:
        viol["takeover_seconds"] = f"{takeover:.2f} not in [{lo:g}, {hi:g}]"
    if flapping:
        viol["shards_acquired_more_than_twice_before_the_kill"] = len(flapping)
    if switches:
        viol["producer_changes_beyond_lease_acquisitions"] = dict(list(switches.items())[:5])
    if cat_bad:
        viol["created_at_header_mismatches"] = {"count": cat_bad, "examples": cat_ex}
    name = (f"two replicas whose clocks differ from the database's (-10 min and +10 min from start, {tool_desc(ctx)}); "
            "the -10 min one joins first, the +10 min one takes half, then the -10 min one is SIGKILLed and restarted")
    bound = (f"lost 0, order inversions 0, duplicates <= in-flight window (2000, the SIGKILL); take-over of the killed "
             f"replica's shards after {lo:g}-{hi:g} s (lease {LEASE_MS // 1000} s on the database clock); no shard "
             f"acquired twice while both ran; producer changes per key <= lease acquisitions of its shard")
    note = (f"recovery = SIGKILL to no row older than the kill left; hand-over to the joining replica {handover:.2f} s; "
            f"take-over after the kill {takeover:.2f} s; leases, replica heartbeats and expiry are computed with the "
            f"database's now() (LeaseQueries) and held locally on the monotonic clock, so a relay clock 10 min off "
            f"changes nothing; created-at headers off by more than 0.5 s: {cat_bad}; Kafka CreateTime − commit: "
            f"{create_time_offsets(msgs, txns, r0.name)} s (-10 min replica), {create_time_offsets(msgs, txns, r1.name)} s "
            f"(+10 min replica)")
    return case_line(name, bound, res, recovery, note), viol, {"check": short(res)}


def mount_tmpfs(path, size):
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], check=True)

    def umount():
        if subprocess.run(["umount", path], stderr=subprocess.DEVNULL).returncode != 0:
            subprocess.run(["umount", "-l", path], check=True)
    CLEANUP.push(f"tmpfs {path}", umount)
    chown_pg(path)
    os.chmod(path, 0o700)
    return umount


class Filler(threading.Thread):
    """Fills a disk: 2.4 MB INSERTs into a filler table until PostgreSQL refuses. With keep_on, it
    reconnects and goes on after each refusal for as long as keep_on() is true (a PostgreSQL that
    crash-restarts by itself after a full pg_wal gets filled again)."""

    def __init__(self, url, keep_on=None):
        super().__init__(daemon=True)
        self.url, self.keep_on = url, keep_on
        self.error = None
        self.refusals = 0
        self.done = threading.Event()
        self.start()

    def run(self):
        try:
            while True:
                try:
                    with connect(self.url) as c:
                        c.execute("CREATE TABLE IF NOT EXISTS filler (t text)")
                        for _ in range(1000):
                            c.execute("INSERT INTO filler SELECT repeat(md5(i::text), 32) FROM generate_series(1, 2000) i")
                    self.error = self.error or "never failed"
                    return
                except psycopg.Error as e:
                    self.refusals += 1
                    if self.error is None:
                        self.error = f"{type(e).__name__}: {str(e).strip()}" + (f" (SQLSTATE {e.sqlstate})" if e.sqlstate else "")
                if self.keep_on is None or not self.keep_on():
                    return
                time.sleep(0.2)
        finally:
            self.done.set()


def case_disk_full_wal(ctx):
    case = "disk-full-wal"
    d = ctx.case_dir(case)
    mnt = os.path.join(ctx.base, "walfs")
    umount = mount_tmpfs(mnt, "64m")
    p = Cluster(ctx.base, "diskfull-wal", d)
    p.initdb(conf="max_wal_size = 32MB\nmin_wal_size = 32MB\n", waldir=os.path.join(mnt, "pg_wal"))
    p.start()
    table, topics = ctx.names(case)
    migrate(ctx.a.relay, p.url, table)
    with connect(p.url) as c:
        c.execute("SELECT pg_create_physical_replication_slot('hold', true)")  # keeps every WAL segment
    r = Relay(ctx.a.relay, p.url, ctx.broker.brokers, table, f"{table}-r0", d)
    r.start()
    wl = Writers(p.url, table, topics, ctx.seed)
    wl.begin()
    wait_until("2 s of writes", lambda: wl.committed_rows() >= 600, 30)
    off = len(r.text())
    pg_off = os.path.getsize(p.log)
    # A PANIC restarts PostgreSQL, and its crash recovery sometimes finds room for its checkpoint:
    # fill again until it stays down (its postmaster exits when recovery cannot write WAL).
    filler = Filler(p.url, keep_on=p.running)
    wait_until("PostgreSQL down for good", lambda: filler.done.is_set() and not p.running(), 120)
    wait_until("the relay reporting it", lambda: r.lines_after(off, r" (warning|error) "), 30)
    ready = wait_until("/readyz 503", lambda: (lambda x: x if x[0] == 503 else None)(r.readyz()), 30)
    time.sleep(3)  # the outage (the fault itself)
    logged = r.lines_after(off, r" (warning|error|critical) ")
    with open(p.log, errors="replace") as f:
        f.seek(pg_off)
        pg_lines = [l.strip() for l in f if re.search(r"PANIC|FATAL|shutting down|No space|startup process", l)]
    subprocess.run(["mount", "-o", "remount,size=512m", mnt], check=True)
    t_freed = time.time()
    restarted = None
    if not p.running():
        p.start()
        restarted = time.time() - t_freed
    wait_drained(p.url, table, 90, older_than=t_freed, relays=[r])
    recovery = time.time() - t_freed
    first_commit = wait_until("a writer committing again", lambda: wl.first_commit_after(t_freed), 60)
    wl.stop.wait(3)
    wl.end()
    wait_drained(p.url, table, 60, relays=[r])
    failures = relay_summary([r])
    pending, dead = final_state(p.url, table)
    p.close()
    CLEANUP.pop(umount)
    msgs, _ = cc.read_topics(ctx.broker.brokers, topics)
    res = check_rows(wl.txns, msgs, pending, dead)
    viol = window_violations(res, failures)
    kinds = sorted({strip_time(l)[:160] for l in logged})
    name = ("disk full: pg_wal on a 64 MB tmpfs (held by a replication slot) fills under writes (300 rows/s), "
            "then the tmpfs is remounted at 512 MB and PostgreSQL started again")
    bound = "lost 0, duplicates <= in-flight window (2000), order inversions 0, relay up and drained after the space is back"
    panics = sum(1 for l in pg_lines if "PANIC" in l)
    note = (f"recovery = space back (remount) to no row older than it left"
            + (f", including PostgreSQL's restart ({restarted:.2f} s)" if restarted is not None else "") + "; "
            f"PostgreSQL PANICked {panics} time(s) and then stayed down (crash recovery needs WAL space too): "
            f"{' | '.join(l[24:160] for l in pg_lines if re.search('PANIC|startup process|shutting down', l))[:400]}; "
            f"the filler got {filler.error.splitlines()[0][:160]}; writers: {wl.error_states()}, first commit "
            f"{first_commit - t_freed:.2f} s after the space was back; relay /readyz {ready[0]} "
            f"({json.loads(ready[1])['checks']['database']['detail'][:160] if ready[1].startswith('{') else ready[1][:160]}); "
            f"relay logged {len(logged)} warnings, kinds: {' | '.join(kinds[:4])}")
    return case_line(name, bound, res, recovery, note), viol, {"check": short(res), "pg": pg_lines[:6]}


def case_disk_full_data(ctx):
    case = "disk-full-data"
    d = ctx.case_dir(case)
    p = ctx.main_cluster()
    mnt = os.path.join(ctx.base, "datafs")
    umount = mount_tmpfs(mnt, "64m")
    db = f"fdb_{uuid.uuid4().hex[:8]}"
    with connect(p.url) as c:
        c.execute(sql.SQL("CREATE TABLESPACE {} LOCATION {}").format(sql.Identifier(db + "_ts"), sql.Literal(mnt)))
        c.execute(sql.SQL("CREATE DATABASE {} TABLESPACE {}").format(sql.Identifier(db), sql.Identifier(db + "_ts")))

    def drop():
        with connect(p.url) as c:
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
            c.execute(sql.SQL("DROP TABLESPACE IF EXISTS {}").format(sql.Identifier(db + "_ts")))
    CLEANUP.push(f"database {db}", drop)
    url = f"postgresql://postgres@127.0.0.1:{p.port}/{db}"
    table, topics = ctx.names(case)
    migrate(ctx.a.relay, url, table)
    r = Relay(ctx.a.relay, url, ctx.broker.brokers, table, f"{table}-r0", d)
    r.start()
    wl = Writers(url, table, topics, ctx.seed)
    wl.begin()
    wait_until("2 s of writes", lambda: wl.committed_rows() >= 600, 30)
    off = len(r.text())
    epochs0 = sum(e for _o, e in leases(url, table).values())
    filler = Filler(url)
    wait_until("the disk full", lambda: filler.done.is_set(), 120)
    wait_until("a writer refused", lambda: any(k != "unknown" for k in wl.error_states()), 30)
    time.sleep(LEASE_MS / 1000 + 2)  # the outage (the fault itself), longer than a lease
    refused_during = wl.error_states()
    logged = r.lines_after(off, r" (warning|error|critical) ")
    st, body = r.readyz()
    new_conn = safe(lambda: connect(url).close() or "accepted", None)
    if new_conn is None:
        try:
            connect(url).close()
        except psycopg.Error as e:
            new_conn = "refused: " + str(e).strip().splitlines()[0][:200]
    # Freed by growing the file system: with the database's disk full even a new session to it can
    # fail (it writes catalog pages at start), so a DROP TABLE might not get through.
    subprocess.run(["mount", "-o", "remount,size=512m", mnt], check=True)
    t_freed = time.time()
    wait_drained(url, table, 90, older_than=t_freed, relays=[r])
    recovery = time.time() - t_freed
    first_commit = wait_until("a writer committing again", lambda: wl.first_commit_after(t_freed), 60)
    wl.stop.wait(3)
    wl.end()
    wait_drained(url, table, 60, relays=[r])
    reacquired = sum(e for _o, e in leases(url, table).values()) - epochs0
    failures = relay_summary([r])
    pending, dead = final_state(url, table)
    CLEANUP.pop(drop)
    CLEANUP.pop(umount)
    msgs, _ = cc.read_topics(ctx.broker.brokers, topics)
    res = check_rows(wl.txns, msgs, pending, dead)
    viol = window_violations(res, failures)
    kinds = sorted({strip_time(l)[:160] for l in logged})
    name = ("disk full: the database (outbox, lease tables, catalog) in a tablespace on a 64 MB tmpfs fills under "
            "writes (300 rows/s), pg_wal elsewhere; full for 8 s (longer than a lease), then the tmpfs is remounted at 512 MB")
    bound = "lost 0, duplicates <= in-flight window (2000), order inversions 0, relay up and drained after the space is back"
    note = (f"recovery = space back (remount) to no row older than it left; the filler got "
            f"{filler.error.splitlines()[0][:140]}; writers while full: {refused_during}, first commit "
            f"{first_commit - t_freed:.2f} s after the remount; a new session to the full database: {new_conn}; relay "
            f"/readyz {st} while full; leases re-acquired afterwards: {reacquired}; relay logged {len(logged)} warnings while full"
            + (f", kinds: {' | '.join(kinds[:4])}" if kinds else ""))
    return case_line(name, bound, res, recovery, note), viol, {"check": short(res)}


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------

def wait_for_binary(path):
    t0 = time.monotonic()
    while not (os.path.isfile(path) and os.access(path, os.X_OK)):
        if time.monotonic() - t0 > 3600:
            raise HarnessError(f"{path} did not appear within an hour")
        log(f"waiting for {path} (checking every 30 s)")
        time.sleep(30)


def run_cases(a, seed, base, log_dir):
    ctx = Ctx(a, base, log_dir, Broker(log_dir), seed)
    table = {
        "failover-fast": lambda: case_failover(ctx, "fast"),
        "failover-immediate": lambda: case_failover(ctx, "immediate"),
        "failover-sync": lambda: case_failover(ctx, "sync"),
        "standby-only": lambda: case_standby_only(ctx),
        "clock-forward": lambda: case_clock_step(ctx, +600),
        "clock-backward": lambda: case_clock_step(ctx, -600),
        "clock-skew": lambda: case_clock_skew(ctx),
        "disk-full-wal": lambda: case_disk_full_wal(ctx),
        "disk-full-data": lambda: case_disk_full_data(ctx),
    }
    results = []
    for name in a.case or CASES:
        t0 = time.monotonic()
        log(f"case {name}")
        line, viol, detail = table[name]()
        took = time.monotonic() - t0
        results.append((name, line, viol))
        log(f"case {name}: {'OK' if not viol else 'VIOLATED ' + json.dumps(viol, default=str)} ({took:.1f} s)")
        log(f"  {json.dumps(line, ensure_ascii=False)}")
        log(f"  detail: {json.dumps(detail, default=str, ensure_ascii=False)}")
        if a.reliability_out:
            with open(a.reliability_out, "a") as f:
                f.write(json.dumps(line, sort_keys=True) + "\n")
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--relay", default=os.path.join(ROOT, ".build", "debug", "outbox-relay"))
    ap.add_argument("--reliability-out", help="append one fault-case JSON line per case (docs/RELIABILITY.md)")
    ap.add_argument("--log-dir", help="relay and PostgreSQL logs (default: a temporary directory, removed when all pass)")
    ap.add_argument("--check", action="store_true", help="exit 1 when a case's bound is violated")
    ap.add_argument("--seed", type=int, help="workload seed (default: random, printed)")
    ap.add_argument("--case", action="append", choices=CASES, help="run only this case (repeatable; default: all)")
    ap.add_argument("--clock-tool", choices=["shim", "libfaketime"], default="shim",
                    help="how a relay's wall clock is shifted (default: the built-in CLOCK_REALTIME shim; see clock_env)")
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1, 2**31)
    log(f"seed {seed}")
    if os.geteuid() != 0:
        log("warning: not root: initdb runs as this user; the disk-full case needs mount (root)")
    own_log_dir = a.log_dir is None
    log_dir = a.log_dir or tempfile.mkdtemp(prefix="faults-db-logs-")
    os.makedirs(log_dir, exist_ok=True)
    os.chmod(log_dir, 0o755)
    chown_pg(log_dir)
    log_dir = os.path.abspath(log_dir)
    base = tempfile.mkdtemp(prefix="faults-db-")
    os.chmod(base, 0o755)
    chown_pg(base)
    CLEANUP.push("run directory", lambda: shutil.rmtree(base, ignore_errors=True))

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    t0 = time.monotonic()
    try:
        wait_for_binary(a.relay)
        results = run_cases(a, seed, base, log_dir)
    except (HarnessError, cc.HarnessError, subprocess.CalledProcessError, psycopg.Error) as e:
        detail = f"\n{e.output}" if isinstance(e, subprocess.CalledProcessError) and e.output else ""
        log(f"harness error: {e}{detail}; logs in {log_dir}")
        return 2
    except Exception:
        import traceback
        log(f"harness error: {traceback.format_exc()}; logs in {log_dir}")
        return 2
    finally:
        CLEANUP.run_all()
    bad = [(n, v) for n, _l, v in results if v]
    log(f"{len(results)} case(s) in {time.monotonic() - t0:.1f} s; seed {seed}; "
        + ("all bounds held" if not bad else "VIOLATED: " + "; ".join(f"{n}: {json.dumps(v, default=str)}" for n, v in bad)))
    if bad or not own_log_dir:
        log(f"logs in {log_dir}")
    else:
        shutil.rmtree(log_dir, ignore_errors=True)
    return 1 if (bad and a.check) else 0


if __name__ == "__main__":
    sys.exit(main())
