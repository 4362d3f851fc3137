#!/usr/bin/env python3
"""A minimal outbox relay of the kind people write, for comparison with outbox-relay
(scripts/lib/concurrency.py --naive, scripts/bench's `concurrent` scenario).

    loop:
        BEGIN
        SELECT id, topic, key, value, headers FROM T ORDER BY id LIMIT 1000 FOR UPDATE SKIP LOCKED
        produce each row (idempotent producer, linger.ms=5, murmur2_random, header outbox-id = id)
        flush
        DELETE FROM T WHERE id = ANY(ids)
        COMMIT
        no rows: sleep 20 ms (--idle-ms)

A failed delivery rolls the batch back (its rows are produced again: at-least-once). Runs until
SIGTERM/SIGINT; the batch in progress is finished first. Needs psycopg and confluent-kafka
(scripts/bootstrap installs both into .tools/venv).
"""
import argparse
import json
import signal
import sys
import time

import psycopg
from psycopg import sql
from confluent_kafka import Producer


def table_ident(name):
    return sql.SQL(".").join(sql.Identifier(p) for p in name.split("."))


def header_value(v):
    if v is None:
        return None
    return v if isinstance(v, str) else json.dumps(v)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--table", default="outbox")
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--idle-ms", type=float, default=20, help="sleep after a poll that found no rows (default 20)")
    a = ap.parse_args()

    stop = {"now": False}

    def on_signal(_sig, _frame):
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    producer = Producer({
        "bootstrap.servers": a.brokers,
        "enable.idempotence": True,
        "linger.ms": 5,
        "partitioner": "murmur2_random",
        "message.timeout.ms": 10000,
    })
    t = table_ident(a.table)
    select = sql.SQL("SELECT id, topic, key, value, headers FROM {} ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED").format(t)
    delete = sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(t)
    conn = psycopg.connect(a.database_url, autocommit=False, application_name="naive-relay")
    relayed = 0
    while not stop["now"]:
        try:
            with conn.cursor() as cur:
                cur.execute(select, (a.batch_size,))
                rows = cur.fetchall()
                if not rows:
                    conn.rollback()
                    time.sleep(a.idle_ms / 1000)
                    continue
                errors = []

                def on_delivery(err, _msg):
                    if err is not None:
                        errors.append(err)

                for rid, topic, key, value, headers in rows:
                    hdrs = [(k, header_value(v)) for k, v in (headers or {}).items()]
                    hdrs.append(("outbox-id", str(rid)))
                    while True:
                        try:
                            producer.produce(topic, value=value, key=key, headers=hdrs, on_delivery=on_delivery)
                            break
                        except BufferError:
                            producer.poll(0.05)
                    producer.poll(0)
                while producer.flush(1.0) > 0:
                    pass
                if errors:
                    print(f"naive-relay: {len(errors)} delivery failures (first: {errors[0]}); batch rolled back",
                          file=sys.stderr, flush=True)
                    conn.rollback()
                    time.sleep(0.2)
                    continue
                cur.execute(delete, ([r[0] for r in rows],))
            conn.commit()
            relayed += len(rows)
        except psycopg.Error as e:
            print(f"naive-relay: database error: {e}", file=sys.stderr, flush=True)
            time.sleep(0.5)
            if conn.broken or conn.closed:
                conn = psycopg.connect(a.database_url, autocommit=False, application_name="naive-relay")
            else:
                conn.rollback()
    producer.flush(10)
    conn.close()
    print(f"naive-relay: stopped after relaying {relayed} rows", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
