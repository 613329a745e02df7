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


def test_the_package_list_is_read_once_per_environment(ts, tmp_path):
    """Reading every installed package costs a run's start ~0.2 s of CPU: the list is kept in
    the daemon's folder for the environment, and read again once a folder of the import path
    changes (a package installed, upgraded or removed)."""
    import glob
    import json
    import os

    extra = tmp_path / "extra"
    extra.mkdir()
    env = dict(ts.env, PYTHONPATH=str(extra))
    code = "import trackside\nrun = trackside.init(project='p')\nrun.finish()\nprint(run.id)\n"

    def packages() -> dict:
        run_id = run_script(code, env).stdout.split()[-1]
        return trackside.Api(ts.root).run(run_id).metadata["packages"]

    first = packages()
    assert "trackside" in {k.lower() for k in first} and "fakepkg" not in first
    (cached,) = glob.glob(os.path.join(ts.daemon_dir, "packages-*.json"))
    assert json.load(open(cached)) == first
    json.dump({"read": "from the cache"}, open(cached, "w"))  # the next run takes the kept list
    assert packages() == {"read": "from the cache"}
    dist = extra / "fakepkg-1.0.dist-info"  # installing a package changes its folder
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakepkg\nVersion: 1.0\n")
    again = packages()
    assert again["fakepkg"] == "1.0" and "trackside" in {k.lower() for k in again}


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
