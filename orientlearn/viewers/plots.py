"""Figures for orientlearn results: pure matplotlib (Agg), no pyplot, no Scipion.

Every ``plot_*`` function returns a ``matplotlib.figure.Figure`` attached to an Agg canvas,
so it works headless and leaves no global pyplot state behind; ``save_figure`` writes it.
The Scipion viewers embed or save these figures; scripts call them directly.
Angles come in radians (as everywhere in ``orientlearn.core``) and are shown in degrees.
"""
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

__all__ = [
    "save_figure", "plot_particle_gallery", "plot_angular_distribution",
    "plot_training_history", "plot_distance_density", "plot_recovery_history",
    "plot_error_histograms", "plot_fsc", "plot_central_slices",
]


def _new_figure(figsize):
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path, dpi=100):
    """Write ``fig`` to ``path`` (format from the extension, e.g. PNG) at ``dpi``.

    The image is ``figsize * dpi`` pixels (no tight cropping, so sizes are predictable).
    """
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi)
    return path


def _quaternion_angles(q):
    """Viewing direction (azimuth, elevation) and in-plane angle psi, radians, each ``(P,)``.

    Same maths as ``geometry.viewing_directions`` / ``matrix_to_euler``, written out here
    so this module needs nothing but numpy and matplotlib.
    """
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q.T
    # third row of R(q): the viewing direction in the volume frame
    v = np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1)
    azimuth = np.arctan2(v[:, 1], v[:, 0])
    elevation = np.arcsin(np.clip(v[:, 2], -1, 1))
    # psi (Relion ZYZ) = atan2(R[1, 2], -R[0, 2])
    r02 = 2 * (x * z + w * y)
    r12 = 2 * (y * z - w * x)
    psi = np.arctan2(r12, -r02)
    return azimuth, elevation, psi


def plot_particle_gallery(images, titles=None, ncols=8, max_images=64, panel_size=1.3):
    """Grid of particle images ``(N, H, W)`` (first ``max_images``), grey, each auto-scaled."""
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    images = images[:max_images]
    n = max(len(images), 1)
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig = _new_figure((panel_size * ncols, panel_size * nrows + (0.25 * nrows if titles else 0)))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k < len(images):
            ax.imshow(images[k], cmap="gray", origin="lower", interpolation="nearest")
            if titles is not None and k < len(titles):
                ax.set_title(str(titles[k]), fontsize=7)
    return fig


def plot_angular_distribution(quaternions, bins=None, title="Angular distribution"):
    """Viewing directions on a Hammer map (2-D histogram) and the in-plane angle histogram.

    ``quaternions (P, 4)``. Azimuth / elevation of the viewing direction (third row of R).
    The histogram cells are equal-area (uniform in sin(elevation)), so a uniform set looks
    flat; ``bins = (n_azimuth, n_elevation)``, by default about 20 particles per cell.
    """
    azimuth, elevation, psi = _quaternion_angles(quaternions)
    if bins is None:
        n_el = int(np.clip(np.sqrt(len(azimuth) / 40.0), 4, 36))
        bins = (2 * n_el, n_el)
    fig = _new_figure((11, 4.2))
    grid = fig.add_gridspec(1, 3)
    ax = fig.add_subplot(grid[0, :2], projection="hammer")
    az_edges = np.linspace(-np.pi, np.pi, bins[0] + 1)
    el_edges = np.arcsin(np.linspace(-1, 1, bins[1] + 1))
    counts, _, _ = np.histogram2d(azimuth, elevation, bins=[az_edges, el_edges])
    mesh = ax.pcolormesh(az_edges, el_edges, counts.T, cmap="viridis", shading="flat")
    fig.colorbar(mesh, ax=ax, shrink=0.7, label="particles per (equal-area) cell")
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=7)
    ax.set_xticklabels([])                 # azimuth labels clutter the map
    ax.set_title(f"{title}: viewing directions ({len(azimuth)} particles)", pad=18)
    ax2 = fig.add_subplot(grid[0, 2])
    ax2.hist(np.degrees(psi), bins=36, range=(-180, 180), color="tab:blue", alpha=0.8)
    ax2.set_xlabel("in-plane angle psi (deg)")
    ax2.set_ylabel("particles")
    ax2.set_xlim(-180, 180)
    return fig


def plot_training_history(history, keys=("loss", "val_loss"), title="Distance learning"):
    """Curves of ``history`` (dict name -> list per epoch); missing keys are skipped."""
    fig = _new_figure((6, 4))
    ax = fig.add_subplot()
    positive = True
    for key in keys if keys else history.keys():
        values = np.asarray(history.get(key, []), dtype=float)
        if values.size:
            ax.plot(np.arange(1, values.size + 1), values, marker="o" if values.size < 30 else None,
                    ms=3, label=key)
            positive &= bool(np.all(values[np.isfinite(values)] > 0))
    if positive and ax.lines:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    if ax.lines:
        ax.legend()
    ax.grid(True, alpha=0.3)
    return fig


