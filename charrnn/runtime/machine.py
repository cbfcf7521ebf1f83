"""What the machine has for this process, read from /proc and the cgroup tree (Linux; elsewhere
each reading is None or a safe default): the cores (`available_cores`), the memory
(`available_memory`) and how busy other processes keep the CPUs (`MachineWatch`).

A cgroup limit applies to the processes of the cgroup and of all its descendants, so a limit
is looked for on the whole way from this process's cgroup to the root (`cgroup_directories`)
and the tightest one counts, for CPU quotas and memory limits alike.
"""
import math
import os
import time
from pathlib import Path

PROC = Path("/proc")
CGROUP = Path("/sys/fs/cgroup")
NO_LIMIT = 1 << 60  # a cgroup v1 memory limit at least this large means none


def read_text(path) -> str:
    """The text of a file of /proc or the cgroup tree, "" when it cannot be read."""
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return ""


def _read_int(path):
    """The integer a file starts with, or None (unreadable, empty, "max")."""
    fields = read_text(path).split()
    return int(fields[0]) if fields and fields[0].isdigit() else None


def _up_to(root, path):
    """root/path, its parents, ..., root (the directories of a cgroup and its ancestors)."""
    directory = root / path.strip("/")
    yield directory
    while directory != root and root in directory.parents:
        directory = directory.parent
        yield directory


def cgroup_directories(controller, proc=PROC, cgroup=CGROUP):
    """For each cgroup hierarchy of this process that holds `controller` ("cpu", "memory"):
    (version, [the directory of its cgroup, of the parent, ..., of the root]). cgroup v2 has
    one hierarchy holding every controller, mounted at `cgroup`; v1 one per controller, at
    cgroup/controller."""
    for line in read_text(proc / "self" / "cgroup").splitlines():
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            yield 2, list(_up_to(cgroup, path))
        elif controller in controllers.split(","):
            yield 1, list(_up_to(cgroup / controller, path))


def cgroup_quota(proc=PROC, cgroup=CGROUP):
    """CPUs' worth of time per second the cgroups of this process may use (the smallest quota
    on the way from its cgroup to the root), or None when none is set or readable.
    cgroup v2: cpu.max "QUOTA PERIOD" or "max PERIOD"; v1: cpu.cfs_quota_us (-1: none) and
    cpu.cfs_period_us."""
    quotas = []
    for version, directories in cgroup_directories("cpu", proc, cgroup):
        names = ("cpu.max",) if version == 2 else ("cpu.cfs_quota_us", "cpu.cfs_period_us")
        for directory in directories:
            fields = " ".join(read_text(directory / name) for name in names).split()
            if len(fields) == 2 and fields[0].lstrip("-").isdigit() and fields[1].isdigit():
                quota, period = int(fields[0]), int(fields[1])
                if quota > 0 and period > 0:
                    quotas.append(quota / period)
    return min(quotas) if quotas else None


def cgroup_memory_room(proc=PROC, cgroup=CGROUP):
    """Bytes left under the cgroup memory limits of this process (the least room on the way
    from its cgroup to the root), or None when none is set or readable. cgroup v2: memory.max
    ("max": none) less memory.current; v1: memory.limit_in_bytes less memory.usage_in_bytes."""
    rooms = []
    for version, directories in cgroup_directories("memory", proc, cgroup):
        names = ("memory.max", "memory.current") if version == 2 else \
            ("memory.limit_in_bytes", "memory.usage_in_bytes")
        for directory in directories:
            limit, usage = (_read_int(directory / name) for name in names)
            if limit is not None and usage is not None and limit < NO_LIMIT:
                rooms.append(max(limit - usage, 0))
    return min(rooms) if rooms else None


def available_cores(proc=PROC, cgroup=CGROUP) -> int:
    """The cores this process may use: its CPU affinity, capped by its cgroup's CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_quota(proc, cgroup)
    return max(1, min(cores, math.floor(quota)) if quota is not None else cores)


def _meminfo_available(proc=PROC):
    for line in read_text(proc / "meminfo").splitlines():
        fields = line.split()
        if fields[:1] == ["MemAvailable:"] and len(fields) > 1 and fields[1].isdigit():
            return int(fields[1]) * 1024
    return None


def available_memory(proc=PROC, cgroup=CGROUP):
    """Bytes this process can still allocate: /proc/meminfo's MemAvailable, lowered by the room
    left under a cgroup limit; None where neither is known (not Linux)."""
    known = [n for n in (_meminfo_available(proc), cgroup_memory_room(proc, cgroup)) if n is not None]
    return min(known) if known else None


class MachineWatch:
    """How many of this process's CPUs other processes keep busy, from /proc: `first_look()` at
    once, `busy_elsewhere()` over the time since the last call."""

    def __init__(self, proc=PROC):
        self.proc = proc
        self.cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.last = self.reading()

    @property
    def works(self) -> bool:
        """Whether /proc/stat could be read (Linux)."""
        return self.last is not None

    def first_look(self, looks=3, pause=0.002) -> float:
        """Runnable tasks of the whole system that are not this process's threads, now: the
        fewest of `looks` counts `pause` seconds apart (a task that runs for a moment is no load)."""
        counts = []
        for look in range(looks):
            if look:
                time.sleep(pause)
            stat = read_text(self.proc / "stat")
            running = [int(line.split()[1]) for line in stat.splitlines() if line.startswith("procs_running ")]
            own = sum(read_text(task / "stat").rpartition(")")[2].split()[:1] == ["R"]
                      for task in (self.proc / "self" / "task").glob("*"))
            counts.append(max(0, running[0] - max(1, own)) if running else 0)
        return float(min(counts))

    def busy_elsewhere(self) -> float:
        """CPUs' worth of time other processes used on this process's CPUs since the last call
        (their busy time less this process's CPU time, over the wall time)."""
        now = self.reading()
        if now is None or self.last is None:
            return 0.0
        (wall, busy, own), (wall0, busy0, own0) = now, self.last
        self.last = now
        if wall - wall0 <= 0:
            return 0.0
        return max(0.0, ((busy - busy0) / self.tick - (own - own0)) / (wall - wall0))

    def reading(self):
        """(wall seconds, busy ticks of this process's CPUs, this process's CPU seconds), or None."""
        busy = 0
        found = False
        for line in read_text(self.proc / "stat").splitlines():
            name, _, rest = line.partition(" ")
            if not name.startswith("cpu") or name == "cpu" or not name[3:].isdigit():
                continue
            if self.cpus is not None and int(name[3:]) not in self.cpus:
                continue
            ticks = [int(field) for field in rest.split()]
            # user nice system idle iowait irq softirq steal [guest guest_nice, counted in user]
            busy += sum(ticks[:8]) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)
            found = True
        if not found:
            return None
        times = os.times()
        return time.monotonic(), busy, times.user + times.system
