"""BLAS threads: `auto` gives OpenBLAS the cores no other process keeps busy and looks
again as training goes; no thread count, nor auto's changes, changes a number of training;
compare's workers split the cores; the CLI and the Python API take the same setting."""
import os

import numpy as np
import pytest
from click.testing import CliRunner
from threadpoolctl import threadpool_limits

from charrnn import cli
from charrnn.runtime import threads
from charrnn.training import start as training
from charrnn.base.errors import CharrnnError
from charrnn.runtime.threads import (AUTO, THREAD_VARIABLES, MachineWatch, Threads, available_cores, blas_thread_counts,
                             blas_threads, cgroup_quota, check_threads, default_threads, share)
from charrnn.training.events import Reporter
from test_train import InterruptAt, assert_same_checkpoints, config, text_file  # noqa: F401  (a fixture)

NO_THREAD_VARIABLES = dict.fromkeys(THREAD_VARIABLES)  # CliRunner's env: None unsets
CORES = len(os.sched_getaffinity(0))


def two_threads():
    """What the BLAS reports under a limit of 2 ([2], or [1] where it cannot run a second)."""
    with threadpool_limits(limits=2, user_api="blas"):
        return blas_thread_counts()


class FakeWatch:
    """A MachineWatch whose readings the test sets: `busy` CPUs' worth of other processes' work."""

    works = True

    def __init__(self, busy, cpus=(0, 1)):
        self.busy, self.cpus, self.looks = busy, list(cpus), 0

    def first_look(self):
        return self.busy(0) if callable(self.busy) else self.busy

    def busy_elsewhere(self):
        self.looks += 1
        return self.busy(self.looks) if callable(self.busy) else self.busy


@pytest.fixture
def two_cores(monkeypatch):
    """A machine of two free-to-use cores; auto looks at it at every adapt()."""
    monkeypatch.setattr(threads, "available_cores", lambda *args: 2)
    monkeypatch.setattr(threads, "CHECK_EVERY", 0.0)


# ---------------------------------------------------------------- the setting

@pytest.mark.parametrize("value, expected", [("auto", AUTO), (1, 1), (3, 3), ("2", 2), (np.int64(2), 2)])
def test_a_thread_setting_is_auto_or_a_positive_integer(value, expected):
    assert check_threads(value) == expected


@pytest.mark.parametrize("value", [0, -1, "0", "x", "", 1.5, True, None, "auto2"])
def test_any_other_thread_setting_is_refused_in_one_line(value):
    with pytest.raises(CharrnnError, match=r"^threads must be 'auto' or an integer >= 1, got"):
        check_threads(value)


def test_auto_is_the_default_unless_the_user_set_a_thread_variable(monkeypatch):
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert default_threads() == AUTO == threads.DEFAULT_THREADS
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert default_threads() is None


# ---------------------------------------------------------------- what the machine has

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
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock["wall"])
    monkeypatch.setattr(threads.os, "times", lambda: os.times_result((clock["own"], 0, 0, 0, 0)))
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(threads.os, "sysconf", lambda name: 100)
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


def test_without_proc_auto_runs_one_thread(tmp_path):
    watch = MachineWatch(tmp_path / "no-proc")
    assert not watch.works
    with Threads(AUTO, watch=watch) as applied:
        assert applied.count == 1 and blas_thread_counts() == [1] * len(blas_thread_counts())


# ---------------------------------------------------------------- auto at work

def test_auto_gives_blas_the_free_cores_and_follows_the_machine(two_cores):
    before, two = blas_thread_counts(), two_threads()
    busy = {0: 0.0, 1: 0.0, 2: 1.0, 3: 0.9, 4: 0.3, 5: 0.1}  # another process: none, a core, ..., a little
    with Threads(AUTO, watch=FakeWatch(lambda look: busy[look])) as applied:
        assert applied.count == 2 and blas_thread_counts() == two  # first look: idle
        seen = [(applied.adapt(), blas_thread_counts()) for _ in range(5)]
        assert applied.describe() == "auto (2 now)"
    assert seen == [(2, two), (1, [1] * len(two)), (1, [1] * len(two)), (1, [1] * len(two)), (2, two)]
    assert blas_thread_counts() == before  # restored


def test_auto_starts_on_one_thread_when_the_first_look_sees_a_busy_core(two_cores):
    with Threads(AUTO, watch=FakeWatch(1.0)) as applied:
        assert applied.count == 1 and applied.adapt() == 1


def test_a_limit_caps_auto_and_a_fixed_count_never_changes(two_cores):
    with Threads(AUTO, limit=1, watch=FakeWatch(0.0)) as applied:
        assert applied.count == 1 and applied.adapt() == 1
    with Threads(2, watch=FakeWatch(1.0)) as applied:
        assert applied.count == 2 and applied.adapt() == 2 and blas_thread_counts() == two_threads()


def test_one_row_holds_auto_at_one_thread_and_leaves_a_fixed_count(two_cores):
    two = two_threads()
    with Threads(AUTO, watch=FakeWatch(0.0)) as applied:
        with applied.one_row():
            assert applied.count == 1 and blas_thread_counts() == [1] * len(two)
            assert applied.adapt() == 1  # looking again does not lift it
        assert applied.count == 2 and blas_thread_counts() == two
    with Threads(2) as applied, applied.one_row():
        assert blas_thread_counts() == two


def test_blas_threads_is_the_python_api_of_the_setting():
    before = blas_thread_counts()
    with blas_threads(1) as applied:
        assert applied.count == 1 and blas_thread_counts() == [1] * len(before)
        np.ones((64, 64)) @ np.ones((64, 64))
    assert blas_thread_counts() == before
    with blas_threads(None) as applied:
        assert blas_thread_counts() == before and applied.describe().startswith("as the environment sets it")


