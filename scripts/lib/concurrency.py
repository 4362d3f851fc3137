#!/usr/bin/env python3
"""Concurrency workload and checker for outbox-relay (or the naive SKIP LOCKED relay).

Concurrent writer threads (one psycopg connection each) commit randomized transactions into a fresh
outbox table while one or more relays forward it to fresh Kafka topics; then the topics are read
from offset 0 and every promise the relay makes is checked against what the writers recorded.

Transaction shapes (drawn independently per transaction from --seed, per writer):
  60 %  take the xid first with a domain write (UPDATE <table>_domain SET n = n + 1 WHERE id = r,
        r one of 100 rows; long transactions use 100 rows of their own, so they block each other
        — a blocked UPDATE already holds its xid — but never stall the writers' stream: with one
        shared range, short transactions queued behind the long ones' row locks cut the rate
        to a third)
  1-3   outbox rows over --keys keys (key b'k<n>'; the key decides the topic, so a key's rows
        share one topic and partition)
  15 %  plus one row inserted inside a SAVEPOINT that is rolled back (must never be delivered)
   5 %  stay open 0.3-1.8 s before COMMIT (run on a connection of their own, so the writer's
        stream goes on: the long transactions overlap each other and the short ones)
  10 %  the whole transaction rolls back
  10 %  REPEATABLE READ (serialization failures are recorded as rollbacks)
Client-side, per transaction: first_insert_began (time.time() just before the first outbox INSERT
is sent), commit_returned (just after COMMIT returns), the outcome, and the ids (RETURNING id) of
the rows kept and rolled back.

Checks (violations make --check exit 1):
  missing                committed rows not found in Kafka
  rolled_back_delivered  rows of a rolled-back transaction or savepoint found in Kafka
  left_in_outbox         rows still in the table after the drain and the relays' stop
  duplicates             Σ(copies − 1) per id; a violation only with --restart none
  causal_inversions      rows b for which some row a of the same key, whose transaction's COMMIT
                         had returned before b's transaction began inserting, appears *after* b in
                         the partition (first occurrences). causal_inversion_pairs counts the pairs,
                         causal_overtaken_rows their distinct rows a (the late ones; reported only)
  intra_txn_inversions   pairs of rows of one transaction and key delivered out of id order
  stale_redeliveries     copies of a row a delivered after the last copy of a row b of its key that
                         a causally precedes: a consumer keeping the latest value per key would end
                         at a's. (A take-over's re-sends, a b a b, are not: b's last copy follows.)
                         A relay without the ownership rule makes them in the freeze run.
  unexpected_ids, payload_mismatches (key/value/headers differ from what was written),
  keys_on_several_partitions, relay_failures (a relay that crashed or did not exit 0 on SIGTERM),
  drain_timeout, no_committed_rows, writer_crashes
Reported only: id_order_inversions (a key's rows out of id order — id order is not commit order
under concurrent writers), latency commit_returned → Kafka message timestamp (CreateTime, set by
the producer) p50/p99/max, rows/s, shape counts.

Prints the seed first, a human-readable summary, and one line `CONCURRENCY_JSON {...}`.
Exit status: 0 ok (or violations without --check), 1 violations with --check, 2 harness error.
"""
import argparse
import bisect
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from procstat import BrokerSends, all_cpu, parent_pid, thread_counters
from acklog import read_ack_logs

HERE = os.path.dirname(os.path.abspath(__file__))
DOMAIN_ROWS = 100


def log(msg):
    print(f"concurrency: {msg}", flush=True)


def table_ident(name):
    return sql.SQL(".").join(sql.Identifier(p) for p in name.split("."))


class HarnessError(Exception):
    pass


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------

class Txn:
    __slots__ = ("label", "writer", "domain_first", "domain_row", "rows", "savepoint_at", "savepoint_key",
                 "long_s", "rollback", "repeatable_read", "first_insert_began", "commit_returned",
                 "outcome", "sqlstate", "kept", "rolled")

    def __init__(self, label, writer):
        self.label, self.writer = label, writer
        self.first_insert_began = self.commit_returned = None
        self.outcome, self.sqlstate = None, None
        self.kept = []    # [(id, key index, value bytes)]
        self.rolled = []  # [(id, key index)]


def draw_txn(rng, label, writer, keys):
    """Every draw is made for every transaction, so a seed gives the same shapes whatever the timing."""
    t = Txn(label, writer)
    t.domain_first = rng.random() < 0.60
    t.domain_row = rng.randrange(DOMAIN_ROWS) + 1
    n = rng.randint(1, 3)
    t.rows = []
    for i in range(n):
        # Now and then the same key twice in one transaction: intra-transaction order is checkable.
        t.rows.append(t.rows[-1] if i and rng.random() < 0.3 else rng.randrange(keys))
    sp = rng.random() < 0.15
    sp_at = rng.randint(0, n)
    sp_key = rng.randrange(keys)
    t.savepoint_at, t.savepoint_key = (sp_at, sp_key) if sp else (None, None)
    long_draw, long_s = rng.random(), rng.uniform(0.3, 1.8)
    t.long_s = long_s if long_draw < 0.05 else 0.0
    if t.long_s:
        t.domain_row += DOMAIN_ROWS  # the long transactions' own range (see the module doc)
    t.rollback = rng.random() < 0.10
    t.repeatable_read = rng.random() < 0.10
    return t


