"""Volumes from images and orientations.

Conventions are those of ``geometry.py``: an orientation ``R`` images a volume ``V`` as
``p(x, y) = integral V(R^T (x, y, z)) dz``, volumes are indexed ``vol[z, y, x]``, images
``img[y, x]``, the centre of a box of ``N`` samples at index ``N // 2``; a particle
whose centre sits at box centre + ``t`` (``t = (tx, ty)`` pixels) has shift ``t``;
point-group symmetries act on the right (``R`` and ``R S`` give the same image).

By the Fourier-slice theorem the 2-D transform of ``p`` is the central slice
``P(kx, ky) = V^(R^T (kx, ky, 0))``: :func:`reconstruct_fourier` inserts every image's
transform there (direct Fourier inversion, CPU). :func:`reconstruct_astra` is the GPU
path (ASTRA CGLS/SIRT, needs CUDA).
"""
import concurrent.futures
import threading

import numpy as np
import scipy.fft
import scipy.sparse

from . import geometry
from .projection import astra_vectors
from .threads import thread_count

try:    # scipy's kernel behind csc_matrix @ dense; it adds into its output array, which
    # saves allocating and adding a whole grid per batch. Public API as fallback.
    from scipy.sparse._sparsetools import csc_matvecs as _csc_matvecs
except ImportError:                                     # pragma: no cover
    _csc_matvecs = None

__all__ = [
    "reconstruct_fourier", "FourierAccumulator", "reconstruct_astra",
    "soft_spherical_mask",
]


#: Most threads ``reconstruct_fourier`` chooses by itself: each holds its own grid.
MAX_DEFAULT_THREADS = 4


def soft_spherical_mask(size, radius=None, width=3.0):
    """Spherical mask ``(size, size, size)`` float32 centred at ``size // 2``.

    1 inside ``radius`` (pixels; default ``size / 2 - width``), a raised-cosine edge
    falling to 0 over ``width`` pixels outside it, 0 beyond.
    """
    if radius is None:
        radius = size / 2.0 - width
    c = np.arange(size) - size // 2
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    if width <= 0:
        return (r <= radius).astype(np.float32)
    edge = np.clip((r - radius) / width, 0.0, 1.0)
    return (0.5 * (1.0 + np.cos(np.pi * edge))).astype(np.float32)


def _ctf_on_grid(ctfs, start, stop, n_image, size, ky, kx):
    """CTF values ``(B, P)`` of images ``start:stop`` at padded-grid frequencies.

    ``kx, ky`` ``(P,)`` are frequency indices on the padded grid of ``size`` samples.
    ``ctfs`` is a callable ``ctfs(indices, size) -> (B, size, size)``, or an array in
    ``np.fft.fft2`` layout of shape ``(M, size, size)`` (used as is) or
    ``(M, n_image, n_image)`` (bilinear interpolation onto the finer padded grid).
    """
    if callable(ctfs):
        grid = np.asarray(ctfs(np.arange(start, stop), size), dtype=np.float32)
        return grid[:, ky % size, kx % size]
    block = np.asarray(ctfs[start:stop], dtype=np.float32)
    n = block.shape[-1]
    if n == size:
        return block[:, ky % size, kx % size]
    # Fractional frequency index on the image's own grid, then bilinear with wrap-around.
    fy, fx = ky * (n / size), kx * (n / size)
    y0, x0 = np.floor(fy).astype(np.int64), np.floor(fx).astype(np.int64)
    ay, ax = (fy - y0).astype(np.float32), (fx - x0).astype(np.float32)
    y0, x0, y1, x1 = y0 % n, x0 % n, (y0 + 1) % n, (x0 + 1) % n
    return ((1 - ay) * ((1 - ax) * block[:, y0, x0] + ax * block[:, y0, x1])
            + ay * ((1 - ax) * block[:, y1, x0] + ax * block[:, y1, x1]))


# ------------------------------------------------------------------ direct Fourier inversion

