"""The README's "Use from Python" example runs as printed, and `import charrnn` stays cheap."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

import charrnn

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Use from Python"
SOURCES = (ROOT / "README.md",)


def python_example():
    """The first ```python block after HEADING in the first source that has the heading."""
    for path in SOURCES:
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        if HEADING in text:
            block = re.search(r"```python\n(.*?)```", text[text.index(HEADING):], re.S)
            assert block, f"no ```python block after {HEADING!r} in {path}"
            return block.group(1)
    pytest.fail(f"no section {HEADING!r} in {', '.join(map(str, SOURCES))}")


def test_the_readme_python_example_runs(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHARRNN_DATA_DIR", str(data_dir))
    exec(compile(python_example(), "README.md", "exec"), {})
    out = capsys.readouterr().out
    final = float(re.search(r"validation perplexity ([\d.]+)", out).group(1))
    assert final < 12 and (tmp_path / "runs" / "notebook" / "best.npz").is_file()
    assert float(re.search(r"after one epoch: ([\d.]+)", out).group(1)) < 20


def test_importing_charrnn_loads_nothing_else_and_every_export_resolves():
    code = ("import sys, charrnn; print(sorted(m for m in sys.modules if m.startswith('charrnn.') "
            "or m in ('numpy', 'click', 'rich', 'tqdm', 'threadpoolctl')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
    for name in charrnn.__all__:
        assert getattr(charrnn, name) is not None, name
    assert charrnn.train is charrnn.training.start.train and charrnn.resume is charrnn.training.start.resume
    with pytest.raises(AttributeError):
        charrnn.no_such_name


def test_the_readme_is_short_and_no_page_shows_a_machine_path_or_an_issue_number():
    pages = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 250
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert not re.search(r"/work/|/home/|/tmp/|/root/", text), page.name
        assert not re.search(r"\bissues? #?\d", text, re.I), page.name