class Workload:
    def __init__(self, a, table, topics, rng_seed):
        self.a = a
        self.table = table
        self.topics = topics
        self.seed = rng_seed
        self.t = table_ident(table)
        self.domain = table_ident(table + "_domain")
        self.debezium = getattr(a, "layout", "native") == "debezium"
        if self.debezium:
            # Debezium's outbox layout, written as an application written for Debezium writes it;
            # the relay routes aggregatetype → topic, aggregateid → key, payload → value and
            # places `type` in header txn (see DEBEZIUM_OPTIONS).
            self.insert = sql.SQL("INSERT INTO {} (id, aggregatetype, aggregateid, type, payload) "
                                  "VALUES (gen_random_uuid(), %s, convert_from(%s, 'UTF8'), %s, %s::jsonb) "
                                  "RETURNING outbox_relay_id").format(self.t)
        else:
            self.insert = sql.SQL("INSERT INTO {} (topic, key, value, headers) VALUES (%s, %s, %s, %s) RETURNING id").format(self.t)
        self.update = sql.SQL("UPDATE {} SET n = n + 1 WHERE id = %s").format(self.domain)
        self.txns = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.spare = queue.LifoQueue()  # connections for the long transactions
        self.long_threads = []
        self.errors = []
        self.crashes = []

    def topic_of(self, key):
        return self.topics[key % len(self.topics)]

    def write(self, cur, topic, key, value, label):
        """Inserts one row; returns (id, the value as Kafka will carry it)."""
        if self.debezium:
            value = json.dumps({"v": value.hex()}).encode()  # jsonb::text renders it the same
            cur.execute(self.insert, (topic, key, label, value.decode()))
        else:
            cur.execute(self.insert, (topic, key, value, Jsonb({"txn": label})))
        return cur.fetchone()[0], value

    def connect(self):
        return psycopg.connect(self.a.database_url, autocommit=True, application_name="concurrency-writer")

    def run_txn(self, conn, t):
        cur = conn.cursor()
        inserted = []  # (id, key, value, kept?)
        commit_sent = False
        try:
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ" if t.repeatable_read else "BEGIN")
            if t.domain_first:
                cur.execute(self.update, (t.domain_row,))
            plan = [("row", k) for k in t.rows]
            if t.savepoint_at is not None:
                plan.insert(t.savepoint_at, ("savepoint", t.savepoint_key))
            for i, (kind, k) in enumerate(plan):
                key = b"k%d" % k
                value = f"{t.label}/{i}/".encode() + os.urandom(12)
                if kind == "savepoint":
                    cur.execute("SAVEPOINT s")
                if t.first_insert_began is None:
                    t.first_insert_began = time.time()
                rid, value = self.write(cur, self.topic_of(k), key, value, t.label)
                if kind == "savepoint":
                    cur.execute("ROLLBACK TO SAVEPOINT s")
                    t.rolled.append((rid, k))
                else:
                    inserted.append((rid, k, value))
            if t.long_s:
                time.sleep(t.long_s)
            if t.rollback:
                cur.execute("ROLLBACK")
                t.outcome = "rolled_back"
                t.rolled += [(rid, k) for rid, k, _ in inserted]
            else:
                commit_sent = True
                cur.execute("COMMIT")
                t.commit_returned = time.time()
                t.outcome = "committed"
                t.kept = inserted
        except psycopg.Error as e:
            t.sqlstate = getattr(e, "sqlstate", None)
            if commit_sent and (t.sqlstate is None or t.sqlstate.startswith("08") or t.sqlstate in ("57P01", "57P02", "57P03")):
                # The connection broke while COMMIT was under way (also when the server said why: a
                # shutdown or crash, 57P0x): it may or may not have committed.
                t.outcome = "unknown"
                t.kept = inserted
            else:
                t.outcome = "serialization_failure" if t.sqlstate in ("40001", "40P01") else "error"
                t.rolled += [(rid, k) for rid, k, _ in inserted]
                if t.outcome == "error":
                    self.errors.append(f"{t.label}: {e!r}")
            try:
                if not conn.broken:
                    conn.execute("ROLLBACK")
            except psycopg.Error:
                pass
        finally:
            cur.close()
        with self.lock:
            self.txns.append(t)

    def long_txn(self, t):
        try:
            conn = self.spare.get_nowait()
        except queue.Empty:
            conn = self.connect()
        try:
            self.run_txn(conn, t)
        finally:
            if conn.broken:
                conn.close()
            else:
                self.spare.put(conn)

    def writer(self, idx):
        try:
            self._writer(idx)
        except Exception as e:  # a harness bug or a lost database: the run is not valid
            self.crashes.append(f"writer {idx}: {e!r}")
            log(f"writer {idx} crashed: {e!r}")

    def _writer(self, idx):
        rng = random.Random(f"{self.seed}/writer/{idx}")
        pace = random.Random(f"{self.seed}/pace/{idx}")
        conn = self.connect()
        per_writer_rate = self.a.rate / self.a.writers if self.a.rate else None
        next_at = time.monotonic()
        n = 0
        try:
            while not self.stop.is_set():
                n += 1
                t = draw_txn(rng, f"w{idx}.{n}", idx, self.a.keys)
                if t.long_s:
                    th = threading.Thread(target=self.long_txn, args=(t,), daemon=True)
                    th.start()
                    with self.lock:
                        self.long_threads.append(th)
                else:
                    if conn.broken:
                        conn = self.connect()
                    self.run_txn(conn, t)
                if per_writer_rate:
                    # Paced on the rows meant to commit: a rolled-back transaction costs time only.
                    next_at += (0 if t.rollback else len(t.rows)) / per_writer_rate
                    now = time.monotonic()
                    if next_at > now:
                        time.sleep(next_at - now)
                    elif now - next_at > 1.0:
                        next_at = now - 1.0  # no catch-up burst after a long stall
                else:
                    time.sleep(pace.uniform(0, 2 * self.a.think_ms / 1000))
        finally:
            conn.close()

    def run(self, seconds):
        threads = [threading.Thread(target=self.writer, args=(i,), daemon=True) for i in range(self.a.writers)]
        t0 = time.time()
        for th in threads:
            th.start()
        self.stop.wait(seconds)
        self.stop.set()
        for th in threads:
            th.join()
        for th in list(self.long_threads):
            th.join()
        while True:
            try:
                self.spare.get_nowait().close()
            except queue.Empty:
                break
        return t0, time.time()


# --------------------------------------------------------------------------------------------
# CPU over the load window (--cpu; the bench's concurrent scenario)
# --------------------------------------------------------------------------------------------

