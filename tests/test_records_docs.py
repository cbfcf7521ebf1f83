"""docs/records.md's Python example runs as printed."""
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "records.md"


def test_the_records_python_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    block = re.search(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S).group(1)
    exec(compile(block, str(DOC), "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 8 and out[5].startswith("beam: ")
    assert all("ended True" in line for line in out[:5])
    kali, zzqx = (float(re.search(r": ([\d.]+) nats", line).group(1)) for line in out[6:])
    assert kali < zzqx
