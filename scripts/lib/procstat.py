"""CPU time of the machine's processes from /proc, for the bench and the concurrency harness."""
import os
import shutil
import signal
import subprocess

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


def thread_counters(pid):
    """One pass over `pid`'s threads: (CPU seconds so far of its librdkafka threads, voluntary
    context switches so far of all its threads). (0.0, 0) when the process is gone; a thread that
    exits meanwhile (an OSError or a half-read file) counts for neither.

    librdkafka's threads are named rdk:main, rdk:broker…: the part of a relay's CPU that is the
    Kafka client's own work — the same library in this relay and in the naive one
    (confluent-kafka). A voluntary context switch is a thread going to sleep (for a reply, a
    timer, a queue) and so one wake-up after it. On the bench's VM a wake-up that finds its vCPU
    halted is charged about 17 µs more than a hand-over (docs/BENCHMARKS.md, *Where the relay's
    CPU goes*), so at a trickle these are much of a relay's CPU. Threads that exit during a window
    take their counts with them."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0, 0
    ticks = sleeps = 0
    for tid in tids:
        task = f"/proc/{pid}/task/{tid}"
        try:
            name, rest = read_stat(f"{task}/stat")
            with open(f"{task}/status") as f:
                switches = next(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches:"))
            if name.startswith("rdk:"):
                ticks += int(rest[11]) + int(rest[12])
        except (OSError, ValueError, IndexError, StopIteration):
            continue
        sleeps += switches
    return ticks / CLK_TCK, sleeps


def threads_counters(pids):
    """``thread_counters`` summed over `pids`: (librdkafka CPU seconds, thread sleeps)."""
    rdk, sleeps = 0.0, 0
    for p in pids:
        r, s = thread_counters(p)
        rdk += r
        sleeps += s
    return rdk, sleeps


class BrokerSends:
    """What the librdkafka broker threads (rdk:broker…) of some processes did over a window,
    counted by perf's system-call tracepoints (`perf stat --per-thread`): their `sendmsg` calls,
    which on a plaintext connection are one per request (librdkafka writes a request with one
    `sendmsg` unless the socket is full, and a ProduceRequest carries one partition's batch,
    librdkafka #1700), their `recvmsg` calls and their context switches. Counting, not sampling:
    the cost is a counter increment per call. `BrokerSends.start(pids, path)` returns None where
    perf cannot count (not installed, no permission): the figures are then left out."""

    EVENTS = ("syscalls:sys_enter_sendmsg", "syscalls:sys_enter_recvmsg", "context-switches")
    NAMES = ("sends", "receives", "switches")
    _usable = None

    @classmethod
    def usable(cls):
        if cls._usable is None:
            cls._usable = bool(shutil.which("perf")) and subprocess.run(
                ["perf", "stat", "-x,", "-e", cls.EVENTS[0], "--", "true"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
        return cls._usable

    @classmethod
    def start(cls, pids, path):
        pids = [p for p in pids if p]
        if not pids or not cls.usable():
            return None
        self = cls()
        self.path = path
        # perf attaches to the threads that exist now; a relay's broker threads do by the window.
        self.thread_pid = {}
        for pid in pids:
            try:
                for tid in os.listdir(f"/proc/{pid}/task"):
                    self.thread_pid[int(tid)] = pid
            except OSError:
                continue
        self.proc = subprocess.Popen(["perf", "stat", "-x,", "--per-thread", "-e", ",".join(cls.EVENTS),
                                      "-p", ",".join(str(p) for p in pids), "-o", path],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def finish(self):
        """{pid: {"sends", "receives", "switches"}} summed over each process's rdk:broker threads;
        {} if perf gave nothing."""
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return {}
        out = {}
        try:
            with open(self.path) as f:
                lines = f.read().splitlines()
        except OSError:
            return {}
        for line in lines:
            fields = line.split(",")
            if len(fields) < 4 or fields[3] not in self.EVENTS or not fields[1].isdigit():
                continue
            comm, _, tid = fields[0].rpartition("-")
            pid = self.thread_pid.get(int(tid)) if tid.isdigit() else None
            if pid is None or not comm.startswith("rdk:broker"):
                continue
            counts = out.setdefault(pid, dict.fromkeys(self.NAMES, 0))
            counts[self.NAMES[self.EVENTS.index(fields[3])]] += int(fields[1])
        return out

    @staticmethod
    def per_row(counts, rows):
        """The window's broker sends per row, and per send the receives and context switches, over
        all the counted processes ({} when nothing was counted)."""
        total = dict.fromkeys(BrokerSends.NAMES, 0)
        for c in counts.values():
            for k in total:
                total[k] += c[k]
        if not total["sends"] or not rows:
            return {}
        return {"broker_sends": round(total["sends"] / rows, 4),
                "broker_receives_per_send": round(total["receives"] / total["sends"], 2),
                "broker_switches_per_send": round(total["switches"] / total["sends"], 2)}
