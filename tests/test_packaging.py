"""How charrnn installs and what importing it does: one package, nothing set on import (the
BLAS threads are set by a command while it runs: tests/test_threads.py)."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from charrnn.runtime.threads import THREAD_VARIABLES

REPO = Path(__file__).resolve().parents[1]


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
    modules = {path.relative_to(REPO).as_posix() for path in (REPO / "charrnn").rglob("*.py")}
    assert modules - set(names) == set(), "modules of the source tree missing from the wheel"
    assert "charrnn/corpora/registry.json" in names
    assert "charrnn = charrnn.entry:main" in entry_points


def test_importing_charrnn_and_its_cli_sets_no_environment_and_no_threads():
    script = ("import os, numpy\n"
              "from threadpoolctl import threadpool_info\n"
              "before = (dict(os.environ), threadpool_info())\n"
              "import charrnn, charrnn.cli, charrnn.training.start, charrnn.runtime.threads\n"
              "print(before == (dict(os.environ), threadpool_info()))\n")
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
