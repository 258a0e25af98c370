"""The one thread policy of the numerical code, and a chunked parallel loop.

How many threads CPU work uses, first that applies:

1. an explicit count passed by the caller (``thread_count(n)``, a function's ``n_threads``);
2. the cores this process may run on (``sched_getaffinity``), at most ``OMP_NUM_THREADS``
   when that is set: what a Scipion protocol's *Threads* (``resources.limit_threads``,
   which also limits BLAS and TensorFlow) or a cluster job script grants;
3. a caller's own cap (``max_threads``, e.g. memory held per thread) on that default.

Nothing is read or set at import.
"""
import concurrent.futures
import os

__all__ = ["usable_cores", "thread_count", "run_chunks", "THREAD_LIMIT_VARIABLE"]

#: The environment variable that limits the default thread count.
THREAD_LIMIT_VARIABLE = "OMP_NUM_THREADS"


def usable_cores():
    """CPU cores this process may use (``sched_getaffinity``), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):                  # pragma: no cover (macOS)
        return max(1, os.cpu_count() or 1)


def _limit_from_environment():
    value = os.environ.get(THREAD_LIMIT_VARIABLE, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def thread_count(n_threads=None, max_threads=None):
    """Threads for CPU work (see the module's docstring for the order of precedence).

    ``n_threads``: an explicit count (None or 0: decide here). ``max_threads``: the
    caller's own cap when it decides; an explicit count is never capped. Returns an
    int >= 1.
    """
    if n_threads:
        return max(1, int(n_threads))
    count = usable_cores()
    limit = _limit_from_environment()
    if limit is not None:
        count = min(count, limit)
    if max_threads is not None:
        count = min(count, int(max_threads))
    return max(1, count)


def run_chunks(total, chunk, fn, n_threads=None):
    """Call ``fn(b0, b1)`` for the chunks ``[b0, b1)`` of ``range(total)`` of at most
    ``chunk`` items, on up to ``thread_count(n_threads)`` threads; ``fn`` must write
    disjoint outputs (numpy and scipy.fft release the GIL on large arrays)."""
    chunk = max(1, int(chunk))
    starts = range(0, total, chunk)
    n_threads = min(thread_count(n_threads), len(starts))
    if n_threads <= 1:
        for b0 in starts:
            fn(b0, min(total, b0 + chunk))
        return
    with concurrent.futures.ThreadPoolExecutor(n_threads) as pool:
        for _ in pool.map(lambda b0: fn(b0, min(total, b0 + chunk)), starts):
            pass
