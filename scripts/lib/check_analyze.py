#!/usr/bin/env python3
"""Self-check of the concurrency checker (concurrency.analyze) on hand-made partitions.

Two committed rows of one key, a then b, where a's COMMIT returned before b's transaction began
(so a causally precedes b). Each case lists the partition's messages as (row, offset) and the
counts analyze must report. Run by scripts/test before the concurrency runs; exit 1 on a wrong count.
"""
import sys

import concurrency as cc


class Txn:
    def __init__(self, label, began, committed, rid):
        self.label, self.first_insert_began, self.commit_returned = label, began, committed
        self.kept, self.rolled, self.outcome, self.writer = [(rid, 1, label.encode())], [], "committed", 0


A = Txn("a", 1.0, 1.1, 1)
B = Txn("b", 2.0, 2.1, 2)

CASES = [
    ("in order", [(1, 0), (2, 1)], {"causal_inversions": 0, "stale_redeliveries": 0, "duplicates": 0, "missing": 0}),
    ("b overtakes a", [(2, 0), (1, 1)], {"causal_inversions": 1, "stale_redeliveries": 0}),
    ("take-over re-send a b a b", [(1, 0), (2, 1), (1, 2), (2, 3)], {"causal_inversions": 0, "stale_redeliveries": 0, "duplicates": 2}),
    ("a re-sent before b", [(1, 0), (1, 1), (2, 2)], {"causal_inversions": 0, "stale_redeliveries": 0, "duplicates": 1}),
    ("a re-sent after b's last copy", [(1, 0), (2, 1), (1, 2)], {"causal_inversions": 0, "stale_redeliveries": 1, "duplicates": 1}),
    ("b lost", [(1, 0)], {"missing": 1}),
]

# With a replica frozen from 10 to 20 s: (row, offset, CreateTime ms).
FREEZES = [(10.0, 20.0)]
FREEZE_CASES = [
    ("a's copy created before the freeze lands after b, created after it (held in the client)",
     [(1, 0, 15000), (2, 1, 16000), (1, 2, 9900)], {"stale_redeliveries": 0, "stale_held_through_freeze": 1}),
    ("a's copy created after the freeze began lands after b's last copy",
     [(1, 0, 15000), (2, 1, 16000), (1, 2, 10200)], {"stale_redeliveries": 1, "stale_held_through_freeze": 0}),
    ("a's copy and b both created before the freeze, a's after b's",
     [(1, 0, 3000), (2, 1, 4000), (1, 2, 9900)], {"stale_redeliveries": 1, "stale_held_through_freeze": 0}),
]


def main():
    bad = 0
    runs = [(name, [(rid, off, off) for rid, off in seq], want, ()) for name, seq, want in CASES]
    runs += [(name, seq, want, FREEZES) for name, seq, want in FREEZE_CASES]
    for name, seq, want, freezes in runs:
        msgs = [{"topic": "t", "partition": 0, "offset": off, "key": b"k1", "value": (A if rid == 1 else B).label.encode(),
                 "ts_ms": ts, "id": rid, "txn": (A if rid == 1 else B).label, "headers": {}} for rid, off, ts in seq]
        got = cc.analyze([A, B], msgs, [], restarted=True, freezes=freezes)
        wrong = {k: (got[k], v) for k, v in want.items() if got[k] != v}
        if wrong:
            bad += 1
            print(f"check-analyze: {name}: got, wanted {wrong}")
    print(f"check-analyze: {len(runs)} hand-made partitions: " + ("OK" if not bad else f"{bad} FAILED"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
