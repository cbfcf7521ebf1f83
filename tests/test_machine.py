"""What the machine has, read from /proc and the cgroup tree: the cores, the memory, and how busy
other processes keep the CPUs; a cgroup's limits count on the whole way up to the root."""
import os
import sys

import pytest

from charrnn.runtime import machine
from charrnn.runtime.machine import (
    MachineWatch,
    available_cores,
    available_memory,
    cgroup_directories,
    cgroup_memory_room,
    cgroup_quota,
)

CORES = len(os.sched_getaffinity(0))


def write_cgroup(tmp_path, lines, files):
    """A fake /proc (self/cgroup holding `lines`) and cgroup tree (`files`: path -> text)."""
    (tmp_path / "proc" / "self").mkdir(parents=True)
    (tmp_path / "proc" / "self" / "cgroup").write_text("\n".join(lines) + "\n")
    for path, text in files.items():
        (tmp_path / "cg" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "cg" / path).write_text(text)
    return tmp_path / "proc", tmp_path / "cg"


@pytest.mark.parametrize("lines, files, quota", [
    (["0::/job"], {"job/cpu.max": "150000 100000\n"}, 1.5),  # cgroup v2
    (["0::/job"], {"job/cpu.max": "max 100000\n"}, None),
    (["0::/a/b"], {"a/b/cpu.max": "max 100000", "a/cpu.max": "300000 100000"}, 3.0),  # a parent's quota
    (["0::/"], {}, None),
    (["4:memory:/x", "1:cpu,cpuacct:/job"], {"cpu/job/cpu.cfs_quota_us": "250000", "cpu/job/cpu.cfs_period_us": "100000"}, 2.5),
    (["1:cpu,cpuacct:/"], {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),  # v1, none
    (["0::/job"], {"job/cpu.max": "garbage"}, None),
])
def test_the_cgroup_quota_is_the_smallest_on_the_way_to_the_root(tmp_path, lines, files, quota):
    proc, cgroup = write_cgroup(tmp_path, lines, files)
    assert cgroup_quota(proc, cgroup) == quota


def test_available_cores_are_the_affinity_capped_by_the_quota_at_least_one(tmp_path):
    assert available_cores(tmp_path / "none", tmp_path / "none") == CORES
    proc, cgroup = write_cgroup(tmp_path, ["0::/j"], {"j/cpu.max": "50000 100000"})
    assert available_cores(proc, cgroup) == 1  # half a core: one thread


def write_stat(proc, cpu_ticks, running=1):
    """/proc/stat with per-CPU lines of (busy, idle) ticks."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    lines += [f"cpu{i} {busy} 0 0 {idle} 0 0 0 0 0 0" for i, (busy, idle) in enumerate(cpu_ticks)]
    lines += ["intr 1 2 3", f"procs_running {running}", "procs_blocked 0"]
    (proc / "stat").write_text("\n".join(lines) + "\n")


def test_busy_elsewhere_is_the_busy_time_of_our_cpus_less_our_own(tmp_path, monkeypatch):
    proc = tmp_path / "proc"
    (proc / "self" / "task").mkdir(parents=True)
    clock = {"wall": 100.0, "own": 5.0}
    monkeypatch.setattr(machine.time, "monotonic", lambda: clock["wall"])
    monkeypatch.setattr(machine.os, "times", lambda: os.times_result((clock["own"], 0, 0, 0, 0)))
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(machine.os, "sysconf", lambda name: 100)
    write_stat(proc, [(1000, 500), (2000, 500), (7000, 0)])  # cpu2 is not ours
    watch = MachineWatch(proc)
    # over 2 s: cpu0 busy 1.0 s, cpu1 busy 2.0 s, of which 1.5 s was this process: 1.5 s of others
    write_stat(proc, [(1100, 600), (2200, 500), (7200, 0)])
    clock.update(wall=102.0, own=6.5)
    assert watch.busy_elsewhere() == pytest.approx(0.75)
    write_stat(proc, [(1100, 800), (2200, 700), (7400, 0)])  # idle for 2 s, cpu2 busy
    clock.update(wall=104.0)
    assert watch.busy_elsewhere() == 0.0


def test_the_first_look_counts_runnable_tasks_that_are_not_ours(tmp_path, monkeypatch):
    proc = tmp_path / "proc"
    for task, state in (("1", "R"), ("2", "S"), ("3", "R")):
        (proc / "self" / "task" / task).mkdir(parents=True)
        (proc / "self" / "task" / task / "stat").write_text(f"{task} (python (x)) {state} 1 2 3\n")
    write_stat(proc, [(0, 0), (0, 0)], running=4)
    assert MachineWatch(proc).first_look(pause=0) == 2.0  # 4 running, 2 of them ours
    write_stat(proc, [(0, 0), (0, 0)], running=2)
    assert MachineWatch(proc).first_look(pause=0) == 0.0


@pytest.mark.parametrize("lines, files, room", [
    (["0::/job"], {"job/memory.max": "1000\n", "job/memory.current": "400\n"}, 600),  # cgroup v2
    (["0::/job"], {"job/memory.max": "max\n", "job/memory.current": "400\n"}, None),
    (["0::/a/b"], {"a/b/memory.max": "max", "a/b/memory.current": "10",
                   "a/memory.max": "500", "a/memory.current": "450"}, 50),  # a parent's limit
    (["0::/job"], {"job/memory.max": "100", "job/memory.current": "300"}, 0),  # over the limit: no room
    (["0::/"], {}, None),
    (["1:cpu:/x", "4:memory:/job"], {"memory/job/memory.limit_in_bytes": "2048",
                                     "memory/job/memory.usage_in_bytes": "48"}, 2000),  # cgroup v1
    (["4:memory:/"], {"memory/memory.limit_in_bytes": str(2**63 - 4096),
                      "memory/memory.usage_in_bytes": "48"}, None),  # v1, no limit
])
def test_the_memory_room_is_the_least_on_the_way_to_the_root(tmp_path, lines, files, room):
    proc, cgroup = write_cgroup(tmp_path, lines, files)
    assert cgroup_memory_room(proc, cgroup) == room


def test_the_cgroup_tree_is_walked_from_the_process_cgroup_to_the_root(tmp_path):
    proc, cgroup = write_cgroup(tmp_path, ["5:memory:/a/b", "3:cpu,cpuacct:/c", "0::/d/e"], {})
    assert list(cgroup_directories("memory", proc, cgroup)) == [
        (1, [cgroup / "memory/a/b", cgroup / "memory/a", cgroup / "memory"]), (2, [cgroup / "d/e", cgroup / "d", cgroup])]
    assert list(cgroup_directories("cpu", proc, cgroup)) == [
        (1, [cgroup / "cpu/c", cgroup / "cpu"]), (2, [cgroup / "d/e", cgroup / "d", cgroup])]


def test_available_memory_is_meminfo_lowered_by_the_cgroup_room(tmp_path):
    proc, cgroup = write_cgroup(tmp_path, ["0::/job"], {"job/memory.max": "5000", "job/memory.current": "1000"})
    (proc / "meminfo").write_text("MemTotal: 16 kB\nMemAvailable:       8 kB\n")
    assert available_memory(proc, cgroup) == 4000  # 4000 bytes of room < 8 kB
    (cgroup / "job" / "memory.max").write_text("max")
    assert available_memory(proc, cgroup) == 8 * 1024
    assert available_memory(tmp_path / "none", tmp_path / "none") is None


def test_available_memory_reads_the_machine():
    available = available_memory()
    if sys.platform.startswith("linux"):
        assert 0 < available <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