def plot_distance_density(d_true, d_est, bins=60, title="Estimated vs true distance"):
    """Like the paper's Fig. 6: 2-D histogram of ``(d_true, d_est)`` (radians, shown in
    radians on ``[0, pi]``), the identity line, and the mean absolute error per bin of
    ``d_true`` on a second axis."""
    d_true = np.asarray(d_true, dtype=float).ravel()
    d_est = np.asarray(d_est, dtype=float).ravel()
    fig = _new_figure((6.5, 5))
    ax = fig.add_subplot()
    hi = max(np.pi, float(np.nanmax(d_est)) if d_est.size else np.pi)
    counts, xe, ye = np.histogram2d(d_true, d_est, bins=bins, range=[[0, np.pi], [0, hi]])
    if counts.max() > 0:
        mesh = ax.pcolormesh(xe, ye, counts.T, cmap="Blues",
                             norm=LogNorm(vmin=1, vmax=counts.max()))
        fig.colorbar(mesh, ax=ax, label="pairs", pad=0.12)
    ax.plot([0, np.pi], [0, np.pi], "k--", lw=1, label="identity")
    ax.set_xlabel("true distance d_q (rad)")
    ax.set_ylabel("estimated distance (rad)")
    ax.set_xlim(0, np.pi)
    ax.set_ylim(0, hi)
    ax.set_title(title)
    idx = np.clip(np.digitize(d_true, xe) - 1, 0, bins - 1)
    abs_err = np.abs(d_est - d_true)
    n = np.bincount(idx, minlength=bins)
    mae = np.bincount(idx, weights=abs_err, minlength=bins) / np.maximum(n, 1)
    centres = (xe[:-1] + xe[1:]) / 2
    ax_mae = ax.twinx()
    ax_mae.plot(centres[n > 0], mae[n > 0], color="tab:red", lw=1.5, label="mean |error|")
    ax_mae.set_ylabel("mean absolute error (rad)", color="tab:red")
    ax_mae.set_ylim(0, max(0.1, float(mae.max()) * 1.1))
    lines = ax.get_lines() + ax_mae.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="upper left")
    return fig


def plot_recovery_history(losses, title="Orientation recovery"):
    """Recovery loss per step (log scale when positive)."""
    losses = np.asarray(losses, dtype=float).ravel()
    fig = _new_figure((6, 4))
    ax = fig.add_subplot()
    ax.plot(np.arange(losses.size), losses, color="tab:purple")
    if losses.size and np.all(losses[np.isfinite(losses)] > 0):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return fig


def plot_error_histograms(errors, bins=60, title="Orientation errors"):
    """Histograms of per-particle errors: ``errors`` dict name -> ``(P,)`` radians, shown in
    degrees, with each median as a dashed line and in the legend."""
    fig = _new_figure((7, 4.2))
    ax = fig.add_subplot()
    all_deg = [np.degrees(np.asarray(e, dtype=float).ravel()) for e in errors.values()]
    # Zoom on the bulk (up to ~1.5x the 99th percentile) so small errors are resolved; the
    # particles beyond go to the last bin, and the title says how many.
    finite = np.concatenate([d[np.isfinite(d)] for d in all_deg]) if all_deg else np.zeros(1)
    top = float(np.clip(1.5 * np.percentile(finite, 99), 5.0, 180.0)) if finite.size else 180.0
    n_beyond = 0
    for k, (name, deg) in enumerate(zip(errors, all_deg)):
        color = f"C{k}"
        n_beyond = max(n_beyond, int(np.sum(deg > top)))
        ax.hist(np.minimum(deg, top), bins=bins, range=(0, top), histtype="step", lw=1.5,
                color=color,
                label=f"{name} (median {np.median(deg):.1f}°, mean {np.mean(deg):.1f}°)")
        ax.axvline(np.median(deg), color=color, ls="--", lw=1)
    ax.set_xlim(0, top)
    if n_beyond:
        title = f"{title} ({n_beyond} beyond {top:.0f}° in the last bin)"
    ax.set_xlabel("error (deg)")
    ax.set_ylabel("particles")
    ax.set_title(title)
    if errors:
        ax.legend(fontsize=8)
    return fig


def _crossing(freq, values, threshold):
    """First frequency where the curve falls below ``threshold`` (linear), or None."""
    below = np.nonzero(values < threshold)[0]
    below = below[below > 0]
    if below.size == 0:
        return None
    k = below[0]
    f0, f1, v0, v1 = freq[k - 1], freq[k], values[k - 1], values[k]
    return f0 + (f1 - f0) * (v0 - threshold) / (v0 - v1) if v0 != v1 else f1