class CpuWindow:
    """CPU used between start() and finish(): the relay processes, the PostgreSQL cluster (and of
    it the relays' own backends, told apart by application_name), every process of the machine.
    Only for runs whose relays live through the window (--restart none)."""

    def __init__(self, admin, replicas, naive, sends_path):
        self.admin = admin
        self.replicas = replicas
        self.naive = naive
        self.sends_path = sends_path  # perf's counts of the broker threads' system calls
        self.postmaster = parent_pid(admin.execute("SELECT pg_backend_pid()").fetchone()[0])

    def relay_backends(self):
        pattern = "naive-relay" if self.naive else "outbox-relay%"
        return {r[0] for r in self.admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE %s", (pattern,)).fetchall()}

    def relay_pids(self):
        return {r.proc.pid for r in self.replicas if r.proc is not None}

    def start(self):
        self.cpu0 = all_cpu(self.postmaster)
        self.threads0 = {p: thread_counters(p) for p in self.relay_pids()}
        self.sends = BrokerSends.start(sorted(self.relay_pids()), self.sends_path)
        self.t0 = time.monotonic()

    def finish(self, rows):
        backends = self.relay_backends()
        relay_pids = self.relay_pids()
        # librdkafka's threads (same library, same requests in both relays) apart from the rest,
        # and the relay threads' sleeps (voluntary context switches), each a wake-up after.
        threads = {p: thread_counters(p) for p in relay_pids}
        rdk = sum(threads[p][0] - self.threads0.get(p, (0.0, 0))[0] for p in relay_pids)
        sleeps = sum(threads[p][1] - self.threads0.get(p, (0.0, 0))[1] for p in relay_pids)
        sends = BrokerSends.per_row(self.sends.finish(), rows) if self.sends else {}
        cpu1 = all_cpu(self.postmaster)
        wall = time.monotonic() - self.t0
        delta = {pid: c - self.cpu0[pid][2] if pid in self.cpu0 and self.cpu0[pid][0] == start else c
                 for pid, (start, _ppid, c) in cpu1.items()}
        pm = self.postmaster
        pg = sum(delta[pid] for pid, (_, ppid, _) in cpu1.items() if pid == pm or ppid == pm)
        # A relay's threads are in its /proc/PID/stat; the naive relay is one process too.
        relay = sum(delta.get(p, 0.0) for p in relay_pids)
        relay_bk = sum(delta.get(p, 0.0) for p in backends)
        ms = lambda s: round(s * 1000 / rows, 4) if rows else None
        return {
            "window_seconds": round(wall, 3), "rows": rows,
            "relay_cpu_s": round(relay, 3), "relay_librdkafka_cpu_s": round(rdk, 3), "postgres_cpu_s": round(pg, 3),
            "postgres_relay_backends_cpu_s": round(relay_bk, 3),
            "machine_busy_share": round(sum(delta.values()) / (wall * (os.cpu_count() or 1)), 3) if wall > 0 else None,
            "per_row": {"relay_cpu_ms": ms(relay), "relay_librdkafka_cpu_ms": ms(rdk),
                        "relay_other_cpu_ms": ms(relay - rdk), "postgres_cpu_ms": ms(pg),
                        "postgres_relay_backends_cpu_ms": ms(relay_bk),
                        "postgres_other_cpu_ms": ms(pg - relay_bk),
                        "relay_plus_postgres_cpu_ms": ms(relay + pg),
                        "relay_wakeups": round(sleeps / rows, 2) if rows else None, **sends},
        }


# --------------------------------------------------------------------------------------------
# Relays
# --------------------------------------------------------------------------------------------

LEASE_MS = 6000          # the relays' --lease-duration-ms
FREEZE_SECONDS = 8.0     # --restart freeze: past the lease, so the shards are taken over


class Replica:
    def __init__(self, cmd, name, log_dir, ack_log=None):
        """`ack_log`: a file for the relay's acknowledgement log (OUTBOX_RELAY_ACK_LOG)."""
        self.cmd, self.name, self.log_dir, self.ack_log = cmd, name, log_dir, ack_log
        self.proc = None
        self.generation = 0
        self.retired = False  # stopped for good (--restart churn: a replica that left)
        self.log_path = None
        self.history = []  # (generation, pid, how it ended, exit code)

    def start(self):
        self.generation += 1
        self.log_path = os.path.join(self.log_dir, f"{self.name}.{self.generation}.log")
        logf = open(self.log_path, "wb")
        env = dict(os.environ, OUTBOX_RELAY_ACK_LOG=self.ack_log) if self.ack_log else None
        self.proc = subprocess.Popen(self.cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)
        logf.close()

    def tail(self, n=25):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Signals the process and waits for it. Returns (crashed before the signal, exit code)."""
        crashed = self.proc.poll() is not None
        if not crashed:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"{self.name} (pid {self.proc.pid}) did not exit within {timeout} s of {sig.name}; killing it")
            self.proc.kill()
            code = self.proc.wait()
            self.history.append((self.generation, self.proc.pid, f"{sig.name}, then SIGKILL after {timeout} s", code))
            return crashed, "timeout"
        self.history.append((self.generation, self.proc.pid, "crashed" if crashed else sig.name, code))
        return crashed, code


# --------------------------------------------------------------------------------------------
# Kafka
# --------------------------------------------------------------------------------------------

def create_topics(brokers, topics, partitions):
    admin = AdminClient({"bootstrap.servers": brokers})
    futures = admin.create_topics([NewTopic(t, partitions, 1) for t in topics], operation_timeout=30)
    for t, f in futures.items():
        f.result(timeout=60)
    # Wait until the metadata shows every partition (the relays' producers ask for it at once).
    deadline = time.monotonic() + 30
    while True:
        md = admin.list_topics(timeout=10)
        if all(t in md.topics and len(md.topics[t].partitions) == partitions for t in topics):
            return
        if time.monotonic() > deadline:
            raise HarnessError(f"topics {topics} not visible with {partitions} partitions after 30 s")
        time.sleep(0.2)


def read_topics(brokers, topics, timeout=180):
    """Every message of the topics, from offset 0 of every partition to its end, read after the
    relays stopped. Returns (messages, {(topic, partition): end offset} for non-empty partitions).

    A partition's end is where the consumer reports partition EOF: the high watermark of the Fetch
    responses. ListOffsets is not asked: Tansu 0.6.0 answers ListOffsets(latest) with the base
    offset of a partition's last record batch plus one, not the offset after its last message
    (measured: 455 messages in batches, answer 356; 45 messages in one batch, answer 1; the same
    with read_committed and read_uncommitted). A reader that stopped there missed the last batch
    of each partition whenever its consume calls did not happen to run past it: runs read a round
    8000 of 8046 messages (or a round 27 000 or 28 000 in the network case three-replicas), and
    the rows of those batches looked lost. Offset 0 explicitly, too,
    as its answer to ListOffsets(earliest) is no better. After every partition reached its end the
    read goes on for half a second more, and longer while messages still arrive."""
    c = Consumer({"bootstrap.servers": brokers, "group.id": f"concurrency-verify-{uuid.uuid4()}",
                  "enable.auto.commit": False, "enable.partition.eof": True, "fetch.wait.max.ms": 100})
    try:
        parts = []
        for t in topics:
            md = c.list_topics(t, timeout=10).topics[t]
            if md.error is not None:
                raise HarnessError(f"topic {t}: {md.error}")
            parts += [(t, p) for p in sorted(md.partitions)]
        if not parts:
            return [], {}
        c.assign([TopicPartition(t, p, 0) for t, p in parts])
        end = {}
        msgs = []
        deadline = time.monotonic() + timeout
        quiet_until = None
        while True:
            now = time.monotonic()
            if now > deadline:
                short = sorted(f"{t}[{p}]" for t, p in parts if (t, p) not in end)
                raise HarnessError(f"reading the topics timed out after {timeout} s; not at their end: {short}")
            if len(end) == len(parts):
                if quiet_until is None:
                    quiet_until = now + 0.5
                elif now >= quiet_until:
                    return msgs, {k: v for k, v in end.items() if v > 0}
            for m in c.consume(1000, timeout=0.2):
                k = (m.topic(), m.partition())
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        end[k] = m.offset()
                        continue
                    raise HarnessError(f"consume error: {m.error()}")
                if k in end and m.offset() >= end[k]:
                    log(f"{m.topic()}[{m.partition()}] has messages past the end it reported ({end[k]}): reading on")
                    del end[k]
                    quiet_until = None
                hdrs = dict((hk, hv) for hk, hv in (m.headers() or []))
                oid = hdrs.get("outbox-id")
                ts_type, ts = m.timestamp()
                msgs.append({"topic": m.topic(), "partition": m.partition(), "offset": m.offset(),
                             "key": m.key(), "value": m.value(), "ts_ms": ts if ts_type != 0 else None,
                             "id": int(oid) if oid is not None else None,
                             "txn": hdrs["txn"].decode() if hdrs.get("txn") is not None else None,
                             "headers": hdrs})
    finally:
        c.close()


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------

def pct(sorted_vals, p):
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, max(0, int(round(p / 100 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[i]


def analyze(txns, msgs, left_ids, restarted, freezes=(), acked=None):
    """`freezes`: (SIGSTOP, SIGCONT) wall-clock times of the run's frozen replicas (see below)."""
    committed = {}  # id -> (txn, key, value)
    rolled = {}     # id -> txn
    uncertain = set()
    for t in txns:
        if t.outcome == "committed":
            for rid, k, v in t.kept:
                committed[rid] = (t, k, v)
        elif t.outcome == "unknown":
            uncertain.update(rid for rid, _, _ in t.kept)
        for rid, _k in t.rolled:
            rolled[rid] = t

    occ = {}
    without_id = 0
    for m in msgs:
        if m["id"] is None:
            without_id += 1
            continue
        occ.setdefault(m["id"], []).append(m)
    for v in occ.values():
        v.sort(key=lambda m: (m["topic"], m["partition"], m["offset"]))

    res = {}
    missing = sorted(set(committed) - set(occ))
    res["missing"] = len(missing)
    rb = sorted(set(rolled) & set(occ))
    res["rolled_back_delivered"] = len(rb)
    unexpected = sorted(set(occ) - set(committed) - set(rolled) - uncertain)
    res["unexpected_ids"] = len(unexpected) + without_id
    res["left_in_outbox"] = len(left_ids)
    res["duplicates"] = sum(len(v) - 1 for v in occ.values())

    # Payload: key, value, topic and the txn header as written.
    mism = []
    for rid, (t, k, v) in committed.items():
        for m in occ.get(rid, ()):
            if m["key"] != b"k%d" % k or m["value"] != v or m["txn"] != t.label:
                mism.append(rid)
                break
    res["payload_mismatches"] = len(mism)

    # Group the delivered committed rows by (key, topic, partition) of their first occurrence.
    key_parts = {}
    groups = {}
    for rid, (t, k, _v) in committed.items():
        if rid not in occ:
            continue
        f = occ[rid][0]
        key_parts.setdefault(k, set()).add((f["topic"], f["partition"]))
        groups.setdefault((k, f["topic"], f["partition"]), []).append((f["offset"], rid, t))
    res["keys_on_several_partitions"] = sum(1 for s in key_parts.values() if len(s) > 1)

    inv_rows = inv_pairs = id_inv = overtaken = 0
    examples = []
    example_a = set()
    for (k, topic, part), rows in groups.items():
        rows.sort()
        # Causal: sweep from the highest offset down, keeping the commit times of the rows after.
        later = []          # sorted commit_returned of rows at higher offsets
        later_min = None    # (commit_returned, offset, id) minimum of those
        for off, rid, t in reversed(rows):
            n = bisect.bisect_left(later, t.first_insert_began)
            if n:
                inv_rows += 1
                inv_pairs += n
                if len(examples) < 3 and later_min[2] not in example_a:
                    ca, offa, ida = later_min
                    example_a.add(ida)
                    examples.append({
                        "key": f"k{k}", "topic": topic, "partition": part,
                        "b_id": rid, "b_offset": off, "b_txn": t.label, "b_first_insert_began": t.first_insert_began,
                        "a_id": ida, "a_offset": offa, "a_txn": committed[ida][0].label, "a_commit_returned": ca,
                        "a_committed_ms_before_b_began": round((t.first_insert_began - ca) * 1000, 3),
                    })
            bisect.insort(later, t.commit_returned)
            if later_min is None or t.commit_returned < later_min[0]:
                later_min = (t.commit_returned, off, rid)
        # The other side of the same pairs: rows a overtaken by some row b begun after a committed.
        earlier = []  # sorted first_insert_began of rows at lower offsets
        for _off, _rid, t in rows:
            if len(earlier) - bisect.bisect_right(earlier, t.commit_returned):
                overtaken += 1
            bisect.insort(earlier, t.first_insert_began)
        # Id order (informational).
        top = None
        for _off, rid, _t in rows:
            if top is not None and rid < top:
                id_inv += 1
            else:
                top = rid
    # Stale re-deliveries: a copy of row a that arrives after the *last* copy of a row b of its key
    # which a causally precedes (a's COMMIT returned before b's transaction began inserting). A
    # consumer that keeps the latest value per key (a compacted topic, an upsert) then ends at a's
    # value although b came later. Re-sending after a take-over (a, b, a, b) is not one: b's last
    # copy still follows. A replica that sends a shard's rows after losing it would make them.
    #
    # One kind is counted apart, not as a violation: a copy created (CreateTime, the producer's
    # clock at its produce call) before a replica was frozen, landing after a row b whose last copy
    # was created after the freeze began. Such a copy was inside the frozen replica's Kafka client
    # when it stopped, and librdkafka sends a message it holds on resume although its
    # message.timeout.ms passed meanwhile (docs/DESIGN.md, *Ownership*: only fencing at the broker
    # stops it). A copy created after the freeze began, or against a b created before it, remains
    # a violation: a relay that produces after losing its lease makes those.
    stale = 0
    held = 0
    stale_examples = []
    slack = 0.05  # seconds: CreateTime is in milliseconds; the harness notes SIGSTOP just before sending it
    for (k, topic, part), rows in groups.items():
        # Each row's last copy in this partition (its copies are sorted by offset).
        last_copy = {rid: [m for m in occ[rid] if (m["topic"], m["partition"]) == (topic, part)][-1] for _off, rid, _t in rows}
        last = sorted((last_copy[rid]["offset"], t.first_insert_began, rid) for _off, rid, t in rows)
        for _off, rid, t in rows:
            for m in occ[rid][1:]:
                if (m["topic"], m["partition"]) != (topic, part):
                    continue
                n = bisect.bisect_left(last, (m["offset"],))
                later = [(lo, b) for lo, began, b in last[:n] if began > t.commit_returned]
                if later and m["ts_ms"] is not None and any(
                        m["ts_ms"] / 1000 <= stop + slack
                        and all(last_copy[b]["ts_ms"] is not None and last_copy[b]["ts_ms"] / 1000 >= stop - slack for _lo, b in later)
                        for stop, _cont in freezes):
                    held += 1
                elif later:
                    stale += 1
                    if len(stale_examples) < 3:
                        b_last, b_id = later[-1]
                        # Every copy of both, with its CreateTime (set at the producer's produce call):
                        # the later copy of a created before b's means the broker put it after b.
                        stale_examples.append({"key": f"k{k}", "topic": topic, "partition": part, "a_id": rid,
                                               "a_copy_offset": m["offset"], "b_id": b_id, "b_last_offset": b_last,
                                               "copies": {str(i): [(c["offset"], c["ts_ms"]) for c in occ[i]] for i in (rid, b_id)}})
    res["stale_redeliveries"] = stale
    res["stale_held_through_freeze"] = held
    res["causal_inversions"] = inv_rows
    res["causal_inversion_pairs"] = inv_pairs
    res["causal_overtaken_rows"] = overtaken
    res["id_order_inversions"] = id_inv

    intra = 0
    for t in txns:
        if t.outcome != "committed" or len(t.kept) < 2:
            continue
        by_key = {}
        for rid, k, _v in t.kept:
            if rid in occ:
                f = occ[rid][0]
                by_key.setdefault(k, []).append((rid, (f["topic"], f["partition"], f["offset"])))
        for lst in by_key.values():
            lst.sort()
            for i in range(len(lst)):
                for j in range(i + 1, len(lst)):
                    if lst[i][1] > lst[j][1]:
                        intra += 1
    res["intra_txn_inversions"] = intra

    # Latency: COMMIT returned → the first copy's CreateTime.
    lat = []
    worst = []
    for rid, (t, _k, _v) in committed.items():
        if t.writer >= 0 and rid in occ and occ[rid][0]["ts_ms"] is not None:  # not the warm-up rows
            ms = occ[rid][0]["ts_ms"] - t.commit_returned * 1000
            lat.append(ms)
            worst.append((ms, rid, t.label))
    lat.sort()
    worst.sort(reverse=True)
    res["latency_ms"] = {"rows": len(lat), "p50": r3(pct(lat, 50)), "p90": r3(pct(lat, 90)), "p99": r3(pct(lat, 99)),
                         "max": r3(lat[-1] if lat else None), "min": r3(lat[0] if lat else None),
                         "over_1s": sum(1 for x in lat if x > 1000)}
    res["slowest"] = [{"id": rid, "txn": lbl, "ms": r3(ms)} for ms, rid, lbl in worst[:3]]
    # COMMIT returned → the broker's acknowledgement (the relay's acknowledgement log, µs): the
    # promise itself; CreateTime above is the produce call, floored to a millisecond.
    if acked:
        ca = sorted(acked[rid] / 1000 - t.commit_returned * 1000 for rid, (t, _k, _v) in committed.items()
                    if t.writer >= 0 and rid in acked)
        res["commit_to_ack_ms"] = {"rows": len(ca), "p50": r3(pct(ca, 50)), "p90": r3(pct(ca, 90)),
                                   "p99": r3(pct(ca, 99)), "max": r3(ca[-1] if ca else None)}
    res["examples"] = {
        "causal_inversions": examples, "stale_redeliveries": stale_examples,
        "missing": missing[:10], "rolled_back_delivered": rb[:10], "unexpected_ids": unexpected[:10],
        "left_in_outbox": sorted(left_ids)[:10], "payload_mismatches": mism[:10],
    }
    res["committed_rows"] = len(committed)
    res["rolled_back_rows"] = len(rolled)
    res["uncertain_rows"] = len(uncertain)
    res["messages"] = len(msgs)
    res["duplicates_are_violations"] = not restarted
    return res


def r3(x):
    return None if x is None else round(x, 3)


VIOLATIONS = ["missing", "rolled_back_delivered", "left_in_outbox", "causal_inversions", "intra_txn_inversions", "stale_redeliveries",
              "unexpected_ids", "payload_mismatches", "keys_on_several_partitions"]


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------

def run(a, seed):
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:10]
    table = a.table or f"conc_{tag}"
    topics = [f"conc-{tag}-t{i}" for i in range(a.topics)]
    log_dir = a.log_dir or tempfile.mkdtemp(prefix="concurrency-")
    os.makedirs(log_dir, exist_ok=True)
    kind = "naive" if a.naive else "relay"
    log(f"{kind} x{a.relays}, restart {a.restart}, {a.writers} writers, {a.seconds} s, "
        f"rate {a.rate or f'unpaced (think {a.think_ms} ms)'}, {a.keys} keys, topics {', '.join(topics)} "
        f"({a.partitions} partitions), table {table}, logs {log_dir}")

    admin = psycopg.connect(a.database_url, autocommit=True, application_name="concurrency-admin")
    t = table_ident(table)
    if a.relay and (not a.naive or a.naive_migrated_table):
        subprocess.run([a.relay, "migrate", "--database-url", a.database_url, "--table", table] + layout_args(a),
                       check=True, stdout=subprocess.DEVNULL)
        if a.naive:
            # The naive relay does not LISTEN: the relay's NOTIFY trigger is its cost, not the
            # naive relay's (as in the bench's steady scenario).
            for (tg,) in admin.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
                                       (t.as_string(admin),)).fetchall():
                admin.execute(sql.SQL("DROP TRIGGER {} ON {}").format(sql.Identifier(tg), t))
    else:
        admin.execute(sql.SQL("""CREATE TABLE {} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            topic text NOT NULL, key bytea, value bytea, headers jsonb,
            created_at timestamptz NOT NULL DEFAULT clock_timestamp())""").format(t))
    admin.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0)").format(
        table_ident(table + "_domain")))
    admin.execute(sql.SQL("INSERT INTO {} (id) SELECT generate_series(1, %s)").format(
        table_ident(table + "_domain")), (2 * DOMAIN_ROWS,))
    create_topics(a.brokers, topics, a.partitions)

    if a.naive:
        base = [sys.executable, os.path.join(HERE, "naive_relay.py"), "--database-url", a.database_url,
                "--brokers", a.brokers, "--table", table]
    else:
        base = [a.relay, "run", "--database-url", a.database_url, "--brokers", a.brokers, "--table", table,
                "--http-port", "0"]
        if not (a.cpu and a.restart == "none"):
            # Short leases and timeouts for the fault cases: a stopped replica's shards are taken
            # over within seconds. A CPU measurement (no restarts) runs the relay's defaults, as
            # users do: a heartbeat every 5 s, not every 300 ms.
            base += ["--lease-duration-ms", str(LEASE_MS), "--heartbeat-interval-ms", "300",
                     "--message-timeout-ms", "2000", "--statement-timeout-ms", "1000", "--poll-interval-ms", "200"]
        base += layout_args(a)
    replicas = []
    for i in range(a.relays):
        name = f"{table}-r{i}"
        cmd = base + (["--replica-name", name] if not a.naive else []) + list(a.relay_arg)
        # A CPU measurement also times each row's acknowledgement (COMMIT → acknowledgement).
        ack_log = os.path.join(log_dir, f"{name}.acks") if a.cpu and not a.naive else None
        replicas.append(Replica(cmd, name, log_dir, ack_log))

    wl = Workload(a, table, topics, seed)
    out = {"seed": seed, "config": {
        "relay": "naive" if a.naive else a.relay, "relays": a.relays, "restart": a.restart, "writers": a.writers,
        "seconds": a.seconds, "rate": a.rate, "think_ms": a.think_ms, "keys": a.keys, "topics": topics,
        "partitions": a.partitions, "table": table}}
    relay_failures = []
    restart_info = None
    freezes = []  # (SIGSTOP, SIGCONT) wall-clock times, for analyze
    leases_sql = sql.SQL("SELECT DISTINCT owner FROM {} WHERE owner IS NOT NULL AND expires_at > now()").format(
        table_ident(table + "_leases"))

    def pick_victim():
        """A live replica that holds shards now, if any does: with --shard-spread load the others
        stand by, and a fault that hits only a standby tests little."""
        live = [r for r in replicas if not r.retired]
        if a.naive:
            return live[rng.randrange(len(live))]
        try:
            with psycopg.connect(a.database_url, autocommit=True) as c:
                holders = {row[0] for row in c.execute(leases_sql)}
        except psycopg.Error:
            holders = set()
        candidates = [r for r in live if r.name in holders] or live
        return candidates[rng.randrange(len(candidates))]

    def stop_replica(victim, sig, during):
        """Stops `victim` with `sig`; a replica already dead, or one that fails its SIGTERM, is a
        relay failure. Returns its exit code."""
        crashed, code = victim.stop(sig)
        if crashed:
            relay_failures.append(f"{victim.name} gen {victim.generation} had exited ({code}) before {during}")
        elif sig == signal.SIGTERM and code != 0:
            relay_failures.append(f"{victim.name} gen {victim.generation} exited {code} on SIGTERM")
        return code

    def freeze_replica(victim, seconds):
        """SIGSTOP, `seconds`, SIGCONT; noted for analyze. Returns when it stopped (wall clock)."""
        stopped = time.time()
        victim.proc.send_signal(signal.SIGSTOP)
        time.sleep(seconds)
        victim.proc.send_signal(signal.SIGCONT)
        freezes.append((stopped, time.time()))
        return stopped

    try:
        for r in replicas:
            r.start()
        # Warm-up: one committed row per key, relayed before the clock starts (producers connected,
        # shards leased). These rows are part of the checks like any other.
        warm = Txn("warmup", -1)
        with admin.transaction():
            warm.first_insert_began = time.time()
            for k in range(a.keys):
                v = b"warmup/%d" % k
                rid, v = wl.write(admin.cursor(), wl.topic_of(k), b"k%d" % k, v, "warmup")
                warm.kept.append((rid, k, v))
        warm.commit_returned = time.time()
        warm.outcome = "committed"
        wl.txns.append(warm)
        t_w = time.monotonic()
        count_sql = sql.SQL("SELECT count(*) FROM {}").format(t)
        while admin.execute(count_sql).fetchone()[0]:
            for r in replicas:
                if r.proc.poll() is not None:
                    raise HarnessError(f"{r.name} exited with {r.proc.returncode} during warm-up:\n{r.tail()}")
            if time.monotonic() - t_w > 60:
                raise HarnessError("warm-up rows not relayed within 60 s:\n" + "".join(r.tail() for r in replicas))
            time.sleep(0.1)
        log(f"warm-up relayed in {time.monotonic() - t_w:.2f} s; writing for {a.seconds} s")

        # Restart one replica at the write phase's midpoint.
        restart_thread = None
        if a.restart == "rolling":
            # A Kubernetes rolling deploy: every replica replaced in turn with SIGTERM, spread
            # over the write phase (each new one started before the next is stopped).
            def roll():
                nonlocal restart_info
                rolled = []
                for i, victim in enumerate(replicas):
                    if wl.stop.wait(a.seconds * (i + 1) / (len(replicas) + 1) - (a.seconds * i / (len(replicas) + 1))):
                        return
                    t0 = time.monotonic()
                    code = stop_replica(victim, signal.SIGTERM, "the roll")
                    victim.start()
                    rolled.append({"replica": victim.name, "exit_code": code, "stop_seconds": round(time.monotonic() - t0, 3)})
                    log(f"rolling: {victim.name} SIGTERM → exit {code}; started again")
                restart_info = {"signal": "SIGTERM", "rolling": rolled}

            restart_thread = threading.Thread(target=roll, daemon=True)
            restart_thread.start()
        elif a.restart == "freeze":
            # A replica frozen (SIGSTOP: a stalled VM, a long GC or swap storm, a debugger) for
            # longer than its lease, then resumed with its claimed rows, open producer and stale
            # idea of its shards: the others take its shards over meanwhile. What it then sends and
            # deletes must not reorder a key or lose a row (its DELETEs are lease-checked).
            # Frozen early enough to resume with writes still going on (so it takes shards back
            # under load, a second hand-over): from max(1 s, the write phase − freeze − 1.5 s).
            def freeze():
                nonlocal restart_info
                if wl.stop.wait(max(1.0, a.seconds - FREEZE_SECONDS - 1.5)):
                    return
                victim = pick_victim()
                if victim.proc.poll() is not None:
                    relay_failures.append(f"{victim.name} gen {victim.generation} had exited ({victim.proc.returncode}) before the freeze")
                    return
                log(f"freeze: {victim.name} SIGSTOP for {FREEZE_SECONDS:g} s (lease {LEASE_MS / 1000:g} s)")
                stopped = freeze_replica(victim, FREEZE_SECONDS)
                restart_info = {"replica": victim.name, "signal": "SIGSTOP", "frozen_seconds": FREEZE_SECONDS,
                                "lease_seconds": LEASE_MS / 1000, "stopped_at": stopped}
                log(f"freeze: {victim.name} SIGCONT")

            restart_thread = threading.Thread(target=freeze, daemon=True)
            restart_thread.start()
        elif a.restart == "churn":
            # Replicas coming and going all through the write phase, one event every 0.5-2.5 s
            # (drawn from the seed): one killed (SIGKILL) or stopped (SIGTERM) and started again,
            # one frozen within or past its lease and resumed, a new replica joining (up to
            # --relays + 2 running), one leaving for good (at least one stays).
            def churn():
                nonlocal restart_info
                events = []
                t_start = time.monotonic()
                while not wl.stop.wait(rng.uniform(0.5, 2.5)):
                    live = [r for r in replicas if not r.retired]
                    action = rng.choices(["kill", "term", "freeze", "join", "leave"], [25, 20, 20, 20, 15])[0]
                    if action == "join" and len(live) >= a.relays + 2 or action == "leave" and len(live) <= 1:
                        action = "kill"
                    at = round(time.monotonic() - t_start, 2)
                    if action == "join":
                        name = f"{table}-r{len(replicas)}"
                        r = Replica(base + ["--replica-name", name] + list(a.relay_arg), name, log_dir)
                        r.start()
                        replicas.append(r)
                        events.append({"at": at, "action": "join", "replica": name})
                        continue
                    victim = pick_victim()
                    if action == "freeze":
                        seconds = rng.choice([rng.uniform(0.5, 3.0), rng.uniform(LEASE_MS / 1000 + 1, LEASE_MS / 1000 + 3)])
                        freeze_replica(victim, seconds)
                        events.append({"at": at, "action": "freeze", "replica": victim.name, "seconds": round(seconds, 2)})
                        continue
                    sig = signal.SIGKILL if action == "kill" else signal.SIGTERM
                    code = stop_replica(victim, sig, f"the churn's {sig.name}")
                    if action == "leave":
                        victim.retired = True
                    else:
                        victim.start()
                    events.append({"at": at, "action": action, "replica": victim.name, "exit_code": code})
                restart_info = {"churn": events}
                log(f"churn: {len(events)} events: " + ", ".join(f"{e['action']} {e['replica'].rsplit('-', 1)[1]}" for e in events))

            restart_thread = threading.Thread(target=churn, daemon=True)
            restart_thread.start()
        elif a.restart != "none":
            sig = signal.SIGTERM if a.restart == "sigterm" else signal.SIGKILL

            def restart():
                nonlocal restart_info
                if wl.stop.wait(a.seconds / 2):
                    return
                victim = pick_victim()
                t0 = time.monotonic()
                code = stop_replica(victim, sig, "the restart")
                stopped = time.monotonic() - t0
                victim.start()
                restart_info = {"replica": victim.name, "signal": sig.name, "exit_code": code,
                                "stop_seconds": round(stopped, 3)}
                log(f"restart: {victim.name} {sig.name} → exit {code} after {stopped:.2f} s; started again")

            restart_thread = threading.Thread(target=restart, daemon=True)
            restart_thread.start()

        cpu_window = None
        if a.cpu and a.restart == "none":
            cpu_window = CpuWindow(admin, replicas, a.naive, os.path.join(log_dir, "broker-sends.csv"))
            cpu_window.start()
        t0, t1 = wl.run(a.seconds)
        if restart_thread:
            restart_thread.join()
        writes_s = t1 - t0
        n_committed = sum(len(x.kept) for x in wl.txns if x.outcome == "committed" and x.writer >= 0)
        log(f"write phase: {writes_s:.1f} s (the last long transactions end after {a.seconds:g} s), {n_committed} rows "
            f"committed ({n_committed / a.seconds:.0f} rows/s); draining")

        t_d = time.monotonic()
        drain_timeout = False
        while True:
            left = admin.execute(count_sql).fetchone()[0]
            if not left:
                break
            if time.monotonic() - t_d > a.drain_timeout:
                drain_timeout = True
                log(f"drain timeout: {left} rows still in the outbox after {a.drain_timeout} s")
                break
            time.sleep(0.1)
        drain_s = time.monotonic() - t_d
        # The window: from the writers' start to the outbox empty (the warm-up rows were relayed
        # before it), with every relay still running.
        cpu = cpu_window.finish(n_committed) if cpu_window is not None else None
        if not drain_timeout:
            log(f"outbox empty {drain_s:.2f} s after the last write")
        for r in replicas:
            if r.retired:
                continue
            crashed, code = r.stop(signal.SIGTERM)
            if crashed:
                # The run directory may be removed after the run: keep the crash's last lines here.
                relay_failures.append(f"{r.name} gen {r.generation} crashed with exit {code}; its log ends:\n{r.tail(15)}")
                log(f"relay {r.name} gen {r.generation} exited {code} before the end; log tail:\n{r.tail(15)}")
            elif code != 0:
                relay_failures.append(f"{r.name} gen {r.generation} exited {code} on SIGTERM")
        for f in relay_failures:
            log(f"relay failure: {f}")
        id_column = "outbox_relay_id" if getattr(a, "layout", "native") == "debezium" else "id"
        left_ids = [row[0] for row in admin.execute(sql.SQL("SELECT {} FROM {}").format(sql.Identifier(id_column), t)).fetchall()]
        dead = None
        if admin.execute("SELECT to_regclass(%s)", (table + "_dead_letters",)).fetchone()[0]:
            dead = admin.execute(sql.SQL("SELECT count(*) FROM {}").format(table_ident(table + "_dead_letters"))).fetchone()[0]
        t_r = time.monotonic()
        msgs, _high = read_topics(a.brokers, topics)
        log(f"read {len(msgs)} messages in {time.monotonic() - t_r:.1f} s")
    finally:
        for r in replicas:
            if r.proc is not None and r.proc.poll() is None:
                r.proc.send_signal(signal.SIGCONT)  # a replica left frozen by an error
                r.proc.kill()
                r.proc.wait()
        admin.close()

    acked = read_ack_logs([r.ack_log for r in replicas if r.ack_log])
    res = analyze(wl.txns, msgs, left_ids, restarted=a.restart != "none", freezes=freezes, acked=acked)
    shapes = {"transactions": 0, "domain_first": 0, "savepoint": 0, "long": 0, "rollback": 0, "repeatable_read": 0,
              "committed": 0, "rolled_back": 0, "serialization_failure": 0, "error": 0, "unknown": 0}
    for x in wl.txns:
        if x.writer < 0:
            continue
        shapes["transactions"] += 1
        shapes["domain_first"] += x.domain_first
        shapes["savepoint"] += x.savepoint_at is not None
        shapes["long"] += bool(x.long_s)
        shapes["rollback"] += x.rollback
        shapes["repeatable_read"] += x.repeatable_read
        shapes[x.outcome] += 1
    res["relay_failures"] = len(relay_failures)
    res["drain_timeout"] = int(drain_timeout)
    res["no_committed_rows"] = int(n_committed == 0)
    res["writer_crashes"] = len(wl.crashes)
    viol = {k: res[k] for k in VIOLATIONS + ["relay_failures", "drain_timeout", "no_committed_rows", "writer_crashes"]
            if res[k]}
    if res["duplicates"] and a.restart == "none":
        viol["duplicates"] = res["duplicates"]
    out.update(res)
    out.update({
        "ok": not viol, "violations": viol, "shapes": shapes,
        "write_seconds": round(writes_s, 3), "rows_per_s": round(n_committed / a.seconds, 1),
        "drain_seconds_after_writes": round(drain_s, 3), "dead_letters": dead,
        "restart_info": restart_info, "relay_failure_details": relay_failures, "cpu": cpu,
        "relay_history": {r.name: r.history for r in replicas},
        "writer_errors": (wl.crashes + wl.errors)[:10], "log_dir": log_dir,
    })
    return out


