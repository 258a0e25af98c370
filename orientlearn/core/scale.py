"""Particle-diameter scaling: every particle fills the same fraction of the network's box.

A generalist distance model sees particles of many proteins, boxes and pixel sizes. The
user gives the particle diameter in Angstrom (RELION's mask diameter); ``ParticleScaler``
resamples images of ``input_box`` pixels of ``input_pixel_size`` A so that the diameter
spans ``fill * network_box`` pixels of the network's box:

1. zero-pad (with each image's background level) to ``padded_box`` >= ``input_box``,
2. Fourier crop or pad to ``resampled_box`` (``padded_box * input_pixel_size /
   network_pixel_size``, rounded; the padding is chosen so the rounding error is small),
3. centred crop or pad to ``network_box``.

The centre ``N // 2`` of a box stays on the centre of the next one, so a particle centred in
the input is centred for the network, and shifts scale by ``input_pixel_size /
network_pixel_size`` (``to_network_shifts`` / ``to_input_shifts``). Pixel values are
preserved (a constant image stays constant). Lengths in pixels unless a name says ``_A``.
"""
import dataclasses

import numpy as np
import scipy.fft as sfft

__all__ = ["DEFAULT_FILL", "ParticleScaler", "centred_crop_or_pad", "fourier_resize"]

DEFAULT_FILL = 0.6
"""Fraction of the network's box the particle diameter spans (leaves room for shifts up to
10% of the box and the CTF's delocalisation)."""


def centred_crop_or_pad(images, size, fill_value=None):
    """Centred crop or pad of images ``(M, N, N)`` to ``(M, size, size)``; index ``N // 2``
    lands on ``size // 2``. Padding uses ``fill_value`` (``(M,)`` array or scalar; default
    0)."""
    images = np.asarray(images)
    m, n = images.shape[0], images.shape[-1]
    if n == size:
        return images.copy()
    out = np.zeros((m, size, size), dtype=images.dtype)
    if fill_value is not None:
        out += np.asarray(fill_value, dtype=images.dtype).reshape(-1, 1, 1)
    lo = min(n, size)
    src, dst = n // 2 - lo // 2, size // 2 - lo // 2
    out[:, dst:dst + lo, dst:dst + lo] = images[:, src:src + lo, src:src + lo]
    return out


def fourier_resize(images, size):
    """Fourier crop (``size < N``) or zero-pad (``size > N``) images ``(M, N, N)`` to
    ``(M, size, size)``: the same field of view sampled with ``N / size`` times the pixel
    size. Values are preserved (the zero frequency is kept, scaled by ``(size / N)^2``);
    cropping removes frequencies the new pixel size cannot hold (no aliasing). float32."""
    images = np.asarray(images, dtype=np.float32)
    n = images.shape[-1]
    if size == n:
        return images.copy()
    ax = (-2, -1)
    # real-space index n // 2 -> 0 before the transform, 0 -> size // 2 after: centre kept
    spec = sfft.fftshift(sfft.fft2(sfft.ifftshift(images, axes=ax), axes=ax), axes=ax)
    spec = centred_crop_or_pad(spec, size)
    out = sfft.fftshift(sfft.ifft2(sfft.ifftshift(spec, axes=ax), axes=ax).real, axes=ax)
    return (out * (size / n) ** 2).astype(np.float32)


def _best_padding(input_box, ratio, max_extra):
    """``(padded, resampled)`` with ``padded`` in ``[input_box, input_box + max_extra]`` and
    ``resampled = round(padded * ratio)`` (>= 2) minimising ``|resampled / padded - ratio|``
    (the smallest padding among ties)."""
    best = None
    for padded in range(input_box, input_box + max_extra + 1):
        resampled = max(2, round(padded * ratio))
        err = abs(resampled / padded - ratio) / ratio
        if best is None or err < best[0] - 1e-12:
            best = (err, padded, resampled)
    return best[1], best[2]