@pytest.mark.parametrize("setting, jobs, shared", [
    (AUTO, 2, (AUTO, 2)), (AUTO, 3, (AUTO, 1)), (AUTO, 8, (AUTO, 1)), (4, 2, (2, None)), (1, 3, (1, None)),
    (None, 2, (None, None))])
def test_compare_workers_split_the_cores_between_them(monkeypatch, setting, jobs, shared):
    monkeypatch.setattr(threads, "available_cores", lambda *args: 4)
    assert share(setting, jobs) == shared


# ---------------------------------------------------------------- no count changes a number

class ThreadLog(Reporter):
    def __init__(self):
        self.counts = []

    def on_step(self, stats):
        self.counts.append(blas_thread_counts()[0])


@pytest.mark.parametrize("network", [dict(num_hiddens=128), dict(cell="lstm", num_hiddens=96, num_layers=2,
                                                                 dropout=0.2, lr=0.01)])
def test_one_thread_two_threads_and_auto_switching_every_step_train_to_the_same_bits(
        tmp_path, text_file, two_cores, network):
    """Products this size run on two OpenBLAS threads (m·n·k above its threshold), which split
    each product's output, never a sum."""
    cfg = config(text_file, **network, batch_size=32, num_steps=16, max_tokens=4096, eval_every=2048,
                 truncation="randomized:0.5")
    logs = {}
    for name, setting in [("one", 1), ("two", 2), ("auto", Threads(AUTO, watch=FakeWatch(lambda k: k % 2)))]:
        logs[name] = ThreadLog()
        training.train(cfg, tmp_path / name, reporter=logs[name], threads=setting)
    assert_same_checkpoints(tmp_path / "one", tmp_path / "two")
    assert_same_checkpoints(tmp_path / "one", tmp_path / "auto")
    most = max(two_threads())
    assert set(logs["one"].counts) == {1} and set(logs["two"].counts) == {most}
    assert set(logs["auto"].counts) == {1, most}  # it switched back and forth


def test_auto_trains_a_batch_of_one_row_on_one_thread(tmp_path, text_file, two_cores):
    log = ThreadLog()
    training.train(config(text_file, batch_size=1, max_tokens=64), tmp_path / "run", reporter=log,
                   threads=Threads(AUTO, watch=FakeWatch(0.0)))
    assert set(log.counts) == {1}


def test_a_run_resumed_with_another_thread_count_ends_where_it_would_have(tmp_path, text_file):
    cfg = config(text_file, num_hiddens=128, batch_size=32, num_steps=16, max_tokens=4096, eval_every=2048)
    training.train(cfg, tmp_path / "whole", threads=1)
    stopped = training.train(cfg, tmp_path / "split", reporter=InterruptAt(3), threads=2)
    assert stopped.reason == "SIGINT"
    training.resume(tmp_path / "split", threads=1)
    assert_same_checkpoints(tmp_path / "whole", tmp_path / "split")


# ---------------------------------------------------------------- the command line

def record_threads(monkeypatch, module, name):
    """Make cli `module`.`name` record the BLAS thread counts it runs with (and skip its work)."""
    seen = []

    class Done:
        rows, passed, text = [], True, ""

    def record(*args, **kwargs):
        seen.append(blas_thread_counts())
        return Done()

    monkeypatch.setattr(module, name, record)
    return seen


def test_commands_run_auto_by_default_and_restore_the_threads(monkeypatch, two_cores):
    seen = record_threads(monkeypatch, cli.inspection, "run_gradcheck")
    two = two_threads()
    for busy in (0.0, 1.0):
        monkeypatch.setattr(MachineWatch, "first_look", lambda self, busy=busy: busy)
        with threadpool_limits(limits=1, user_api="blas"):
            result = CliRunner().invoke(cli.main, ["gradcheck"], env=NO_THREAD_VARIABLES)
            assert result.exit_code == 0, result.output
            assert blas_thread_counts() == [1] * len(two)  # restored after the command
    assert seen == [two, [1] * len(two)]


def test_the_threads_option_and_the_thread_variables_choose_the_threads(monkeypatch):
    seen = record_threads(monkeypatch, cli.inspection, "run_gradcheck")
    two = two_threads()
    with threadpool_limits(limits=1, user_api="blas"):
        assert CliRunner().invoke(cli.main, ["--threads", "2", "gradcheck"], env=NO_THREAD_VARIABLES).exit_code == 0
        # a thread variable set by the user: the command leaves the library's threads as they are
        assert CliRunner().invoke(cli.main, ["gradcheck"], env={"OPENBLAS_NUM_THREADS": "3"}).exit_code == 0
    assert seen == [two, [1] * len(two)]
    for bad in ("0", "many"):
        result = CliRunner().invoke(cli.main, ["--threads", bad, "gradcheck"])
        assert result.exit_code == 2 and "threads must be 'auto' or an integer >= 1" in result.output


def test_sample_generates_on_one_thread_under_auto(monkeypatch, two_cores, tmp_path, text_file):
    training.train(config(text_file, max_tokens=64), tmp_path / "run", threads=1)
    monkeypatch.setattr(MachineWatch, "first_look", lambda self: 0.0)
    seen = record_threads(monkeypatch, cli.inspection, "sample_text")
    result = CliRunner().invoke(cli.main, ["sample", str(tmp_path / "run")], env=NO_THREAD_VARIABLES)
    assert result.exit_code == 0, result.output
    assert seen == [[1] * len(two_threads())]
