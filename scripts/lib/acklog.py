"""The relay's acknowledgement logs (OUTBOX_RELAY_ACK_LOG), for the bench and the concurrency
harness: each line `<outbox id> <acknowledgement time, µs since the epoch>`, dated on librdkafka's
broker thread when the broker's acknowledgement was handled, written when the relay's producer
closes (so read them after the relays stopped)."""


def read_ack_logs(paths):
    """{outbox id: its first acknowledgement time, µs since the epoch} over `paths` (missing
    files are skipped)."""
    acked = {}
    for path in paths:
        try:
            with open(path) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                        i, t = int(parts[0]), int(parts[1])
                        if i not in acked or t < acked[i]:
                            acked[i] = t
        except OSError:
            pass
    return acked
