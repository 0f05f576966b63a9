import subprocess
import sys


def _kd3(*args):
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_help_lists_the_pool_commands():
    run = _kd3("--help")
    assert run.returncode == 0 and "pool" in run.stdout
    sub = _kd3("pool", "--help")
    assert "import" in sub.stdout and "info" in sub.stdout


def test_info_on_a_missing_pool_is_one_line(tmp_path):
    run = _kd3("pool", "info", str(tmp_path / "none"))
    assert run.returncode == 2
    assert run.stderr == f"kd3 pool: error: {tmp_path / 'none'}: no such pool directory\n"