def report(o):
    L = o["latency_ms"]
    s = o["shapes"]
    lines = [
        f"  transactions {s['transactions']}: committed {s['committed']}, rolled back {s['rolled_back']}, "
        f"serialization failures {s['serialization_failure']}, errors {s['error']}, unknown {s['unknown']} "
        f"(domain-first {s['domain_first']}, savepoint {s['savepoint']}, long {s['long']}, "
        f"rollback {s['rollback']}, repeatable read {s['repeatable_read']})",
        f"  rows: committed {o['committed_rows']} ({o['rows_per_s']:.0f} rows/s; writes ended after {o['write_seconds']:.1f} s), "
        f"rolled back {o['rolled_back_rows']}, messages {o['messages']}; "
        + (f"outbox NOT empty {o['drain_seconds_after_writes']:.1f} s after the writes (drain timeout)" if o["drain_timeout"]
           else f"outbox empty {o['drain_seconds_after_writes']:.2f} s after the writes"),
        f"  missing {o['missing']}, rolled back but delivered {o['rolled_back_delivered']}, left in outbox "
        f"{o['left_in_outbox']}, duplicates {o['duplicates']}{'' if o['duplicates_are_violations'] else ' (restart: reported only)'}, "
        f"unexpected {o['unexpected_ids']}, payload mismatches {o['payload_mismatches']}",
        f"  causal inversions {o['causal_inversions']} rows ({o['causal_inversion_pairs']} pairs, "
        f"{o['causal_overtaken_rows']} rows overtaken), "
        f"intra-transaction inversions {o['intra_txn_inversions']}, stale re-deliveries {o['stale_redeliveries']} "
        f"(and {o['stale_held_through_freeze']} held in a frozen replica's Kafka client through its freeze: reported only), "
        f"keys on >1 partition {o['keys_on_several_partitions']}; "
        f"id-order inversions {o['id_order_inversions']} (informational)",
        f"  latency COMMIT returned → Kafka CreateTime: p50 {L['p50']} ms, p90 {L['p90']} ms, p99 {L['p99']} ms, "
        f"max {L['max']} ms, min {L['min']} ms, over 1 s: {L['over_1s']} rows",
    ]
    A = o.get("commit_to_ack_ms")
    if A:
        lines.append(f"  latency COMMIT returned → acknowledgement (relay's acknowledgement log, {A['rows']} rows): p50 {A['p50']} ms, "
                     f"p90 {A['p90']} ms, p99 {A['p99']} ms, max {A['max']} ms")
    if o.get("cpu"):
        c, P = o["cpu"], o["cpu"]["per_row"]
        lines.append(f"  CPU per row over {c['window_seconds']:.1f} s (writers' start → outbox empty): relay {P['relay_cpu_ms']} ms "
                     f"(librdkafka's threads {P.get('relay_librdkafka_cpu_ms')}, the rest {P.get('relay_other_cpu_ms')}), "
                     f"PostgreSQL {P['postgres_cpu_ms']} ms (the relay's backends {P['postgres_relay_backends_cpu_ms']}, "
                     f"the rest {P['postgres_other_cpu_ms']}); machine {100 * (c['machine_busy_share'] or 0):.0f} % busy")
    if o["dead_letters"]:
        lines.append(f"  dead letters: {o['dead_letters']}")
    if o["restart_info"]:
        lines.append(f"  restart: {o['restart_info']}")
    for e in o["examples"]["causal_inversions"]:
        lines.append(f"  causal inversion: key {e['key']} {e['topic']}[{e['partition']}]: id {e['b_id']} (txn {e['b_txn']}, "
                     f"offset {e['b_offset']}) began inserting {e['a_committed_ms_before_b_began']} ms after id {e['a_id']} "
                     f"(txn {e['a_txn']}) had committed, but id {e['a_id']} is at offset {e['a_offset']}")
    for k in ("missing", "rolled_back_delivered", "unexpected_ids", "left_in_outbox", "payload_mismatches"):
        if o["examples"][k]:
            lines.append(f"  {k} (first ids): {o['examples'][k]}")
    if o["slowest"]:
        lines.append(f"  slowest rows: {o['slowest']}")
    if o["writer_errors"]:
        lines.append(f"  writer errors: {o['writer_errors']}")
    lines.append(f"  result: {'OK' if o['ok'] else 'VIOLATIONS ' + json.dumps(o['violations'])}")
    return "\n".join(lines)


