"""Thread and GPU limits of a process: what a Scipion protocol or a cluster job grants.

``limit_threads(n)`` keeps the numerical libraries to ``n`` threads:

* OpenMP / BLAS libraries already loaded (numpy's OpenBLAS or MKL, scipy's) through
  ``threadpoolctl``; ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and ``MKL_NUM_THREADS``
  for those loaded later and for child processes (the ``orientlearn`` command line, ASPIRE);
* TensorFlow: ``TF_NUM_INTRAOP_THREADS`` / ``TF_NUM_INTEROP_THREADS`` (read when its
  runtime starts, in this process or a child) and, when TensorFlow is already imported and
  not yet started, ``tf.config.threading``;
* orientlearn's own thread pools, which read ``OMP_NUM_THREADS`` (``threads.thread_count``,
  the one thread policy).

``limit_gpus(ids)`` sets ``CUDA_VISIBLE_DEVICES`` ("" hides every GPU). Nothing here runs
at import; both functions change the environment of the calling process on purpose.
"""
import os
import sys

from .threads import thread_count, usable_cores

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def limit_threads(n):
    """Keep BLAS/OpenMP, TensorFlow and orientlearn's pools to ``n`` threads (n >= 1),
    at most the cores this process may run on (more would only oversubscribe them).

    Returns ``thread_report()`` after the change."""
    n = min(max(1, int(n)), usable_cores())
    for name in THREAD_VARIABLES:
        os.environ[name] = str(n)
    try:
        import threadpoolctl
        threadpoolctl.threadpool_limits(n)
    except ImportError:   # without it, only libraries loaded from now on are limited
        pass
    if "tensorflow" in sys.modules:
        tf = sys.modules["tensorflow"]
        for setter in (tf.config.threading.set_intra_op_parallelism_threads,
                       tf.config.threading.set_inter_op_parallelism_threads):
            try:
                setter(n)
            except RuntimeError:   # runtime already started: its pools are fixed
                pass
    return thread_report()


def limit_gpus(ids):
    """Make only the GPUs ``ids`` (e.g. ``[0, 1]``; empty: none) visible to CUDA."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(int(i)) for i in ids)
    return os.environ["CUDA_VISIBLE_DEVICES"]


def thread_report():
    """What the libraries are set to now: ``{"orientlearn": n, "blas": {library: n},
    "tensorflow_intra": n, "tensorflow_inter": n}`` (TensorFlow values only when it is
    imported; 0 there means TensorFlow's own default, i.e. the env variables or all
    cores)."""
    report = {"orientlearn": thread_count(), "blas": {}}
    try:
        import threadpoolctl
        for info in threadpoolctl.threadpool_info():
            report["blas"][f"{info['internal_api']}:{os.path.basename(info['filepath'])}"] = \
                info["num_threads"]
    except ImportError:
        pass
    if "tensorflow" in sys.modules:
        threading = sys.modules["tensorflow"].config.threading
        report["tensorflow_intra"] = threading.get_intra_op_parallelism_threads()
        report["tensorflow_inter"] = threading.get_inter_op_parallelism_threads()
    return report
