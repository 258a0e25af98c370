"""core.resources: the thread and GPU limits a protocol or a job applies to a process.

Each check runs in a child process (the limits change process-wide state)."""
import json
import os
import subprocess
import sys

from orientlearn.tests.unittest_bridge import pytest_load_tests

load_tests = pytest_load_tests(__name__)  # scipion3 tests orientlearn.tests.<module>

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROBE = r"""
import json, os, sys
import numpy  # noqa: F401  (its BLAS is loaded before the limit, as in a protocol)
if sys.argv[2] == "tf":
    import tensorflow  # noqa: F401
from orientlearn.core import resources, threads
report = resources.limit_threads(int(sys.argv[1]))
print(json.dumps({"report": report, "cores": threads.usable_cores(),
                  "env": {k: os.environ.get(k) for k in resources.THREAD_VARIABLES},
                  "gpus": resources.limit_gpus([2, 0])}))
"""


def probe(n, tf=False):
    env = dict(os.environ, PYTHONPATH=REPO)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(name, None)
    out = subprocess.run([sys.executable, "-c", PROBE, str(n), "tf" if tf else "-"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_one_thread_everywhere():
    result = probe(1, tf=True)
    report = result["report"]
    assert report["orientlearn"] == 1
    assert report["blas"] and set(report["blas"].values()) == {1}
    assert (report["tensorflow_intra"], report["tensorflow_inter"]) == (1, 1)
    assert set(result["env"].values()) == {"1"}      # what child processes inherit
    assert result["gpus"] == "2,0"


def test_never_more_than_the_cores():
    result = probe(10_000)
    cores = result["cores"]
    assert result["report"]["orientlearn"] == cores
    assert set(result["report"]["blas"].values()) == {cores}
    assert set(result["env"].values()) == {str(cores)}
