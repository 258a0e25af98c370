"""Between Scipion objects and the plain arrays of ``orientlearn.core``.

Orientation convention (see ``core/geometry.py``): a particle's ``ALIGN_PROJ`` transform is
``inv([[R, t], [0, 1]])``, with ``R`` the rotation that images the volume and ``t`` the
particle's offset from the box centre in pixels; this is what Scipion's Relion and Xmipp
converters read (checked in ``tests/test_convert.py``).
"""
import os
from collections import OrderedDict

import mrcfile
import numpy as np
import pwem.constants as emcts
import pwem.objects as emobj

from .core import geometry


def clean_path(filename):
    """Scipion file names may carry a ``:mrc``/``:mrcs`` format suffix; drop it."""
    for suffix in (":mrcs", ":mrc", ":spi", ":stk", ":hdf"):
        if filename.endswith(suffix):
            return filename[: -len(suffix)]
    return filename


def read_stack(filename):
    """All images of an MRC stack as ``(N, S, S)`` float32 (a single image gives N = 1)."""
    path = clean_path(filename)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Image file {path} does not exist.")
    try:
        with mrcfile.mmap(path, mode="r", permissive=True) as mrc:
            data = np.asarray(mrc.data, dtype=np.float32)
    except Exception:
        # Not an MRC file: fall back to Scipion's image handler (SPIDER, HDF, ...).
        from pwem.emlib.image import ImageHandler
        ih = ImageHandler()
        x, y, z, n = ih.getDimensions(path)
        data = np.stack([ih.read((i, path)).getData() for i in range(1, n + 1)]).astype(np.float32)
    if data.ndim == 2:
        data = data[None]
    return data


def read_particle_images(particles, log=None):
    """Images of a SetOfParticles in id order: ``(ids (N,), images (N, S, S) float32)``.

    Reads each stack file once (memory-mapped) and picks the particles' indices from it.
    """
    by_file = OrderedDict()
    ids = []
    for k, p in enumerate(particles.iterItems(orderBy="id")):
        index, fn = p.getLocation()
        by_file.setdefault(fn, []).append((k, (index or 1) - 1))
        ids.append(p.getObjId())
    if not ids:
        raise ValueError("The set of particles is empty.")
    images = None
    for fn, entries in by_file.items():
        stack = read_stack(fn)
        if images is None:
            images = np.empty((len(ids),) + stack.shape[1:], dtype=np.float32)
        if stack.shape[1:] != images.shape[1:]:
            raise ValueError(f"Images of {fn} are {stack.shape[1:]}, others are "
                             f"{images.shape[1:]}: all particles must have one size.")
        for k, idx in entries:
            images[k] = stack[idx]
    return np.asarray(ids), images


def particle_files(particles):
    """The distinct image files of a SetOfParticles (format suffixes dropped), read from
    the set's table with one query (no iteration over the particles)."""
    try:
        names = particles.getUniqueValues("_filename")
    except Exception:  # an in-memory set without a mapper
        names = {p.getFileName() for p in particles.iterItems()}
    return sorted({clean_path(n) for n in names if n})


def missing_particle_files(particles):
    """Image files a SetOfParticles refers to that no longer exist (list of paths)."""
    return [f for f in particle_files(particles) if not os.path.exists(f)]


def particle_image_defects(particles, chunk=4096):
    """``(ids (N,), defects)``: the particles' ids in id order and the masks of
    ``core.checks.image_defects`` (non-finite, constant, huge values), reading each stack
    memory-mapped, ``chunk`` images at a time, so memory stays bounded."""
    from .core import checks
    by_file = OrderedDict()
    ids = []
    for k, p in enumerate(particles.iterItems(orderBy="id")):
        index, fn = p.getLocation()
        by_file.setdefault(fn, []).append((k, (index or 1) - 1))
        ids.append(p.getObjId())
    masks = {key: np.zeros(len(ids), dtype=bool) for key in ("non_finite", "constant", "huge")}
    for fn, entries in by_file.items():
        rows = np.array([k for k, _ in entries])
        idx = np.array([i for _, i in entries])
        for start, images in _iter_stack_chunks(fn, idx, chunk):
            found = checks.image_defects(images)
            for key, mask in found.items():
                masks[key][rows[start:start + len(images)]] = mask
    return np.asarray(ids), masks


def _iter_stack_chunks(filename, indices, chunk):
    """``(start, images (n, S, S) float32)`` for ``indices`` (0-based) of a stack, ``chunk``
    at a time; MRC stacks are memory-mapped, other formats read whole."""
    path = clean_path(filename)
    try:
        mrc = mrcfile.mmap(path, mode="r", permissive=True)
    except Exception:
        stack = read_stack(filename)
        for start in range(0, len(indices), chunk):
            yield start, stack[indices[start:start + chunk]]
        return
    with mrc:
        data = mrc.data if mrc.data.ndim == 3 else mrc.data[None]
        for start in range(0, len(indices), chunk):
            yield start, np.asarray(data[indices[start:start + chunk]], dtype=np.float32)

