"""What the training process prints, captured into the run (``r.console()``) with its metadata
(command line, Python, packages, git commit and diff); console lines printed just before
``finish()`` do not hold it up."""

import subprocess
import sys

import pytest

import trackside

from conftest import run_script


def test_console_output_and_metadata_are_recorded(ts, tmp_path):
    code = (
        "import trackside, sys\n"
        "run = trackside.init(project='p')\n"
        "print('epoch 1 done')\n"
        "print('warning: something', file=sys.stderr)\n"
        "run.log({'a': 1})\n"
        "run.finish()\n"
        "print(run.id)\n"
    )
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run(git + ["init", "-q"], cwd=repo, check=True)
    (repo / "train.py").write_text(code)
    subprocess.run(git + ["add", "train.py"], cwd=repo, check=True)
    subprocess.run(git + ["commit", "-qm", "x"], cwd=repo, check=True)
    (repo / "train.py").write_text(code + "# changed\n")
    p = subprocess.run(
        [sys.executable, "train.py", "--lr", "3"], cwd=repo, env=ts.env, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    run_id = p.stdout.strip().splitlines()[-1]
    r = trackside.Api(ts.root).run(run_id)
    console = r.console()
    assert "epoch 1 done" in console and "warning: something" in console
    meta = r.metadata
    assert meta["args"] == ["--lr", "3"]
    assert meta["python"].count(".") == 2
    assert meta["git"]["commit"] and "# changed" in meta["git"]["diff"]
    assert "trackside" in {k.lower() for k in meta["packages"]}


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_finish_returns_when_console_lines_ride_behind_the_finish_event(ts, mode):
    """Output printed just before finish() is framed after the finish event; the daemon must
    report the writer done through those records too, or finish() waits for its timeout."""
    code = f"""
import time, trackside
run = trackside.init(project="p", mode={mode!r}, settings={{"finish_timeout": 20}})
for i in range(40):
    run.log({{"i": i}})
    time.sleep(0.02)
print("last words")
t = time.monotonic()
run.finish()
print("finish took", time.monotonic() - t)
"""
    out = run_script(code, ts.env, timeout=60).stdout
    took = float(out.split("finish took")[1])
    assert took < 10, out
