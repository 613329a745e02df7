"""The package as users get it: a light import, the console script, the codec in use."""

import os
import subprocess
import sys

import pytest

HEAVY = (
    "grpc",
    "psutil",
    "pynvml",
    "numpy",
    "PIL",
    "rich",
    "pandas",
    "uvloop",
    "google.protobuf",
    "torch",
    "lightning",
    "transformers",
    "keras",
    "tensorboard",
    "tensorboardX",
    "wandb",
    "mlflow",
)


def test_import_trackside_is_light():
    p = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import trackside"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "TRACKSIDE_NO_EXTENSIONS"},
    )
    assert p.returncode == 0, p.stderr
    imported = {line.split("|")[-1].strip() for line in p.stderr.splitlines() if "|" in line}
    heavy = sorted(
        m
        for m in imported
        if m.split(".")[0] in {h.split(".")[0] for h in HEAVY} and any(m == h or m.startswith(h + ".") for h in HEAVY)
    )
    assert heavy == [], f"import trackside pulled in {heavy}"


def test_console_script_help_and_version():
    from trackside import __version__

    exe = os.path.join(os.path.dirname(sys.executable), "trackside")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "trackside.cli"]
    p = subprocess.run(cmd + ["--version"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == f"trackside {__version__}"
    p = subprocess.run(cmd + ["--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0
    for command in ("daemon", "runs", "history", "summary"):
        assert command in p.stdout


def test_the_cython_codec_is_the_one_running():
    if os.environ.get("TRACKSIDE_NO_EXTENSIONS"):
        pytest.skip("TRACKSIDE_NO_EXTENSIONS is set: the twin runs on purpose")
    import trackside._native as native

    assert native.IMPLEMENTATION == "cython"


def test_no_extensions_forces_the_twin():
    p = subprocess.run(
        [sys.executable, "-c", "import trackside._native as n; print(n.IMPLEMENTATION)"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, TRACKSIDE_NO_EXTENSIONS="1"),
    )
    assert p.stdout.strip() == "python"


def test_a_run_root_named_trackside_in_the_scripts_folder_does_not_shadow_the_package(tmp_path):
    """`./trackside` is the default run root, so training scripts live beside a folder named like
    the package; `import trackside` must still find the package (README: install editable in
    strict mode)."""
    (tmp_path / "trackside" / "runs").mkdir(parents=True)
    p = subprocess.run(
        [sys.executable, "-c", "import trackside; print(trackside.init.__name__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0 and p.stdout.strip() == "init", p.stderr
