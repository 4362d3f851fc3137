#!/usr/bin/env python3
"""Self-check of the harnesses' topic reader (concurrency.read_topics) against the running broker.

Every loss count the concurrency runs and the fault cases report comes from that reader, so it is
checked first: three idempotent producers write ids 0..N-1 in record batches (linger 2 ms) to a
fresh 4-partition topic, every one is acknowledged, and the reader must return each id exactly
once, with the partition ends it reports equal to the messages read from each partition; a second,
empty topic must read as nothing.

Tansu 0.6.0 answers ListOffsets(latest) with a partition's last batch's base offset + 1. The reader
that stopped at that answer read a round 22 000 or 23 000 of these 24 000 messages here; reading to
partition EOF (the Fetch responses' high watermark) reads them all.

Usage: check_reader.py BROKERS [--messages-per-producer N]. Exit 0 when every id was read, 1 if not,
2 on a harness error (a produce not acknowledged).
"""
import argparse
import multiprocessing
import sys
import uuid

from confluent_kafka import Producer

import concurrency as cc

PRODUCERS = 3


def produce(brokers, topic, producer, count, out):
    p = Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "linger.ms": 2})
    acked, errors = 0, []

    def on_delivery(err, _msg):
        nonlocal acked
        if err is None:
            acked += 1
        else:
            errors.append(str(err))
    for j in range(count):
        i = producer * count + j
        while True:
            try:
                p.produce(topic, key=f"k{i % 20}", value=str(i), headers={"outbox-id": str(i)}, on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.01)
        p.poll(0)
    left = p.flush(60)
    out.put((producer, acked, left, errors[:3]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("brokers")
    ap.add_argument("--messages-per-producer", type=int, default=8000)
    a = ap.parse_args()
    n = a.messages_per_producer
    topic = f"reader-check-{uuid.uuid4().hex[:8]}"
    empty = topic + "-empty"
    cc.create_topics(a.brokers, [topic, empty], 4)
    out = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=produce, args=(a.brokers, topic, i, n, out)) for i in range(PRODUCERS)]
    for p in procs:
        p.start()
    results = [out.get(timeout=180) for _ in procs]
    for p in procs:
        p.join()
    for producer, acked, left, errors in sorted(results):
        if acked != n or left:
            print(f"check-reader: harness error: producer {producer} acknowledged {acked} of {n} ({left} unflushed; {errors})")
            return 2
    msgs, ends = cc.read_topics(a.brokers, [topic, empty])
    ids = [m["id"] for m in msgs]
    want = set(range(PRODUCERS * n))
    missing = sorted(want - set(ids))
    extra = len(ids) - len(set(ids))
    per_partition = {}
    for m in msgs:
        per_partition[(m["topic"], m["partition"])] = per_partition.get((m["topic"], m["partition"]), 0) + 1
    bad_ends = {f"{t}[{p}]": (ends.get((t, p)), c) for (t, p), c in per_partition.items() if ends.get((t, p)) != c}
    bad_ends.update({f"{t}[{p}]": (e, 0) for (t, p), e in ends.items() if (t, p) not in per_partition})
    ok = not missing and not extra and not bad_ends and set(ids) <= want
    print(f"check-reader: {PRODUCERS} producers x {n} acknowledged; read {len(msgs)} messages, missing {len(missing)}"
          f"{' ' + str(missing[:5]) + '...' if missing else ''}, duplicates {extra}, partition ends {sorted(ends.values())}"
          f"{'' if not bad_ends else ', ends that differ from what was read (end, read): ' + str(bad_ends)}: "
          f"{'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
