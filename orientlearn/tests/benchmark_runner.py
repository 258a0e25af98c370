"""Run a script of ``benchmarks/`` as a user would, for the smoke tests of the benchmarks."""
import os
import subprocess
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BENCHMARKS = os.path.join(REPO, "benchmarks")


def run_benchmark(script, *args, cwd=REPO, timeout=300):
    """``python benchmarks/<script> --smoke <args>``; asserts it exits 0 and returns its
    standard output (the report)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, os.path.join(BENCHMARKS, script), "--smoke",
                           *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=str(cwd))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout
