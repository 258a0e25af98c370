"""Particle sources: images read in batches, with one record per particle.

A source holds ``N`` square images of ``S`` pixels at ``pixel_size`` Angstrom and, per
particle, an orientation (unit quaternion ``(w, x, y, z)``, ``geometry`` conventions), a
shift (``(tx, ty)`` pixels: the particle's centre sits at box centre + ``t``) and CTF
parameters (``defocus_u``, ``defocus_v`` Angstrom, ``astig_angle`` radians, plus the
acquisition's ``voltage`` kV, ``cs`` mm, ``amplitude_contrast``, ``phase_shift`` rad: the
keywords of ``ctf.ctf_2d_batch``). Images are only read when asked for,
``images(start, stop)`` or ``batches(batch_size)``, so memory stays bounded whatever
``N`` (in the spirit of ASPIRE's ``ImageSource`` and cryoDRGN's lazy ``ImageDataset``).

* ``ArraySource``: images already in memory (simulations, tests).
* ``MrcSource``: MRC stacks on disk, memory-mapped per batch (``mrcfile.mmap``) and
  unmapped after it, so the resident memory is one batch, not the stack.
* ``read_star`` / ``write_star``: RELION STAR files (3.1 with an optics table, or 3.0),
  angles ZYZ in degrees as RELION (``geometry.euler_to_matrix``), ``rlnOrigin`` =
  ``-t`` (RELION stores the shift that centres the particle).
* ``StackWriter``: streams a stack to disk batch by batch (a temporary file renamed
  when complete: no half-written stack).
"""
import os

import mrcfile
import numpy as np

from . import geometry

__all__ = ["ParticleSource", "ArraySource", "MrcSource", "StackWriter", "read_star",
           "write_star", "CTF_KEYS", "stack_length"]

#: Per-particle CTF keys (arrays ``(N,)``); the others are scalars of the acquisition.
CTF_KEYS = ("defocus_u", "defocus_v", "astig_angle")
CTF_SCALARS = dict(voltage=300.0, cs=2.7, amplitude_contrast=0.1, phase_shift=0.0)


def _check_ctf(ctf, n):
    """A copy of ``ctf`` with ``(n,)`` float arrays for ``CTF_KEYS`` and float scalars."""
    if ctf is None:
        return None
    missing = [k for k in CTF_KEYS if k not in ctf]
    if missing:
        raise ValueError(f"CTF parameters lack {missing}")
    out = {}
    for k in CTF_KEYS:
        v = np.broadcast_to(np.asarray(ctf[k], dtype=np.float64), (n,))
        out[k] = np.array(v)
    for k, default in CTF_SCALARS.items():
        v = np.asarray(ctf.get(k, default), dtype=np.float64)
        if v.ndim and np.ptp(v) > 0:
            raise ValueError(f"CTF '{k}' differs between particles; one value per data "
                             "set is supported (split the data by optics group).")
        out[k] = float(v.ravel()[0]) if v.ndim else float(v)
    return out