def particle_source(particles, orientations=False, ctf=True):
    """A ``core.source.MrcSource`` over a SetOfParticles, in id order: images read in
    batches from their stacks (never the whole set in memory), the set's sampling rate,
    the offsets the particles carry (``particle_shifts``: 3-D or 2-D alignment, zeros
    without), their orientations with ``orientations=True`` (ALIGN_PROJ), their CTF
    (with ``ctf``) when the set has one, and their ids (named in error messages)."""
    from .core.source import MrcSource
    locations, ids = [], []
    for p in particles.iterItems(orderBy="id"):
        index, fn = p.getLocation()
        locations.append((clean_path(fn), (index or 1) - 1))
        ids.append(p.getObjId())
    if not locations:
        raise ValueError("The set of particles is empty.")
    quats = None
    if orientations:
        if not has_projection_alignment(particles):
            raise ValueError("The particles carry no 3-D orientations (ALIGN_PROJ).")
        quats = particle_orientations(particles)[1]
    source = MrcSource(locations, pixel_size=particles.getSamplingRate(), quaternions=quats,
                       shifts=particle_shifts(particles),
                       ctf=particle_ctfs(particles) if ctf else None)
    source.ids = np.asarray(ids)
    return source


def particle_orientations(particles):
    """``(ids (N,), quaternions (N, 4), shifts (N, 2) px)`` of particles with ALIGN_PROJ."""
    ids, mats = [], []
    for p in particles.iterItems(orderBy="id"):
        if not p.hasTransform():
            raise ValueError(f"Particle {p.getObjId()} has no orientation.")
        ids.append(p.getObjId())
        mats.append(p.getTransform().getMatrix())
    R, shifts = geometry.scipion_transform_to_matrix(np.array(mats))
    return np.asarray(ids), geometry.matrix_to_quaternion(R), shifts


def particle_ctfs(particles):
    """Per-particle CTF parameters as arrays, or None when the particles carry no CTF.

    Returns dict(defocus_u, defocus_v (A), astig_angle (radians)) plus the acquisition's
    voltage (kV), cs (mm) and amplitude_contrast.
    """
    if not particles.hasCTF():
        return None
    du, dv, ang = [], [], []
    for p in particles.iterItems(orderBy="id"):
        ctf = p.getCTF()
        du.append(ctf.getDefocusU())
        dv.append(ctf.getDefocusV())
        ang.append(np.deg2rad(ctf.getDefocusAngle()))
    acq = particles.getAcquisition()
    return dict(defocus_u=np.array(du), defocus_v=np.array(dv), astig_angle=np.array(ang),
                voltage=acq.getVoltage(), cs=acq.getSphericalAberration(),
                amplitude_contrast=acq.getAmplitudeContrast())


def write_stack(filename, images, pixel_size):
    """Write ``(N, S, S)`` images as an MRC stack with the voxel size in A."""
    with mrcfile.new(filename, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(images, dtype=np.float32))
        mrc.set_image_stack()
        mrc.voxel_size = pixel_size


def write_volume(filename, volume, pixel_size):
    """Write a ``(N, N, N)`` map as MRC with its voxel size in A."""
    with mrcfile.new(filename, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(volume, dtype=np.float32))
        mrc.voxel_size = pixel_size


def set_particle_orientation(particle, quaternion, shift=(0.0, 0.0)):
    """Store an orientation and offset (px) on a particle as a Scipion ALIGN_PROJ transform."""
    R = geometry.quaternion_to_matrix(np.asarray(quaternion))
    particle.setTransform(emobj.Transform(geometry.matrix_to_scipion_transform(R, shift)))


