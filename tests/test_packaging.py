"""How charrnn installs and what importing it does: one package, nothing set on import,
BLAS threads set by the command (threadpoolctl) while it runs."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from threadpoolctl import threadpool_limits

from charrnn import cli
from charrnn.threads import THREAD_VARIABLES, blas_thread_counts, blas_threads, default_threads

REPO = Path(__file__).resolve().parents[1]
NO_THREAD_VARIABLES = dict.fromkeys(THREAD_VARIABLES)  # CliRunner's env: None unsets


def test_a_built_wheel_holds_only_the_charrnn_package(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md", "cli.py"):
        shutil.copy(REPO / name, source / name)
    for name in ("charrnn", "corpora"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "--no-index", "-w", str(tmp_path / "dist"), str(source)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp_path / "dist").glob("charrnn-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    top_level = {name.split("/")[0] for name in names}
    assert {name for name in top_level if not name.endswith(".dist-info")} == {"charrnn"}, top_level
    assert "charrnn/cli/__init__.py" in names and "charrnn/__main__.py" in names
    assert "charrnn/corpora/registry.json" in names
    assert "charrnn = charrnn.entry:main" in entry_points


def test_importing_charrnn_and_its_cli_sets_no_environment_and_no_threads():
    script = ("import os, numpy\n"
              "from threadpoolctl import threadpool_info\n"
              "before = (dict(os.environ), threadpool_info())\n"
              "import charrnn, charrnn.cli, charrnn.training, charrnn.threads\n"
              "print(before == (dict(os.environ), threadpool_info()))\n")
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


def run_gradcheck_recording_threads(monkeypatch):
    """Make `charrnn gradcheck` record the BLAS thread counts it runs with (and skip the work)."""
    seen = []

    class Passed:
        rows, passed = [], True

    def record(**options):
        seen.append(blas_thread_counts())
        return Passed()

    monkeypatch.setattr(cli.inspection, "run_gradcheck", record)
    return seen


def test_the_command_runs_with_one_blas_thread_by_default_and_restores_them(monkeypatch):
    seen = run_gradcheck_recording_threads(monkeypatch)
    with threadpool_limits(limits=2, user_api="blas"):
        outside = blas_thread_counts()
        result = CliRunner().invoke(cli.main, ["gradcheck"], env=NO_THREAD_VARIABLES)
        assert result.exit_code == 0, result.output
        assert blas_thread_counts() == outside  # restored after the command
    assert seen == [[1] * len(outside)] and outside, (seen, outside)


def test_threads_option_and_environment_variables_choose_the_blas_threads(monkeypatch):
    seen = run_gradcheck_recording_threads(monkeypatch)
    with threadpool_limits(limits=2, user_api="blas"):
        two = blas_thread_counts()  # [2] but on a BLAS that cannot run a second thread
    with threadpool_limits(limits=1, user_api="blas"):
        assert CliRunner().invoke(cli.main, ["--threads", "2", "gradcheck"], env=NO_THREAD_VARIABLES).exit_code == 0
        # a thread variable set by the user: the command leaves the library's threads as they are
        assert CliRunner().invoke(cli.main, ["gradcheck"], env={"OPENBLAS_NUM_THREADS": "3"}).exit_code == 0
    assert seen == [two, [1] * len(two)], (seen, two)
    assert CliRunner().invoke(cli.main, ["--threads", "0", "gradcheck"]).exit_code == 2


def test_blas_threads_is_the_python_api_of_the_threads_option(monkeypatch):
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert default_threads() is None
    before = blas_thread_counts()
    with blas_threads(1):
        assert blas_thread_counts() == [1] * len(before)
        np.ones((64, 64)) @ np.ones((64, 64))
    assert blas_thread_counts() == before
