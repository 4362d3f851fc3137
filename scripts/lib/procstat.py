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
            _, rest = read_stat(f"/proc/{d}/stat")
            cpu = int(rest[11]) + int(rest[12])
            if int(d) == postmaster:
                cpu += int(rest[13]) + int(rest[14])
            out[int(d)] = (int(rest[19]), int(rest[1]), cpu / CLK_TCK)
        except (OSError, ValueError, IndexError):
            continue
    return out


def read_stat(path):
    """A /proc stat file as (the thread's or process's name, the fields after it): the name is
    in parentheses and may itself hold spaces and parentheses."""
    with open(path) as f:
        text = f.read()
    return text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 1:].split()


def parent_pid(pid):
    return int(read_stat(f"/proc/{pid}/stat")[1][1])


def proc_cpu(pid):
    """utime+stime of a process in seconds, or None when it is gone."""
    try:
        rest = read_stat(f"/proc/{pid}/stat")[1]
        return (int(rest[11]) + int(rest[12])) / CLK_TCK
    except (OSError, IndexError):
        return None


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
            name, rest = read_stat(f"/proc/{pid}/task/{tid}/stat")
        except OSError:
            continue  # the thread exited meanwhile
        if name.startswith("rdk:"):
            total += int(rest[11]) + int(rest[12])
    return total / CLK_TCK
