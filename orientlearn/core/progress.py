"""Progress reporting for long loops: done/total, rate and ETA, to any line printer."""
import time


def format_duration(seconds):
    """``3725.2`` -> ``'1h02m05s'``; ``'?'`` for a non-finite value."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class ProgressReporter:
    """Callable ``progress(done, total)`` that prints at most every ``interval`` seconds.

    ``log`` is any function taking one string (``print``, ``logger.info``, a protocol's
    ``info``); ``unit`` names what is counted (``'images'``, ``'steps'``).
    """

    def __init__(self, log=print, label="", unit="items", interval=5.0, clock=time.monotonic):
        self.log, self.label, self.unit, self.interval = log, label, unit, interval
        self._clock = clock
        self._start = clock()
        self._last = None

    def __call__(self, done, total, extra=""):
        now = self._clock()
        final = done >= total
        if not final and self._last is not None and now - self._last < self.interval:
            return
        self._last = now
        elapsed = max(now - self._start, 1e-9)
        rate = done / elapsed
        eta = (total - done) / rate if rate > 0 else float("inf")
        pct = 100.0 * done / total if total else 100.0
        msg = (f"{self.label}: {done}/{total} {self.unit} ({pct:.0f}%), "
               f"{rate:.1f} {self.unit}/s, elapsed {format_duration(elapsed)}, "
               f"ETA {format_duration(0 if final else eta)}")
        self.log(msg + (f" | {extra}" if extra else ""))