class ParticleSource:
    """``N`` particle images ``(S, S)`` at ``pixel_size`` A with per-particle records.

    Subclasses implement ``_read(indices) -> (B, S, S) float32``. Records:
    ``quaternions (N, 4)`` or None (no orientations), ``shifts (N, 2)`` pixels (zeros
    when unknown), ``ctf`` dict (see the module docstring) or None. ``ids``: optional
    ``(N,)`` identifiers of the particles (e.g. Scipion ids) that messages name.
    """

    ids = None

    def __init__(self, n, image_size, pixel_size, quaternions=None, shifts=None, ctf=None):
        self.n = int(n)
        self.image_size = int(image_size)
        self.pixel_size = float(pixel_size)
        if not self.pixel_size > 0:
            raise ValueError(f"pixel size must be > 0 A, got {pixel_size}")
        self.quaternions = None
        if quaternions is not None:
            q = np.asarray(quaternions, dtype=np.float64)
            if q.shape != (self.n, 4):
                raise ValueError(f"quaternions must be ({self.n}, 4), got {q.shape}")
            self.quaternions = geometry.normalize(q)
        t = np.zeros((self.n, 2)) if shifts is None else np.asarray(shifts, dtype=np.float64)
        if t.shape != (self.n, 2):
            raise ValueError(f"shifts must be ({self.n}, 2) pixels, got {t.shape}")
        self.shifts = t
        self.ctf = _check_ctf(ctf, self.n)

    def __len__(self):
        return self.n

    def __repr__(self):
        return (f"{type(self).__name__}({self.n} particles, {self.image_size} px at "
                f"{self.pixel_size:.4g} A/px, orientations: {self.quaternions is not None}, "
                f"CTF: {self.ctf is not None})")

    @property
    def has_orientations(self):
        return self.quaternions is not None

    def _read(self, indices):
        raise NotImplementedError

    def images(self, start=0, stop=None):
        """Images ``start:stop`` as float32 ``(B, S, S)``."""
        stop = self.n if stop is None else min(int(stop), self.n)
        start = max(0, int(start))
        if stop <= start:
            return np.zeros((0, self.image_size, self.image_size), np.float32)
        return self._read(np.arange(start, stop))

    def take(self, indices):
        """Images at ``indices`` (any order) as float32 ``(B, S, S)``."""
        return self._read(np.asarray(indices, dtype=np.int64))

    def batches(self, batch_size=256, progress=None):
        """Iterate ``(start, stop, images (B, S, S))`` over the whole source;
        ``progress(done, total)`` after each batch."""
        batch_size = max(1, int(batch_size))
        for start in range(0, self.n, batch_size):
            stop = min(self.n, start + batch_size)
            yield start, stop, self.images(start, stop)
            if progress is not None:
                progress(stop, self.n)

    def ctf_params(self, start, stop):
        """CTF keywords of ``ctf_2d_batch`` for particles ``start:stop``, or None."""
        if self.ctf is None:
            return None
        return {k: (v[start:stop] if k in CTF_KEYS else v) for k, v in self.ctf.items()}

    def ctf_images(self, indices, size, pixel_size=None):
        """CTFs ``(B, size, size)`` in ``fft2`` layout of the particles ``indices`` on a
        ``size`` grid (``pixel_size`` default: the source's), or None without CTF."""
        if self.ctf is None:
            return None
        from .ctf import ctf_2d_batch
        idx = np.asarray(indices, dtype=np.int64)
        c = self.ctf
        return ctf_2d_batch(size, self.pixel_size if pixel_size is None else pixel_size,
                            c["defocus_u"][idx], c["defocus_v"][idx], c["astig_angle"][idx],
                            voltage=c["voltage"], cs=c["cs"],
                            amplitude_contrast=c["amplitude_contrast"],
                            phase_shift=c["phase_shift"])

    def with_records(self, quaternions="keep", shifts=None, ctf="keep"):
        """A source over the same images with new records; ``'keep'`` keeps a record,
        ``quaternions=None`` / ``ctf=None`` drop it. ``shifts=None`` keeps the current
        shifts: input shifts are never thrown away (pass zeros to reset them)."""
        keep = lambda v: isinstance(v, str) and v == "keep"  # noqa: E731
        return _RecordView(self, self.quaternions if keep(quaternions) else quaternions,
                           self.shifts if shifts is None else shifts,
                           self.ctf if keep(ctf) else ctf)


class _RecordView(ParticleSource):
    """The images of another source with other records."""

    def __init__(self, base, quaternions, shifts, ctf):
        super().__init__(base.n, base.image_size, base.pixel_size, quaternions, shifts, ctf)
        self.base = base
        self.ids = base.ids

    def _read(self, indices):
        return self.base._read(indices)

    def __getattr__(self, name):       # e.g. a MrcSource's locations
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)


