"""Checks of input data that would otherwise give a confident wrong answer.

Pure numpy, no Scipion: images with no signal (constant), non-finite or overflowing
values, maps that are blank or non-finite, pixel sizes outside a physical range. Each
check returns what is wrong (masks, counts, messages) so callers can name the items.
"""
import numpy as np

__all__ = [
    "HUGE_VALUE", "PIXEL_SIZE_RANGE", "image_defects", "describe_image_defects",
    "check_map", "check_pixel_size",
]

#: Pixel values beyond +-HUGE_VALUE overflow float32 arithmetic (squares, sums, FFTs of a
#: box exceed ~3.4e38) or drown the signal; normalised or raw particle values are far below.
HUGE_VALUE = 1e15

#: Physical range of pixel sizes (A/px) accepted anywhere: sub-0.1 A pixels or 50 A+
#: pixels are typos (nm instead of A, a missing decimal point) or unset headers.
PIXEL_SIZE_RANGE = (0.1, 50.0)


def image_defects(images, huge=HUGE_VALUE):
    """Per-image defects of a stack ``(N, S, S)``.

    Returns a dict of boolean masks ``(N,)``: ``non_finite`` (any NaN or inf),
    ``constant`` (all pixels equal, zero variance; finite images only) and ``huge``
    (a finite pixel with ``|value| > huge``).
    """
    flat = np.asarray(images).reshape(len(images), -1)
    non_finite = ~np.isfinite(flat).all(axis=1)
    constant = np.zeros(len(flat), dtype=bool)
    huge_mask = np.zeros(len(flat), dtype=bool)
    ok = np.flatnonzero(~non_finite)
    if len(ok) and flat.shape[1]:
        rows = flat[ok]
        constant[ok] = rows.max(axis=1) == rows.min(axis=1)
        huge_mask[ok] = np.abs(rows).max(axis=1) > huge
    return dict(non_finite=non_finite, constant=constant, huge=huge_mask)


_DEFECT_TEXT = {
    "non_finite": ("contain NaN or infinite values",
                   "fix or remove those particles (e.g. a subset without them)"),
    "constant": ("are constant (zero variance: no signal)",
                 "remove them (e.g. a subset without them); blank images would be "
                 "oriented and reconstructed with false confidence"),
    "huge": (f"have values beyond +-{HUGE_VALUE:.0e} that overflow float32 arithmetic",
             "rescale or normalise the images"),
}


def describe_image_defects(ids, defects, label="Images", max_ids=10):
    """Messages (one per kind of defect) naming how many images and which ids.

    ``ids (N,)`` are the images' identifiers (e.g. Scipion particle ids), ``defects``
    as from :func:`image_defects` (masks may come from several chunks concatenated).
    """
    ids = np.asarray(ids)
    messages = []
    for kind, (what, fix) in _DEFECT_TEXT.items():
        mask = np.asarray(defects.get(kind, ()), dtype=bool)
        count = int(mask.sum())
        if not count:
            continue
        bad = ids[mask]
        shown = ", ".join(str(int(i)) if np.issubdtype(bad.dtype, np.integer) else str(i)
                          for i in bad[:max_ids])
        more = f" and {count - max_ids} more" if count > max_ids else ""
        messages.append(f"{label}: {count} of {len(ids)} image(s) {what} (ids {shown}{more}): "
                        f"{fix}.")
    return messages


def check_map(volume, what="Map"):
    """Raise ``ValueError`` if a map is non-finite or all zero (nothing to report on)."""
    v = np.asarray(volume)
    if v.size == 0:
        raise ValueError(f"{what} is empty.")
    finite = np.isfinite(v)
    if not finite.all():
        raise ValueError(f"{what} has {int((~finite).sum())} non-finite voxel(s) (NaN/inf): "
                         "the inputs are corrupt or overflow (check the particles' values).")
    if not np.any(v):
        raise ValueError(f"{what} is all zero: the particles carry no signal (blank or "
                         "constant images?) or no orientation reached the map.")


def check_pixel_size(pixel_size, what="Pixel size"):
    """An error message (str) if ``pixel_size`` (A/px) is unset or outside
    ``PIXEL_SIZE_RANGE``, else None."""
    lo, hi = PIXEL_SIZE_RANGE
    try:
        value = float(pixel_size)
    except (TypeError, ValueError):
        value = float("nan")
    if not np.isfinite(value) or value <= 0:
        return f"{what} is not set ({pixel_size!r}): set it (A/px) on import."
    if not lo <= value <= hi:
        return (f"{what} {value:g} A/px is outside the physical range {lo:g}-{hi:g} A/px: "
                "check the units (Angstrom, not nm) and the value set on import.")
    return None