class FourierAccumulator:
    """Direct Fourier inversion, one batch at a time (CPU): the state of
    :func:`reconstruct_fourier` between batches.

    ``insert`` adds images with their orientations, shifts and CTFs to the sums of the
    ``L^3`` Fourier grid (``L = oversampling * N``, even; only ``kx >= 0`` is kept, Friedel
    symmetry): per voxel ``sum w CTF F`` and ``sum w CTF^2`` with trilinear gridding
    weights ``w``. ``add`` sums another accumulator of the same grid into this one (the
    full map of two half sets is the map of their summed accumulators). ``volume``
    divides, transforms back and corrects the gridding (see :func:`reconstruct_fourier`);
    it leaves the sums unchanged, so more images may follow.

    Memory: one float32 grid ``(L + 1)^2 (L / 2 + 1) x 3`` per thread (100 MB at N = 128).
    ``image_size`` N px; ``symmetry`` point group (each image inserted once per element
    ``S`` with orientation ``R S``); ``n_threads`` None: ``threads.thread_count`` (the usable
    cores, at most ``MAX_DEFAULT_THREADS``; the result does not depend on it, up to float
    rounding);
    ``batch_size`` images transformed together inside ``insert``; ``fft_workers`` threads
    of ``scipy.fft``.
    """

    def __init__(self, image_size, symmetry="C1", oversampling=2, n_threads=None,
                 batch_size=8, fft_workers=None):
        n = self.image_size = int(image_size)
        size = int(round(oversampling * n))
        size += size % 2                               # even grid: symmetric Nyquist planes
        self.size, self.half = size, size // 2
        half = self.half
        self.symmetry = geometry.quaternion_to_matrix(geometry.symmetry_group(symmetry))
        # Half-plane frequencies of the padded image (rfft2 layout) within Nyquist.
        ky_all = np.fft.fftfreq(size, 1.0 / size).astype(np.int64)
        KY, KX = np.meshgrid(ky_all, np.arange(half + 1), indexing="ij")
        keep = (KX ** 2 + KY ** 2) < half ** 2
        self.flat_keep = np.flatnonzero(keep.ravel())
        self.kx, self.ky = KX.ravel()[self.flat_keep], KY.ravel()[self.flat_keep]
        # The kx = 0 column holds both k and -k: half weight, restored by the final
        # Hermitian symmetrisation of the kx = 0 plane.
        self.column_weight = np.where(self.kx == 0, 0.5, 1.0).astype(np.float32)
        # Phase moving the box centre (index n // 2 of the unpadded image) to the origin.
        self.base_phase = np.exp(2j * np.pi * (self.kx + self.ky) * (n // 2) / size
                                 ).astype(np.complex64)
        # Grid [z, y, x]: z, y centred (index = frequency + half, 0..size), x 0..half.
        # Frequencies +half and -half alias; folded together at the end.
        self.nz = self.ny = size + 1
        self.nx = half + 1
        self.n_voxels = self.nz * self.ny * self.nx
        self.corner_offsets = np.array([dz * self.ny * self.nx + dy * self.nx + dx
                                        for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)],
                                       dtype=np.int32)
        self.kxf, self.kyf = self.kx.astype(np.float32), self.ky.astype(np.float32)
        self.n_threads = max(1, int(thread_count(n_threads, max_threads=MAX_DEFAULT_THREADS)))
        self.batch_size, self.fft_workers = int(batch_size), fft_workers
        # float32 grids: half the memory traffic of the scatter; the relative rounding of
        # sums over ~1e4 contributions (~1e-5) is far below any noise.
        self.grids = [np.zeros((self.n_voxels, 3), dtype=np.float32)
                      for _ in range(self.n_threads)]
        self.scratch = [{} for _ in range(self.n_threads)]
        self.n_images = 0

    def _insert_batch(self, images, rotations, shifts, ctfs, start, stop, grid, scratch):
        """Insert images ``start:stop`` into ``grid (voxels, 3)``: Re(num), Im(num), den."""
        size, n = self.size, self.image_size
        kx, ky = self.kx, self.ky
        spectra = scipy.fft.rfft2(images[start:stop].astype(np.float32), s=(size, size),
                                  workers=self.fft_workers)
        values = spectra.reshape(stop - start, -1)[:, self.flat_keep] * self.base_phase
        if shifts is not None:
            t = shifts[start:stop]
            values *= np.exp(2j * np.pi * (np.outer(t[:, 0], kx) + np.outer(t[:, 1], ky))
                             / size).astype(np.complex64)
        if ctfs is not None:
            ctf = _ctf_on_grid(ctfs, start, stop, n, size, ky, kx)
            values = values * ctf
            weight = ctf * ctf * self.column_weight
        else:
            weight = np.broadcast_to(self.column_weight, values.shape)
        values = values * self.column_weight
        for s in self.symmetry:
            rows = (rotations[start:stop] @ s).astype(np.float32)     # (B, 3, 3): R S
            # k3 = (R S)^T (kx, ky, 0) = kx * row0 + ky * row1, one contiguous (B, P)
            # array per component x, y, z (long inner loops: ~10x faster than (B, P, 3)).
            k3 = [self.kxf * rows[:, 0, c, None] + self.kyf * rows[:, 1, c, None]
                  for c in range(3)]
            # Friedel: store -k with conj(value) where kx < 0, so the grid keeps kx >= 0.
            sign = np.where(k3[0] < 0, np.float32(-1), np.float32(1))
            for component in k3:
                component *= sign
            _splat(grid, k3, values.real, values.imag * sign, weight,
                   self.half, self.nx, self.ny, self.corner_offsets, self.n_voxels, scratch)

    def insert(self, images, rotations, shifts=None, ctfs=None, progress=None):
        """Add images ``(M, N, N)`` with ``rotations`` (``(M, 3, 3)`` or quaternions
        ``(M, 4)``), ``shifts`` ``(M, 2)`` px and ``ctfs`` (as :func:`reconstruct_fourier`;
        a callable gets indices into these ``M`` images). ``progress(done, M)``."""
        images = np.asarray(images)
        if images.ndim != 3 or images.shape[1:] != (self.image_size, self.image_size):
            raise ValueError(f"images must be (M, {self.image_size}, {self.image_size}), "
                             f"got {images.shape}")
        n_images = len(images)
        rotations = geometry.as_rotation_matrices(rotations)
        if len(rotations) != n_images:
            raise ValueError("need one rotation per image")
        if shifts is not None:
            shifts = np.asarray(shifts, dtype=np.float64).reshape(n_images, 2)
        bs = self.batch_size
        batches = [(b, min(b + bs, n_images)) for b in range(0, n_images, bs)]
        n_threads = max(1, min(self.n_threads, len(batches)))
        lock = threading.Lock()
        done = [0]

        # Batches are spread over threads, each with its own grid (numpy and the sparse
        # kernel release the GIL); the grids are summed in ``volume``.
        def worker(k):
            for start, stop in batches[k::n_threads]:
                self._insert_batch(images, rotations, shifts, ctfs, start, stop,
                                   self.grids[k], self.scratch[k])
                if progress is not None:
                    with lock:
                        done[0] += stop - start
                        progress(done[0], n_images)

        if n_threads == 1:
            worker(0)
        else:
            with concurrent.futures.ThreadPoolExecutor(n_threads) as pool:
                for future in [pool.submit(worker, k) for k in range(n_threads)]:
                    future.result()
        self.n_images += n_images

    def add(self, other):
        """Add the sums of ``other`` (same image size, oversampling) into this one."""
        if (other.size, other.image_size) != (self.size, self.image_size):
            raise ValueError("accumulators of different grids cannot be added")
        for grid in other.grids:
            self.grids[0] += grid
        self.n_images += other.n_images
        return self

    def volume(self, wiener_constant=0.1, mask_radius=None, mask_width=3.0):
        """The map ``(N, N, N)`` float32 from the sums so far (see
        :func:`reconstruct_fourier` for ``wiener_constant`` and the mask)."""
        size, n = self.size, self.image_size
        accum = self.grids[0].astype(np.float64)
        for other in self.grids[1:]:
            accum += other
        num = (accum[:, 0] + 1j * accum[:, 1]).reshape(self.nz, self.ny, self.nx)
        den = accum[:, 2].reshape(self.nz, self.ny, self.nx)
        del accum
        num, den = _fold_grid(num, size), _fold_grid(den, size)
        with np.errstate(invalid="ignore", divide="ignore"):
            spectrum = np.where(den + wiener_constant > 0, num / (den + wiener_constant), 0)
        spectrum = np.fft.ifftshift(spectrum, axes=(0, 1))
        padded = scipy.fft.irfftn(spectrum, s=(size, size, size), workers=self.fft_workers)
        crop = (np.arange(n) - n // 2) % size          # origin of the padded box at index 0
        vol = padded[np.ix_(crop, crop, crop)]
        # Trilinear gridding multiplied the volume by sinc^2(x / L) along each axis.
        c = (np.arange(n) - n // 2) / size
        kernel = np.sinc(c) ** 2
        vol = vol / (kernel[:, None, None] * kernel[None, :, None] * kernel[None, None, :])
        if mask_radius is not None:
            vol = vol * soft_spherical_mask(n, mask_radius, mask_width)
        return vol.astype(np.float32)


def reconstruct_fourier(images, rotations, shifts=None, ctfs=None, symmetry="C1",
                        oversampling=2, wiener_constant=0.1, mask_radius=None,
                        mask_width=3.0, batch_size=8, n_threads=None, fft_workers=None,
                        progress=None):
    """Direct Fourier inversion of images with known orientations (CPU).

    Each image is zero-padded to ``L = oversampling * N`` (even), Fourier transformed,
    shift-corrected (the particle centre, at box centre + ``t``, is moved to the origin),
    and its half-plane (the image is real: the other half is its complex conjugate) is
    inserted, within the Nyquist radius, as the central slice ``R^T (kx, ky, 0)`` of an
    ``L^3`` Fourier grid with trilinear gridding weights ``w``. The grid keeps only
    ``kx >= 0`` (Friedel symmetry). Per voxel::

        V^(k) = sum w CTF F / (sum w CTF^2 + wiener_constant)

    which, without CTFs, is the weighted average of the samples near ``k`` (damped only
    where fewer than ~``wiener_constant`` samples landed). The inverse transform is
    cropped to ``N`` and divided by the trilinear kernel's transform ``sinc^2`` per axis.

    Args:
        images: ``(M, N, N)`` real images ``img[y, x]``.
        rotations: ``(M, 3, 3)`` matrices or ``(M, 4)`` quaternions ``(w, x, y, z)``.
        shifts: ``(M, 2)`` particle offsets ``(tx, ty)`` in pixels, or None (zero).
        ctfs: None (no CTF correction), an array ``(M, N, N)`` or ``(M, L, L)`` of CTFs
            in ``np.fft.fft2`` layout (``(M, N, N)`` is interpolated bilinearly onto the
            padded grid), or a callable ``ctfs(indices, size) -> (B, size, size)``
            giving the CTFs of images ``indices`` on a ``size`` grid with the SAME pixel
            size (finer frequency step), e.g. ``lambda i, size:
            ctf.ctf_2d_batch(size, pixel_size, du[i], dv[i], angle[i], ...)``:
            exact values, preferable at high defocus. The CTF's sign convention
            does not matter.
        symmetry: point group name (``geometry.symmetry_group``); each image is inserted
            once per group element ``S`` with orientation ``R S``.
        oversampling: padding factor of the Fourier grid (2 is standard; 1 is faster but
            amplifies the gridding correction at the box edge).
        wiener_constant: regulariser added to the weight sum (units: one image sample).
        mask_radius: radius in pixels of a soft spherical mask applied at the end, or None.
        mask_width: width in pixels of the mask's raised-cosine edge.
        batch_size: images transformed and inserted together (memory ~ 5 MB per image
            at N = 116; small batches keep the work arrays in cache).
        n_threads: threads inserting batches, each holding its own Fourier grid
            (``L^3 / 2 * 12`` bytes, 75 MB at N = 116); None: ``threads.thread_count``
            (``OMP_NUM_THREADS`` or the usable cores), at most ``MAX_DEFAULT_THREADS``.
            The result does not depend on it (up to float rounding).
        fft_workers: threads for ``scipy.fft`` (None: scipy's default).
        progress: optional callable ``progress(done, total)`` in images, called from
            the worker threads under a lock. A callable ``ctfs`` must be thread-safe.

    Returns:
        ``(N, N, N)`` float32 volume ``vol[z, y, x]`` in the images' units x pixel.
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be (M, N, N), got {images.shape}")
    acc = FourierAccumulator(images.shape[1], symmetry=symmetry, oversampling=oversampling,
                             n_threads=n_threads, batch_size=batch_size,
                             fft_workers=fft_workers)
    acc.insert(images, rotations, shifts=shifts, ctfs=ctfs, progress=progress)
    return acc.volume(wiener_constant, mask_radius, mask_width)


def _scratch(scratch, name, shape, dtype):
    """A work array ``shape`` of ``dtype`` from the reusable buffers in dict ``scratch``.

    Reusing the per-batch work arrays of a thread instead of allocating them anew saves
    the page faults of fresh memory (as much system time as the arithmetic itself).
    ``scratch=None`` allocates."""
    size = int(np.prod(shape))
    if scratch is None:
        return np.empty(shape, dtype=dtype)
    buf = scratch.get(name)
    if buf is None or buf.size < size or buf.dtype != dtype:
        buf = scratch[name] = np.empty(size, dtype=dtype)
    return buf[:size].reshape(shape)


def _splat(accum, k3, re, im, weight, half, nx, ny, corner_offsets, n_voxels, scratch=None):
    """Add trilinear contributions of points ``k3`` to ``accum``.

    ``k3``: the coordinates x, y, z (x >= 0) of the points as three ``(B, P)`` float32
    arrays (modified in place); ``accum (voxels, 3)`` float32, ``re, im, weight``
    ``(B, P)``; ``scratch``: dict of reusable work buffers or None. A sparse (voxels x
    points) matrix with 8 entries per point multiplies the ``(points, 3)`` values: one
    pass over the indices for all three quantities, added straight into ``accum``.
    Every array is computed with long contiguous inner loops (one corner at a time).
    """
    x, y, z = (np.ravel(c) for c in k3)
    n_points = x.size
    y += np.float32(half)                              # y, z grid index = frequency + half
    z += np.float32(half)
    lower, upper_weight = [], []
    for c in (z, y, x):
        floor = np.floor(c)
        upper_weight.append(c - floor)                 # weight of the upper corner
        lower.append(floor.astype(np.int32))
    base = lower[0]
    base *= ny
    base += lower[1]
    base *= nx
    base += lower[2]
    # Corner weights and indices, point-major (the matrix's column layout), corners in
    # the order of corner_offsets (z, then y, then x).
    wz, wy, wx = [(1 - f, f) for f in upper_weight]
    corner_weights = _scratch(scratch, "weights", (n_points, 8), np.float32)
    indices = _scratch(scratch, "indices", (n_points, 8), np.int32)
    for dz in (0, 1):
        for dy in (0, 1):
            zy = wz[dz] * wy[dy]
            for dx in (0, 1):
                corner = 4 * dz + 2 * dy + dx
                np.multiply(zy, wx[dx], out=corner_weights[:, corner])
                np.add(base, corner_offsets[corner], out=indices[:, corner])
    indptr = np.arange(0, 8 * n_points + 1, 8, dtype=np.int32)
    data = _scratch(scratch, "data", (n_points, 3), accum.dtype)
    data[:, 0], data[:, 1], data[:, 2] = np.ravel(re), np.ravel(im), np.ravel(weight)
    if _csc_matvecs is not None:
        _csc_matvecs(n_voxels, n_points, 3, indptr, indices.reshape(-1),
                     corner_weights.reshape(-1), data.reshape(-1),
                     accum.reshape(-1))                    # accum += matrix @ data
    else:
        matrix = scipy.sparse.csc_matrix((corner_weights.reshape(-1), indices.reshape(-1),
                                          indptr), shape=(n_voxels, n_points))
        accum += matrix @ data


def _fold_grid(grid, size):
    """Centred accumulation grid ``(size+1, size+1, size/2+1)`` -> ``(size, size, size/2+1)``.

    Adds the aliased +Nyquist rows onto -Nyquist, then makes the ``kx = 0`` and
    ``kx = Nyquist`` planes Hermitian (each holds both ``k`` and ``-k``):
    ``G(0, y, z) <- G(0, y, z) + conj G(0, -y, -z)``.
    """
    grid = grid.copy()
    grid[0] += grid[size]
    grid = grid[:size]
    grid[:, 0] += grid[:, size]
    grid = grid[:, :size]
    mirror = (size - np.arange(size)) % size            # index of -k in the centred layout
    for plane in (0, size // 2):
        p = grid[:, :, plane]
        grid[:, :, plane] = p + np.conj(p[mirror][:, mirror])
    return grid


def reconstruct_astra(images, rotations, shifts=None, symmetry="C1", iterations=50,
                      algorithm="CGLS3D_CUDA", gpu_index=None):
    """Iterative reconstruction on the GPU with ASTRA (``CGLS3D_CUDA`` or ``SIRT3D_CUDA``).

    UNTESTED here (no GPU on the development machine): written from ASTRA's
    ``parallel3d_vec`` documentation; check it against :func:`reconstruct_fourier` on a
    GPU before trusting it. No CTF correction. ASTRA's volume array is ``[z, y, x]`` like
    ours; its window is placed so that voxel ``N // 2`` is the origin.

    Args:
        images: ``(M, N, N)`` images; rotations ``(M, 3, 3)`` or ``(M, 4)``;
        shifts: ``(M, 2)`` pixels or None; symmetry: each image is used once per element.
        iterations: CGLS/SIRT iterations.

    Returns:
        ``(N, N, N)`` float32 volume.
    """
    import astra  # optional dependency, GPU only
    if not astra.use_cuda():
        raise RuntimeError("reconstruct_astra needs ASTRA with a CUDA GPU; use "
                           "reconstruct_fourier on the CPU.")
    images = np.asarray(images, dtype=np.float32)
    n = images.shape[1]
    rotations = geometry.as_rotation_matrices(rotations)
    sym = geometry.quaternion_to_matrix(geometry.symmetry_group(symmetry))
    all_rot = np.einsum("mij,gjk->gmik", rotations, sym).reshape(-1, 3, 3)
    all_shifts = None if shifts is None else np.tile(np.asarray(shifts), (len(sym), 1))
    all_images = np.tile(images, (len(sym), 1, 1))
    vectors = astra_vectors(all_rot, n, all_shifts)
    lo = -(n // 2) - 0.5                                # voxel N // 2 centred at 0
    vol_geom = astra.create_vol_geom(n, n, n, lo, lo + n, lo, lo + n, lo, lo + n)
    proj_geom = astra.create_proj_geom("parallel3d_vec", n, n, vectors)
    # ASTRA's projection data is [detector row, projection, detector column].
    sino = np.ascontiguousarray(np.transpose(all_images, (1, 0, 2)))
    sino_id = astra.data3d.create("-sino", proj_geom, sino)
    vol_id = astra.data3d.create("-vol", vol_geom, 0.0)
    cfg = astra.astra_dict(algorithm)
    cfg["ProjectionDataId"] = sino_id
    cfg["ReconstructionDataId"] = vol_id
    if gpu_index is not None:
        cfg["option"] = {"GPUindex": int(gpu_index)}
    alg_id = astra.algorithm.create(cfg)
    try:
        astra.algorithm.run(alg_id, iterations)
        vol = astra.data3d.get(vol_id)
    finally:
        astra.algorithm.delete(alg_id)
        astra.data3d.delete([sino_id, vol_id])
    return np.asarray(vol, dtype=np.float32)