def plot_fsc(curves, pixel_size=None, thresholds=(0.5, 0.143), title="Fourier shell correlation"):
    """FSC curves ``[(label, freq (K,) in 1/Angstrom, fsc (K,)), ...]`` with threshold lines
    and the resolution (Angstrom) where each curve first crosses each threshold.

    ``pixel_size`` (Angstrom) marks the Nyquist frequency ``1 / (2 pixel_size)``.
    """
    fig = _new_figure((7, 4.5))
    ax = fig.add_subplot()
    for t in thresholds:
        ax.axhline(t, color="gray", ls=":", lw=1)
        ax.text(0.995, t, f" {t:g}", transform=ax.get_yaxis_transform(), va="bottom",
                ha="right", fontsize=8, color="gray")
    for k, (label, freq, values) in enumerate(curves):
        freq = np.asarray(freq, dtype=float)
        values = np.asarray(values, dtype=float)
        parts = []
        for t in thresholds:
            f = _crossing(freq, values, t)
            if f is not None and f > 0:
                parts.append(f"{1 / f:.1f} Å @{t:g}")
                ax.plot([f], [t], "o", color=f"C{k}", ms=4)
        name = f"{label}: " + ", ".join(parts) if parts else str(label)
        ax.plot(freq, values, color=f"C{k}", lw=1.5, label=name)
    if pixel_size:
        ax.axvline(1 / (2 * pixel_size), color="k", lw=0.8, alpha=0.5)
    ax.set_ylim(min(-0.05, ax.get_ylim()[0]), 1.05)
    ax.set_xlim(left=0)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_title(title)
    if curves:
        ax.legend(fontsize=8, loc="upper right")
    ax.grid(True, alpha=0.3)
    # resolution (Angstrom) on a top axis, ticks at round values inside the plotted range
    top = ax.twiny()
    lo, hi = ax.get_xlim()
    top.set_xlim(lo, hi)
    res_ticks = [r for r in (100, 50, 30, 20, 15, 12, 10, 8, 7, 6, 5, 4, 3, 2.5, 2)
                 if lo < 1.0 / r <= hi]
    top.set_xticks([1.0 / r for r in res_ticks])
    top.set_xticklabels([f"{r:g}" for r in res_ticks], fontsize=8)
    top.set_xlabel("resolution (Å)")
    return fig


def plot_central_slices(volume, title="Volume", projections=True):
    """Central slices of ``volume[z, y, x]`` through its centre ``N // 2`` (planes z, y and
    x), and, if ``projections``, the sums along each axis beneath them."""
    vol = np.asarray(volume, dtype=float)
    nz, ny, nx = vol.shape
    slices = [("z", vol[nz // 2], "x", "y"), ("y", vol[:, ny // 2], "x", "z"),
              ("x", vol[:, :, nx // 2], "y", "z")]
    rows = 2 if projections else 1
    fig = _new_figure((10, 3.4 * rows))
    axes = fig.subplots(rows, 3, squeeze=False)
    for k, (axis_name, img, xl, yl) in enumerate(slices):
        ax = axes[0, k]
        ax.imshow(img, cmap="gray", origin="lower")
        ax.set_title(f"central slice {axis_name} = N/2", fontsize=9)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        if projections:
            ax = axes[1, k]
            ax.imshow(vol.sum(axis=k), cmap="gray", origin="lower")
            ax.set_title(f"projection along {axis_name}", fontsize=9)
            ax.set_xlabel(xl)
            ax.set_ylabel(yl)
    fig.suptitle(title, fontsize=10)   # once: long titles overlap over three panels
    return fig


def plot_iteration_history(records, title="Ab initio iterations"):
    """Half-map resolution (A, FSC 0.143 and 0.5) after each stage of an iterative run,
    and how much the orientations moved from the previous iteration (deg, median, after
    the best global rotation and hand). ``records``: dicts with ``iteration``, ``stage``,
    ``resolution``, ``resolution_05`` and optionally ``median_rotation_change`` (rad)."""
    fig = _new_figure((8, 4.5))
    ax = fig.add_subplot()
    x = np.arange(len(records))
    labels = [f"{r['iteration']}: {r['stage']}" for r in records]
    ax.plot(x, [r["resolution"] for r in records], "o-", color="C0", label="FSC 0.143")
    ax.plot(x, [r["resolution_05"] for r in records], "s--", color="C0", alpha=0.6,
            label="FSC 0.5")
    ax.set_ylabel("half-map resolution (Å, lower is better)", color="C0")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.grid(True, alpha=0.3)
    moved = [(k, np.degrees(r["median_rotation_change"])) for k, r in enumerate(records)
             if r.get("median_rotation_change") is not None]
    if moved:
        right = ax.twinx()
        right.bar([k for k, _ in moved], [v for _, v in moved], width=0.3, color="C1",
                  alpha=0.5, label="orientations moved (median)")
        right.set_ylabel("orientations moved since the previous iteration (deg)", color="C1")
        right.legend(fontsize=8, loc="upper center")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(title)
    return fig