# --layout debezium: the table is adopted by `migrate --layout debezium`, rows are written in
# Debezium's columns, and the relay routes them with these EventRouter options: the topic is the
# aggregatetype itself, the transaction label travels in `type` → header txn.
DEBEZIUM_OPTIONS = ["route.topic.replacement=${routedByValue}", "table.fields.additional.placement=type:header:txn"]


def layout_args(a):
    if getattr(a, "layout", "native") != "debezium":
        return []
    out = ["--layout", "debezium"]
    for o in DEBEZIUM_OPTIONS:
        out += ["--debezium-option", o]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--relay", help="outbox-relay binary (also used for `migrate`; optional with --naive)")
    ap.add_argument("--naive", action="store_true", help="run scripts/lib/naive_relay.py instances instead")
    ap.add_argument("--relay-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for each relay (repeat; e.g. --relay-arg=--log-level=debug)")
    ap.add_argument("--table", help="outbox table to create (default: conc_<random>)")
    ap.add_argument("--layout", choices=["native", "debezium"], default="native",
                    help="debezium: a table in Debezium's outbox layout, written with Debezium's columns (relay only)")
    ap.add_argument("--seed", type=int, help="workload seed (default: random, printed)")
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rate", type=float, help="target committed rows/s over all writers (default: unpaced)")
    ap.add_argument("--think-ms", type=float, default=10.0,
                    help="unpaced: mean pause between a writer's transactions (uniform 0..2x; default 10, "
                         "about 1000 committed rows/s with 8 writers on a 2-core machine)")
    ap.add_argument("--relays", type=int, default=1)
    ap.add_argument("--restart", choices=["none", "sigterm", "sigkill", "rolling", "freeze", "churn"], default="none",
                    help="restart one replica at the write phase's midpoint (sigterm, sigkill), or every replica in turn "
                         "with SIGTERM (rolling: a rolling deploy), or freeze one (SIGSTOP) for "
                         f"{FREEZE_SECONDS:g} s, past its {LEASE_MS / 1000:g} s lease, then resume it (SIGCONT) while "
                         "the writes go on, or churn: replicas killed, stopped, frozen, joining and leaving all "
                         "through the writes (an event every 0.5-2.5 s)")
    ap.add_argument("--reliability-out", help="append the run's figures as a fault-case line (docs/RELIABILITY.md)")
    ap.add_argument("--topics", type=int, default=2)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--keys", type=int, default=20)
    ap.add_argument("--drain-timeout", type=float, default=60)
    ap.add_argument("--log-dir", help="relay logs (default: a temporary directory, removed when the run is OK)")
    ap.add_argument("--json-out")
    ap.add_argument("--naive-migrated-table", action="store_true",
                    help="--naive with --relay: the naive relay's table is made by the relay's migrate (txid, the retry columns and "
                         "the other columns the relay needs), less its NOTIFY trigger, instead of a minimal table")
    ap.add_argument("--cpu", action="store_true",
                    help="measure the relays' and PostgreSQL's CPU from the writers' start to the outbox empty "
                         "(with --restart none; the bench's concurrent scenario). The relays then run with their "
                         "default leases and timeouts instead of the fault cases' short ones")
    ap.add_argument("--check", action="store_true", help="exit 1 on any violation")
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1, 2**31)
    print(f"concurrency: seed {seed}", flush=True)
    if not a.naive and not a.relay:
        ap.error("--relay is required unless --naive")
    own_log_dir = a.log_dir is None
    try:
        o = run(a, seed)
    except (HarnessError, subprocess.CalledProcessError, psycopg.Error) as e:
        log(f"harness error: {e}")
        return 2
    print(report(o), flush=True)
    line = json.dumps(o, separators=(",", ":"), default=str)
    print("CONCURRENCY_JSON " + line, flush=True)
    if a.json_out:
        with open(a.json_out, "w") as f:
            f.write(line + "\n")
    if a.reliability_out:
        kind = {"none": "", "sigterm": ", one replica restarted with SIGTERM midway",
                "sigkill": ", one replica killed (SIGKILL) midway and restarted", "rolling": ", every replica replaced in turn with SIGTERM (rolling deploy)",
                "freeze": f", one replica frozen (SIGSTOP) {FREEZE_SECONDS:g} s, past its {LEASE_MS / 1000:g} s lease, then resumed under writes",
                "churn": ", replicas killed, stopped, frozen (within and past the lease), joining and leaving all through the writes"}[a.restart]
        lat = o.get("latency_ms") or {}
        case = {
            "name": f"concurrent writers: {a.writers} sessions, {a.seconds:g} s, random transaction shapes, {a.relays} relay(s){kind}"
                    + (", Debezium-layout table" if a.layout == "debezium" else "")
                    + (f", relay arguments {' '.join(a.relay_arg)}" if a.relay_arg else ""),
            "bound": "missing 0, rolled back delivered 0, causal same-key inversions 0, stale re-deliveries 0"
                     + (" (copies held in a frozen replica's Kafka client through its freeze: reported)" if a.restart in ("freeze", "churn") else "")
                     + (", duplicates 0" if a.restart == "none" else ", duplicates reported"),
            "inserted": o.get("committed_rows", 0), "lost": o.get("missing", 0), "duplicates": o.get("duplicates", 0),
            "orderInversions": o.get("causal_inversions", 0), "pending": o.get("left_in_outbox", 0), "deadLettered": o.get("dead_letters", 0),
            "recoverySeconds": o.get("drain_seconds_after_writes"),
            "note": f"seed {seed}; commit → Kafka p50 {lat.get('p50')} / p99 {lat.get('p99')} / max {lat.get('max')} ms; "
                    + (f"copies held through a freeze {o.get('stale_held_through_freeze', 0)}; " if a.restart in ("freeze", "churn") else "")
                    + f"recovery = last write to backlog 0; inversions counted from client-side commit and insert times",
        }
        with open(a.reliability_out, "a") as f:
            f.write(json.dumps(case, sort_keys=True) + "\n")
    if o["ok"] and own_log_dir:
        shutil.rmtree(o["log_dir"], ignore_errors=True)
    elif not o["ok"]:
        log(f"relay logs kept in {o['log_dir']}; reproduce the shapes with --seed {seed}")
    return 1 if (a.check and not o["ok"]) else 0


if __name__ == "__main__":
    sys.exit(main())