class ArraySource(ParticleSource):
    """Particles held in memory: ``images (N, S, S)`` (any array, kept by reference)."""

    def __init__(self, images, pixel_size, quaternions=None, shifts=None, ctf=None):
        images = np.asarray(images)
        if images.ndim != 3 or images.shape[1] != images.shape[2]:
            raise ValueError(f"images must be (N, S, S) square, got {images.shape}")
        super().__init__(len(images), images.shape[-1], pixel_size, quaternions, shifts, ctf)
        self.data = images

    def _read(self, indices):
        return np.asarray(self.data[indices], dtype=np.float32)


# ------------------------------------------------------------------------------ MRC

def _stack_header(path):
    """``(n, size, voxel size A)`` of an MRC image stack (a 2-D image counts as 1)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Image stack {path} does not exist.")
    try:
        with mrcfile.mmap(path, mode="r", permissive=True) as mrc:
            shape = mrc.data.shape
            voxel = float(mrc.voxel_size.x)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable MRC stack ({exc})") from exc
    if len(shape) == 2:
        shape = (1,) + shape
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(f"{path}: images must be square, the stack is {shape}")
    return shape[0], shape[1], voxel


def stack_length(path):
    """Number of images in an MRC stack (reads the header only)."""
    return _stack_header(path)[0]


class MrcSource(ParticleSource):
    """Particles in MRC stacks on disk, read in batches.

    ``locations``: one path (every image of that stack, in order) or a list of
    ``(path, index)`` per particle (index 0-based). ``pixel_size`` default: the first
    stack's header. Each read maps the stacks it needs (``mrcfile.mmap``), copies the
    requested images and unmaps them, so the resident memory is one batch.
    """

    def __init__(self, locations, pixel_size=None, quaternions=None, shifts=None, ctf=None):
        if isinstance(locations, (str, os.PathLike)):
            path = os.fspath(locations)
            n, size, voxel = _stack_header(path)
            self.paths = [path]
            self.file_index = np.zeros(n, np.int64)
            self.image_index = np.arange(n, dtype=np.int64)
        else:
            paths, self.file_index, self.image_index = [], [], []
            lookup = {}
            for path, index in locations:
                path = os.fspath(path)
                if path not in lookup:
                    lookup[path] = len(paths)
                    paths.append(path)
                self.file_index.append(lookup[path])
                self.image_index.append(int(index))
            if not paths:
                raise ValueError("No particles: the list of locations is empty.")
            self.paths = paths
            self.file_index = np.asarray(self.file_index, np.int64)
            self.image_index = np.asarray(self.image_index, np.int64)
            size, voxel = None, None
            for k, path in enumerate(paths):
                n_k, size_k, voxel_k = _stack_header(path)
                if size is not None and size_k != size:
                    raise ValueError(f"{path} holds {size_k} px images, {paths[0]} holds "
                                     f"{size} px: all particles must have one size.")
                size, voxel = size_k, voxel if voxel is not None else voxel_k
                used = self.image_index[self.file_index == k]
                if used.min() < 0 or used.max() >= n_k:
                    raise ValueError(f"{path} has {n_k} images; index {used.max() + 1} "
                                     "(1-based) was asked for.")
            n = len(self.image_index)
        if pixel_size is None:
            if not voxel or voxel <= 0:
                raise ValueError(f"{self.paths[0]} has no pixel size in its header: give "
                                 "one (Angstrom).")
            pixel_size = voxel
        super().__init__(n, size, pixel_size, quaternions, shifts, ctf)

    def _read(self, indices):
        out = np.empty((len(indices), self.image_size, self.image_size), np.float32)
        files = self.file_index[indices]
        rows = self.image_index[indices]
        for k in np.unique(files):
            sel = np.flatnonzero(files == k)
            with mrcfile.mmap(self.paths[k], mode="r", permissive=True) as mrc:
                data = mrc.data if mrc.data.ndim == 3 else mrc.data[None]
                r = rows[sel]
                if len(r) > 1 and np.all(np.diff(r) == 1):      # contiguous: one slice
                    out[sel] = data[r[0]:r[-1] + 1]
                else:
                    out[sel] = data[r]
        return out


class StackWriter:
    """Write ``n`` images of ``size`` px to an MRC stack batch by batch.

    Use as a context manager; ``write(start, images)`` stores images ``start:start+B``.
    The stack is written to ``path + '.partial'`` (created by ``mrcfile.new_mmap``) and
    renamed to ``path`` only when every image was written and the writer closes without
    error, so a failed run leaves no stack that looks complete. Each batch maps only its
    own rows, so resident memory stays one batch.
    """

    def __init__(self, path, n, size, pixel_size):
        self.path, self.n, self.size = os.fspath(path), int(n), int(size)
        self.pixel_size = float(pixel_size)
        self.partial = self.path + ".partial"
        with mrcfile.new_mmap(self.partial, shape=(self.n, self.size, self.size), mrc_mode=2,
                              overwrite=True) as mrc:
            mrc.set_image_stack()
            mrc.voxel_size = self.pixel_size
            self._offset = int(mrc.header.nbytes + mrc.extended_header.nbytes)
        self._written = np.zeros(self.n, bool)
        self._min, self._max, self._sum, self._sum2 = np.inf, -np.inf, 0.0, 0.0

    def write(self, start, images):
        images = np.asarray(images, dtype=np.float32)
        stop = start + len(images)
        if images.shape[1:] != (self.size, self.size) or start < 0 or stop > self.n:
            raise ValueError(f"images {images.shape} at {start} do not fit the stack "
                             f"({self.n}, {self.size}, {self.size})")
        if not len(images):
            return
        rows = np.memmap(self.partial, dtype="<f4", mode="r+",
                         offset=self._offset + 4 * start * self.size * self.size,
                         shape=images.shape)
        rows[:] = images
        rows.flush()
        del rows
        self._written[start:stop] = True
        self._min = min(self._min, float(images.min()))
        self._max = max(self._max, float(images.max()))
        self._sum += float(images.sum(dtype=np.float64))
        self._sum2 += float(np.square(images, dtype=np.float64).sum())

    def close(self):
        """Finish the header (min, max, mean, rms) and move the stack to ``path``."""
        if not self._written.all():
            missing = int((~self._written).sum())
            self.abort()
            raise RuntimeError(f"{missing} of {self.n} images were never written to "
                               f"{self.path}; nothing was saved.")
        count = self.n * self.size * self.size
        mean = self._sum / count
        with mrcfile.mmap(self.partial, mode="r+") as mrc:
            mrc.header.dmin, mrc.header.dmax, mrc.header.dmean = self._min, self._max, mean
            mrc.header.rms = np.sqrt(max(self._sum2 / count - mean * mean, 0.0))
        os.replace(self.partial, self.path)
        return self.path

    def abort(self):
        if os.path.exists(self.partial):
            os.remove(self.partial)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


# ------------------------------------------------------------------------------ STAR

def _table(path, name):
    from emtable import Table
    try:
        return Table(fileName=path, tableName=name)
    except Exception:
        return None


def _column(rows, name, dtype=float):
    return np.array([dtype(getattr(r, name)) for r in rows])


def _resolve(image_path, star_dir, datadir):
    if os.path.isabs(image_path):
        return image_path
    for base in ([datadir] if datadir else []) + [star_dir, os.getcwd()]:
        candidate = os.path.join(base, image_path)
        if os.path.exists(candidate):
            return candidate
    return os.path.join(datadir or star_dir, image_path)


def read_star(path, datadir=None, pixel_size=None):
    """An ``MrcSource`` from a RELION particles STAR file (3.1 or 3.0).

    Reads ``rlnImageName`` (``index@stack``, 1-based; stacks relative to ``datadir``,
    else the STAR file's folder, else the working directory), orientations when
    ``rlnAngleRot/Tilt/Psi`` (degrees, ZYZ) are present, shifts ``-rlnOriginX/YAngst / px``
    (or ``-rlnOriginX/Y`` pixels in 3.0), and the CTF when ``rlnDefocusU`` is present
    (``rlnDefocusAngle`` degrees; voltage, Cs and amplitude contrast from the optics
    table). ``pixel_size`` overrides the file's (``rlnImagePixelSize``, or RELION 3.0's
    detector pixel size and magnification, else the stack header).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"STAR file {path} does not exist.")
    particles = _table(path, "particles")
    optics_rows = []
    if particles is not None:
        optics = _table(path, "optics")
        optics_rows = list(optics) if optics is not None else []
    else:
        particles = _table(path, None)
    rows = list(particles) if particles is not None else []
    if not rows or not particles.hasColumn("rlnImageName"):
        raise ValueError(f"{path} has no particles table with rlnImageName.")
    cols = set(particles.getColumnNames())

    def per_particle(name, default=None):
        """A per-particle value: the particle's column, else its optics group's."""
        if name in cols:
            return _column(rows, name)
        if optics_rows and hasattr(optics_rows[0], name):
            by_group = {int(o.rlnOpticsGroup): float(getattr(o, name)) for o in optics_rows}
            groups = (_column(rows, "rlnOpticsGroup", int) if "rlnOpticsGroup" in cols
                      else np.full(len(rows), int(optics_rows[0].rlnOpticsGroup)))
            return np.array([by_group[g] for g in groups])
        return None if default is None else np.full(len(rows), float(default))

    if pixel_size is None:
        px = per_particle("rlnImagePixelSize")
        if px is None and "rlnDetectorPixelSize" in cols and "rlnMagnification" in cols:
            px = _column(rows, "rlnDetectorPixelSize") * 1e4 / _column(rows, "rlnMagnification")
        if px is not None:
            if np.ptp(px) > 1e-6 * px.max():
                raise ValueError(f"{path} mixes pixel sizes {sorted(set(px))}: resample the "
                                 "particles to one pixel size first.")
            pixel_size = float(px[0])
    star_dir = os.path.dirname(os.path.abspath(path))
    locations = []
    for r in rows:
        index, _, stack = str(r.rlnImageName).partition("@")
        if not stack:
            index, stack = "1", index
        locations.append((_resolve(stack, star_dir, datadir), int(index) - 1))
    source = MrcSource(locations, pixel_size=pixel_size)
    px = source.pixel_size

    quats = None
    if {"rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"} <= cols:
        angles = np.radians([_column(rows, c) for c in
                             ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")])
        quats = geometry.matrix_to_quaternion(geometry.euler_to_matrix(*angles))
    shifts = np.zeros((len(rows), 2))
    if {"rlnOriginXAngst", "rlnOriginYAngst"} <= cols:
        shifts = -np.stack([_column(rows, "rlnOriginXAngst"),
                            _column(rows, "rlnOriginYAngst")], axis=1) / px
    elif {"rlnOriginX", "rlnOriginY"} <= cols:
        shifts = -np.stack([_column(rows, "rlnOriginX"), _column(rows, "rlnOriginY")], axis=1)
    ctf = None
    if "rlnDefocusU" in cols:
        du = _column(rows, "rlnDefocusU")
        ctf = dict(defocus_u=du,
                   defocus_v=per_particle("rlnDefocusV") if "rlnDefocusV" in cols else du,
                   astig_angle=np.radians(per_particle("rlnDefocusAngle", 0.0)),
                   voltage=per_particle("rlnVoltage", CTF_SCALARS["voltage"]),
                   cs=per_particle("rlnSphericalAberration", CTF_SCALARS["cs"]),
                   amplitude_contrast=per_particle("rlnAmplitudeContrast",
                                                   CTF_SCALARS["amplitude_contrast"]),
                   phase_shift=np.radians(per_particle("rlnPhaseShift", 0.0)))
    return source.with_records(quaternions=quats, shifts=shifts, ctf=ctf)


def write_star(path, source, stack_path=None, extra=None):
    """Write ``source``'s records as a RELION 3.1 particles STAR file.

    Image names are ``index@stack`` with ``stack_path`` (default: the source's own stack
    when it is an ``MrcSource`` over one stack) written relative to the STAR file's
    folder when inside it. Orientations (if any) as ``rlnAngleRot/Tilt/Psi`` degrees,
    shifts as ``rlnOriginX/YAngst = -t * pixel size``, the CTF (if any) as
    ``rlnDefocusU/V/Angle`` with voltage, Cs and amplitude contrast in the optics table.
    ``extra``: ``{column name: (N,) array}`` added per particle (e.g. a residual).
    """
    from emtable import Table
    path = os.fspath(path)
    star_dir = os.path.dirname(os.path.abspath(path))
    n = len(source)

    def rel(p):
        p = os.path.abspath(p)
        return os.path.relpath(p, star_dir) if p.startswith(star_dir + os.sep) else p

    if stack_path is not None:
        names = [f"{i + 1:06d}@{rel(stack_path)}" for i in range(n)]
    elif hasattr(source, "paths"):
        names = [f"{int(source.image_index[i]) + 1:06d}@{rel(source.paths[source.file_index[i]])}"
                 for i in range(n)]
    else:
        raise ValueError("An in-memory source needs stack_path (the stack its images were "
                         "written to).")
    ctf = source.ctf or {}
    optics = Table(columns=["rlnOpticsGroupName", "rlnOpticsGroup", "rlnVoltage",
                            "rlnSphericalAberration", "rlnAmplitudeContrast",
                            "rlnImagePixelSize", "rlnImageSize", "rlnImageDimensionality"])
    optics.addRow("opticsGroup1", 1, ctf.get("voltage", CTF_SCALARS["voltage"]),
                  ctf.get("cs", CTF_SCALARS["cs"]),
                  ctf.get("amplitude_contrast", CTF_SCALARS["amplitude_contrast"]),
                  source.pixel_size, source.image_size, 2)
    columns = {"rlnImageName": names, "rlnOpticsGroup": np.ones(n, int)}
    if source.quaternions is not None:
        rot, tilt, psi = geometry.matrix_to_euler(geometry.quaternion_to_matrix(source.quaternions))
        columns.update(rlnAngleRot=np.degrees(rot), rlnAngleTilt=np.degrees(tilt),
                       rlnAnglePsi=np.degrees(psi))
    columns["rlnOriginXAngst"] = -source.shifts[:, 0] * source.pixel_size
    columns["rlnOriginYAngst"] = -source.shifts[:, 1] * source.pixel_size
    if source.ctf is not None:
        columns.update(rlnDefocusU=ctf["defocus_u"], rlnDefocusV=ctf["defocus_v"],
                       rlnDefocusAngle=np.degrees(ctf["astig_angle"]),
                       rlnPhaseShift=np.full(n, np.degrees(ctf["phase_shift"])))
    for name, values in (extra or {}).items():
        columns[name] = np.asarray(values)
    table = Table(columns=list(columns))
    values = [columns[c] for c in columns]
    for i in range(n):
        table.addRow(*[v[i].item() if hasattr(v[i], "item") else v[i] for v in values])
    tmp = path + ".partial"
    with open(tmp, "w") as fh:
        fh.write("\n# version 30001\n")
        optics.writeStar(fh, tableName="optics")
        fh.write("\n# version 30001\n")
        table.writeStar(fh, tableName="particles")
    os.replace(tmp, path)
    return path
