"""CPU time of the machine's processes from /proc, for the bench and the concurrency harness."""
import os

CLK_TCK = os.sysconf("SC_CLK_TCK")


def all_cpu(postmaster=None):
    """{pid: (start time, ppid, cpu seconds)} of every process on the machine (the start time
    tells a reused pid apart; kernel workers rename themselves, so the name cannot). The
    postmaster's own entry adds its reaped children's times: the backends that exited (a
    pgbench's, a writer's) are counted there — in full, also any CPU used before a window."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            cpu = int(rest[11]) + int(rest[12])
            if int(d) == postmaster:
                cpu += int(rest[13]) + int(rest[14])
            out[int(d)] = (int(rest[19]), int(rest[1]), cpu / CLK_TCK)
        except (OSError, ValueError, IndexError):
            continue
    return out


def parent_pid(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def librdkafka_cpu(pid):
    """CPU seconds so far of `pid`'s librdkafka threads (named rdk:main, rdk:broker…): the part of a
    relay's CPU that is the Kafka client's own work — the same library in this relay and in the
    naive one (confluent-kafka). 0 when the process is gone."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                text = f.read()
        except OSError:
            continue  # the thread exited meanwhile
        name = text[text.index("(") + 1:text.rindex(")")]
        if name.startswith("rdk:"):
            rest = text.rsplit(")", 1)[1].split()
            total += int(rest[11]) + int(rest[12])
    return total / CLK_TCK
