"""The one thread policy (core/threads.py): an explicit count, else the usable cores at
most OMP_NUM_THREADS (what resources.limit_threads sets), else a caller's cap."""
from orientlearn.core import threads
from orientlearn.tests.unittest_bridge import pytest_load_tests

load_tests = pytest_load_tests(__name__)  # scipion3 tests orientlearn.tests.<module>


def test_precedence(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 16)
    assert threads.thread_count() == 16
    assert threads.thread_count(max_threads=4) == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.thread_count() == 3 and threads.thread_count(max_threads=2) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "64")           # never more than the cores
    assert threads.thread_count() == 16
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")         # ignored
    assert threads.thread_count() == 16
    assert threads.thread_count(7) == 7 and threads.thread_count(7, max_threads=4) == 7


def test_run_chunks_uses_the_policy(monkeypatch):
    used = []

    class Pool:
        def __init__(self, n):
            used.append(n)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def map(self, fn, items):
            return [fn(i) for i in items]

    monkeypatch.setattr(threads.concurrent.futures, "ThreadPoolExecutor", Pool)
    monkeypatch.setattr(threads, "usable_cores", lambda: 16)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    threads.run_chunks(100, 10, lambda b0, b1: None)
    threads.run_chunks(100, 10, lambda b0, b1: None, n_threads=6)
    threads.run_chunks(20, 10, lambda b0, b1: None)      # 2 chunks: at most 2 threads
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads.run_chunks(100, 10, lambda b0, b1: None)      # one thread: no pool
    assert used == [3, 6, 2]
