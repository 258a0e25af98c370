"""The computations behind the wizards: pure functions, no GUI, tested on their own."""
import numpy as np

from ..core import geometry


def projection_variance(volume, n_views=16, seed=0):
    """Mean pixel variance of ``n_views`` random projections of ``volume (N, N, N)``.

    The signal variance behind an SNR when images are *not* standardised.
    """
    from ..core.projection import project
    images = project(volume, geometry.uniform_quaternions(n_views, seed))
    return float(np.mean(images.reshape(n_views, -1).var(axis=1)))


def noisy_preview(volume, sigma2, size=None, seed=0):
    """One clean and one noisy particle ``(clean, noisy)``, ``(S, S)``, at unit-variance
    signal scaling as ``simulate`` makes them."""
    from ..core.simulation import simulate_particles
    sim = simulate_particles(volume, 1, image_size=size, sigma2=sigma2 if sigma2 > 0 else None,
                             seed=seed)
    return sim["clean"][0], sim["images"][0]


def box_for_pixel_size(box, pixel_size, target_pixel_size):
    """Even box (px) that brings ``box`` px at ``pixel_size`` to about ``target_pixel_size``.

    Returns ``(new_box, new_pixel_size)``; the physical box is kept as nearly as an even
    integer allows (the new pixel size is exact for that box).
    """
    if target_pixel_size <= 0 or pixel_size <= 0:
        raise ValueError("Pixel sizes must be positive.")
    new_box = max(2, int(round(box * pixel_size / target_pixel_size / 2.0)) * 2)
    return new_box, box * pixel_size / new_box


def max_shift_for_fraction(box, fraction):
    """Maximum shift in pixels for a fraction of the box (e.g. 0.1 -> 10% of the box)."""
    if not 0 <= fraction < 0.5:
        raise ValueError("The fraction of the box must be in [0, 0.5).")
    return float(round(box * fraction, 2))


def symmetry_choices():
    """(name, order, description) of common point groups for the picker."""
    out = []
    for name in ["C1", "C2", "C3", "C4", "C5", "C6", "C7", "D2", "D3", "D4", "D5", "D7",
                 "T", "O", "I"]:
        order = len(geometry.symmetry_group(name))
        out.append((name, order, symmetry_restriction(name)))
    return out


def symmetry_restriction(name):
    """What restricting orientations to the asymmetric unit of ``name`` means, in words."""
    order = len(geometry.symmetry_group(name))
    if order == 1:
        return "No symmetry: orientations cover all of SO(3)."
    return (f"{order} symmetry mates per orientation: views are restricted to 1/{order} of "
            f"SO(3) (an asymmetric unit), and distances are the minimum over the {order} mates.")
