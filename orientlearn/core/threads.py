"""Thread policy and chunked parallel loops shared by the numerical code."""
import concurrent.futures
import os


def _n_threads():
    """CPU cores this process may use (``sched_getaffinity``), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


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