@dataclasses.dataclass(frozen=True)
class ParticleScaler:
    """Resample particles so their diameter spans ``fill * network_box`` pixels.

    ``diameter_A``: particle diameter (A, RELION's mask diameter); ``input_pixel_size``
    (A/px) and ``input_box`` (px): the user's particles; ``network_box`` (px): the
    network's input size; ``fill``: fraction of ``network_box`` the diameter spans;
    ``max_padding``: extra input pixels allowed to make the resampling ratio exact.
    Raises ``ValueError`` for non-positive sizes, ``fill`` outside (0, 1], or a diameter
    larger than the input box."""
    diameter_A: float
    input_pixel_size: float
    input_box: int
    network_box: int
    fill: float = DEFAULT_FILL
    max_padding: int = 16

    def __post_init__(self):
        if not self.diameter_A > 0:
            raise ValueError(f"particle diameter must be > 0 A, got {self.diameter_A}")
        if not self.input_pixel_size > 0:
            raise ValueError(f"pixel size must be > 0 A, got {self.input_pixel_size}")
        if self.input_box < 8 or self.network_box < 8:
            raise ValueError(f"boxes must be at least 8 px, got input {self.input_box}, "
                             f"network {self.network_box}")
        if not 0 < self.fill <= 1:
            raise ValueError(f"fill must be in (0, 1], got {self.fill}")
        box_A = self.input_box * self.input_pixel_size
        if self.diameter_A > box_A * (1 + 1e-6):
            raise ValueError(
                f"particle diameter {self.diameter_A:g} A exceeds the particle box "
                f"({self.input_box} px x {self.input_pixel_size:g} A = {box_A:g} A); give "
                "the diameter of the particle (RELION's mask diameter), not more than the box")

    @property
    def _sizes(self):
        return _best_padding(self.input_box, self.input_pixel_size / self.target_pixel_size,
                             self.max_padding)

    @property
    def target_pixel_size(self):
        """The pixel size (A) at which the diameter spans exactly ``fill * network_box``."""
        return self.diameter_A / (self.fill * self.network_box)

    @property
    def padded_box(self):
        return self._sizes[0]

    @property
    def resampled_box(self):
        return self._sizes[1]

    @property
    def network_pixel_size(self):
        """The pixel size (A) of the network's images (``target_pixel_size`` up to the
        rounding of ``resampled_box``)."""
        return self.input_pixel_size * self.padded_box / self.resampled_box

    @property
    def scale(self):
        """Network pixels per input pixel."""
        return self.input_pixel_size / self.network_pixel_size

    @property
    def diameter_px(self):
        """The particle diameter in the network's pixels."""
        return self.diameter_A / self.network_pixel_size

    def to_network_shifts(self, shifts):
        """Shifts ``(M, 2)`` in input pixels -> network pixels."""
        return np.asarray(shifts, dtype=np.float64) * self.scale

    def to_input_shifts(self, shifts):
        """Shifts ``(M, 2)`` in network pixels -> input pixels."""
        return np.asarray(shifts, dtype=np.float64) / self.scale

    def __call__(self, images, chunk=512):
        """Images ``(M, input_box, input_box)`` (or one image) -> float32
        ``(M, network_box, network_box)`` at ``network_pixel_size``. Padding uses each
        image's mean over its outermost ring of pixels (its background level)."""
        images = np.asarray(images, dtype=np.float32)
        single = images.ndim == 2
        if single:
            images = images[None]
        if images.ndim != 3 or images.shape[1:] != (self.input_box, self.input_box):
            raise ValueError(f"expected images (M, {self.input_box}, {self.input_box}), "
                             f"got {images.shape}")
        out = np.empty((len(images), self.network_box, self.network_box), np.float32)
        for b0 in range(0, len(images), chunk):
            x = images[b0:b0 + chunk]
            ring = np.concatenate([x[:, 0], x[:, -1], x[:, 1:-1, 0], x[:, 1:-1, -1]], axis=1)
            background = ring.mean(axis=1)
            x = centred_crop_or_pad(x, self.padded_box, fill_value=background)
            x = fourier_resize(x, self.resampled_box)
            out[b0:b0 + chunk] = centred_crop_or_pad(x, self.network_box, fill_value=background)
        return out[0] if single else out

    def describe(self):
        """One line for logs and model cards."""
        return (f"diameter {self.diameter_A:g} A: {self.input_box} px at "
                f"{self.input_pixel_size:g} A/px -> {self.network_box} px at "
                f"{self.network_pixel_size:.4g} A/px (diameter {self.diameter_px:.1f} px, "
                f"{self.diameter_px / self.network_box:.0%} of the box)")