def make_particle_set(protocol, stack_file, pixel_size, acquisition, quaternions=None,
                      shifts=None, ctf=None, extra=None, suffix=""):
    """A new SetOfParticles over the images of ``stack_file`` (index i+1 for row i).

    ``quaternions (N, 4)``/``shifts (N, 2)`` set ALIGN_PROJ; ``ctf`` is a dict as from
    ``particle_ctfs``; ``extra`` maps attribute names to ``(N,)`` arrays stored on each
    particle (e.g. a confidence score). The set is returned open for writing; the caller
    registers it with ``_defineOutputs``.
    """
    parts = protocol._createSetOfParticles(suffix)
    parts.setSamplingRate(pixel_size)
    parts.setAcquisition(acquisition.clone())
    n = len(read_stack_header(stack_file))
    if quaternions is not None:
        parts.setAlignmentProj()
    for i in range(n):
        p = emobj.Particle(location=(i + 1, stack_file))
        p.setSamplingRate(pixel_size)
        p.setAcquisition(acquisition.clone())
        if quaternions is not None:
            set_particle_orientation(p, quaternions[i], (0.0, 0.0) if shifts is None else shifts[i])
        if ctf is not None:
            c = emobj.CTFModel()
            c.setStandardDefocus(float(ctf["defocus_u"][i]), float(ctf["defocus_v"][i]),
                                 float(np.rad2deg(ctf["astig_angle"][i])))
            p.setCTF(c)
        for name, values in (extra or {}).items():
            setattr(p, name, _scalar_object(values[i]))
        parts.append(p)
    if ctf is not None:
        parts.setHasCTF(True)
    return parts


def read_stack_header(filename):
    """A cheap ``range`` over the images of an MRC stack (reads the header only)."""
    with mrcfile.mmap(clean_path(filename), mode="r", permissive=True) as mrc:
        n = 1 if mrc.data.ndim == 2 else mrc.data.shape[0]
    return range(n)


def _scalar_object(value):
    import pyworkflow.object as pwobj
    if isinstance(value, (bool, np.bool_)):
        return pwobj.Boolean(bool(value))
    if isinstance(value, (int, np.integer)):
        return pwobj.Integer(int(value))
    return pwobj.Float(float(value))


def particle_shift(particle, alignment):
    """The offset ``t (2,)`` in pixels of a particle's centre from its box centre, as stored
    by its transform under the set's ``alignment`` type (0 when it has none).

    ALIGN_PROJ stores ``inv([[R, t], [0, 1]])`` (module docstring). ALIGN_2D stores
    ``[[R2, s], [0, 1]]`` with ``s`` Relion's ``rlnOrigin`` (scipion-em-relion
    ``convert31``: ``_align2DToRow`` / ``__setParticleTransform2D``), and the particle lies
    at ``-rlnOrigin`` (``tests/test_convert.py``), so ``t = -s``.
    """
    if not particle.hasTransform():
        return np.zeros(2)
    M = np.asarray(particle.getTransform().getMatrix(), dtype=np.float64)
    if alignment == emcts.ALIGN_PROJ:
        return geometry.scipion_transform_to_matrix(M)[1]
    if alignment == emcts.ALIGN_2D:
        return -M[:2, 3]
    return np.zeros(2)


def particle_shifts(particles):
    """``(N, 2)`` offsets (px, id order) the particles already carry: from a 3-D or 2-D
    alignment (e.g. 2-D classification or re-centring), zeros where they have none."""
    alignment = particles.getAlignment()
    return np.array([particle_shift(p, alignment) for p in particles.iterItems(orderBy="id")],
                    dtype=np.float64).reshape(-1, 2)


def copy_particles_with_orientations(protocol, particles, quaternions, shifts=None,
                                     extra=None, suffix=""):
    """A copy of ``particles`` (same images, CTF, ids) with new ALIGN_PROJ orientations.

    Rows of ``quaternions (N, 4)`` and ``shifts (N, 2)`` (px) follow the particles' id
    order. Without ``shifts`` each particle keeps the offset it already had (see
    ``particle_shift``): input shifts are never thrown away.
    """
    out = protocol._createSetOfParticles(suffix)
    out.copyInfo(particles)
    alignment = particles.getAlignment()
    out.setAlignmentProj()
    for i, p in enumerate(particles.iterItems(orderBy="id")):
        q = p.clone()
        shift = particle_shift(p, alignment) if shifts is None else shifts[i]
        set_particle_orientation(q, quaternions[i], shift)
        for name, values in (extra or {}).items():
            setattr(q, name, _scalar_object(values[i]))
        out.append(q)
    return out


def has_projection_alignment(particles):
    """True when the set's particles carry 3-D projection orientations."""
    return particles.getAlignment() == emcts.ALIGN_PROJ


def read_volume_on_grid(volume_obj, size, pixel_size):
    """The map of a Scipion ``Volume`` resampled to ``pixel_size`` (A) and cropped or
    zero-padded to a ``size``-voxel cube: ``(size, size, size)`` float32 array.

    See ``core.volumes.resample_to_grid``: memory stays of the order of the output box,
    whatever the ratio of the pixel sizes.
    """
    from .core import volumes
    vol, _ = volumes.read_volume(clean_path(volume_obj.getFileName()))
    return volumes.resample_to_grid(vol, volume_obj.getSamplingRate(), size, pixel_size)
