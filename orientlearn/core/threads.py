"""Thread policy and chunked parallel loops shared by the numerical code."""
import concurrent.futures

from .resources import usable_threads


def _n_threads():
    """CPU cores this process may use (``sched_getaffinity``), at most ``OMP_NUM_THREADS``
    when set (a protocol's 'Threads' or a job's grant: ``resources.limit_threads``), at
    least 1."""
    return usable_threads()


def _run_chunks(total, chunk, fn, threads=None):
    """Call ``fn(b0, b1)`` for the chunks ``[b0, b1)`` of ``range(total)`` of at most ``chunk``
    items, on up to ``threads`` (default ``_n_threads()``) threads; ``fn`` must write
    disjoint outputs (numpy and scipy.fft release the GIL on large arrays)."""
    starts = range(0, total, max(1, int(chunk)))
    threads = min(threads or _n_threads(), len(starts))
    if threads <= 1:
        for b0 in starts:
            fn(b0, min(total, b0 + chunk))
        return
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(lambda b0: fn(b0, min(total, b0 + chunk)), starts):
            pass
