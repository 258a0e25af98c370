"""Density maps from atomic models (PDB / mmCIF, gzipped too) with gemmi.

The map is the electron-scattering potential computed by gemmi's ``DensityCalculatorE``
(electron scattering factors), sampled on a cubic grid of ``box`` voxels of
``pixel_size`` Angstrom, indexed ``vol[z, y, x]`` like every volume in orientlearn. The
atoms' centre of mass lands on the box centre (index ``box // 2``).

A structure is placed in a cubic P1 cell of edge ``box * pixel_size`` (whatever cell and
space group its file declares), so the map is what one copy of the molecule gives; the
calculation is periodic, so the molecule must fit in the box (checked).

Resolution: gemmi sums Gaussians in real space; every atom gets the small extra blur
that gemmi's ``set_refmac_compatible_blur`` picks to sample that sum without aliasing
on a grid of ``pixel_size`` (it depends on the atoms' smallest B: 62 A^2, a Gaussian of
0.9 A standard deviation, for B = 10 A^2 atoms at 1 A/px; un-blurring it would ring), and
the map is then
low-passed with a soft edge at ``resolution`` (default: Nyquist, ``2 * pixel_size``).
An optional ``b_factor`` (A^2) blurs every atom further, like a temperature factor
(amplitude ``exp(-b_factor s^2 / 4)`` at spatial frequency ``s``, 1/A).
"""
import dataclasses
import os

import numpy as np

__all__ = [
    "ATOMIC_MODEL_SUFFIXES",
    "AtomicMap",
    "atomic_model_files",
    "molecule_extent",
    "atoms_to_map",
    "read_structure",
    "structure_to_map",
]

ATOMIC_MODEL_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif", ".pdb.gz", ".ent.gz", ".cif.gz",
                         ".mmcif.gz")


@dataclasses.dataclass
class AtomicMap:
    """A density map computed from an atomic model.

    ``volume``: float32 ``(box, box, box)`` indexed ``[z, y, x]``; ``pixel_size`` (A);
    ``centre_A``: the atoms' centre of mass in the file's frame (A, ``x, y, z``), which
    is where the box centre lies; ``radius_A``: the largest distance of an atom from it;
    ``n_atoms``; ``source``: the file (or structure name)."""
    volume: np.ndarray
    pixel_size: float
    centre_A: np.ndarray
    radius_A: float
    n_atoms: int
    source: str


def _gemmi():
    import gemmi
    return gemmi


def read_structure(path):
    """Read one atomic model file (PDB or mmCIF, optionally gzipped) with gemmi.

    Returns a ``gemmi.Structure`` holding only its first model, without waters, hydrogens
    or alternative conformations. Raises ``ValueError`` for a missing or unreadable file or
    one without atoms."""
    gemmi = _gemmi()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"Atomic model file not found: {path!r}")
    try:
        st = gemmi.read_structure(path)
    except Exception as exc:  # gemmi raises RuntimeError / ValueError for bad files
        raise ValueError(f"Cannot read {path!r} as a PDB/mmCIF atomic model: {exc}") from exc
    if len(st) == 0:
        raise ValueError(f"{path!r} holds no model (no ATOM/HETATM records)")
    while len(st) > 1:
        del st[len(st) - 1]
    st.remove_waters()
    st.remove_hydrogens()
    st.remove_alternative_conformations()
    st.remove_empty_chains()
    if st[0].count_atom_sites() == 0:
        raise ValueError(f"{path!r} holds no atoms (besides waters / hydrogens)")
    st.name = st.name or os.path.basename(path)
    return st


def _atom_positions(model):
    """``(n, 3)`` atom positions (A) and ``(n,)`` atomic numbers of a gemmi model."""
    pos, z = [], []
    for chain in model:
        for residue in chain:
            for atom in residue:
                pos.append(atom.pos.tolist())
                z.append(atom.element.atomic_number)
    return np.asarray(pos, dtype=np.float64), np.asarray(z, dtype=np.float64)


def _lowpass(vol, pixel_size, resolution, edge_width=0.1):
    """Multiply the spectrum of ``vol`` (N, N, N) by a soft low-pass (cosine edge from
    ``(1 - edge_width) / resolution`` to ``1 / resolution``, in 1/A)."""
    n = vol.shape[0]
    f = np.fft.fftfreq(n, d=pixel_size)
    fr = np.fft.rfftfreq(n, d=pixel_size)
    s2 = f[:, None, None] ** 2 + f[None, :, None] ** 2 + fr[None, None, :] ** 2
    s = np.sqrt(s2)
    s_hi = 1.0 / resolution
    s_lo = (1.0 - edge_width) * s_hi
    mask = np.clip((s_hi - s) / (s_hi - s_lo), 0.0, 1.0)
    mask = 0.5 - 0.5 * np.cos(np.pi * mask)
    spec = np.fft.rfftn(vol) * mask
    return np.fft.irfftn(spec, s=vol.shape).astype(np.float32)


def molecule_extent(structure):
    """``(centre_A (3,), radius_A)``: the centre of mass (A, x y z) of the first model of a
    gemmi ``Structure`` and the largest distance of an atom from it (A)."""
    model = structure[0]
    pos, _ = _atom_positions(model)
    if len(pos) == 0:
        raise ValueError(f"structure {structure.name!r} has no atoms")
    com = np.array(model.calculate_center_of_mass().tolist())
    return com, float(np.max(np.linalg.norm(pos - com, axis=1)))


def structure_to_map(structure, pixel_size, box=None, resolution=None, b_factor=0.0,
                     margin_px=2, source=None):
    """Density map of a gemmi ``Structure`` (its first model).

    ``pixel_size`` (A); ``box`` (voxels per edge; default: the smallest even box holding the
    molecule plus a margin of ``margin_px`` voxels and the low-pass blur); ``resolution`` (A,
    low-pass edge; default and minimum ``2 * pixel_size``); ``b_factor`` (A^2, extra blur of
    every atom, >= 0). Returns an ``AtomicMap`` whose ``volume`` is float32
    ``(box, box, box)``, ``[z, y, x]``, with the atoms' centre of mass at index ``box // 2``.
    Raises ``ValueError`` when the molecule does not fit in ``box`` or an argument is out of
    range; the input structure is not changed.
    """
    gemmi = _gemmi()
    pixel_size = float(pixel_size)
    if not pixel_size > 0:
        raise ValueError(f"pixel_size must be > 0 A, got {pixel_size}")
    if b_factor < 0:
        raise ValueError(f"b_factor must be >= 0 A^2, got {b_factor}")
    nyquist = 2.0 * pixel_size
    resolution = nyquist if resolution is None else float(resolution)
    if resolution < nyquist * (1 - 1e-6):
        raise ValueError(f"resolution {resolution:g} A is finer than Nyquist "
                         f"({nyquist:g} A at {pixel_size:g} A/px)")
    st = structure.clone()
    model = st[0]
    com, radius = molecule_extent(st)
    blur_px = resolution / pixel_size / 2.0  # the low-pass spreads an atom ~ this far
    needed = int(np.ceil(2 * (radius / pixel_size + margin_px + blur_px)))
    needed += needed % 2
    if box is None:
        box = needed
    box = int(box)
    if box < needed:
        raise ValueError(
            f"{source or st.name!r} is {2 * radius:.1f} A across: a box of {box} px at "
            f"{pixel_size:g} A/px ({box * pixel_size:.1f} A) is too small; use at least "
            f"{needed} px or a larger pixel size")
    edge = box * pixel_size
    shift = gemmi.Position(*((box // 2) * pixel_size - com))
    for chain in model:
        for residue in chain:
            for atom in residue:
                atom.pos = atom.pos + shift
    st.cell = gemmi.UnitCell(edge, edge, edge, 90, 90, 90)
    st.spacegroup_hm = "P 1"
    st.setup_cell_images()

    dc = gemmi.DensityCalculatorE()
    dc.d_min = nyquist
    dc.rate = 1.0  # grid spacing d_min / (2 rate) = pixel_size
    dc.set_refmac_compatible_blur(model)  # the anti-aliasing blur for this spacing
    dc.blur = float(dc.blur) + float(b_factor)
    dc.grid.set_unit_cell(st.cell)
    dc.grid.spacegroup = gemmi.find_spacegroup_by_name("P 1")
    dc.grid.set_size(box, box, box)
    dc.grid.fill(0.0)
    dc.add_model_density_to_grid(model)
    dc.grid.symmetrize_sum()
    vol_xyz = np.array(dc.grid, copy=True)
    vol = np.ascontiguousarray(vol_xyz.transpose(2, 1, 0), dtype=np.float32)
    vol = _lowpass(vol, pixel_size, resolution)
    return AtomicMap(volume=vol, pixel_size=pixel_size, centre_A=com, radius_A=radius,
                     n_atoms=model.count_atom_sites(), source=source or st.name)


def atoms_to_map(path, pixel_size, box=None, resolution=None, b_factor=0.0, margin_px=2):
    """``structure_to_map(read_structure(path), ...)``: the density map of an atomic model
    file (PDB / mmCIF, gzipped too). Same arguments and result as ``structure_to_map``."""
    return structure_to_map(read_structure(path), pixel_size, box=box, resolution=resolution,
                            b_factor=b_factor, margin_px=margin_px, source=os.fspath(path))


def _is_atomic_model(name):
    name = name.lower()
    return any(name.endswith(s) for s in ATOMIC_MODEL_SUFFIXES)


def atomic_model_files(paths):
    """Expand a file, a folder or a list of them into a sorted list of atomic model files
    (``ATOMIC_MODEL_SUFFIXES``; a folder contributes the model files directly in it).
    Raises ``ValueError`` for a missing path, a file that is not an atomic model, or when
    nothing is found."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            files += sorted(os.path.join(p, f) for f in os.listdir(p)
                            if _is_atomic_model(f) and os.path.isfile(os.path.join(p, f)))
        elif os.path.isfile(p):
            if not _is_atomic_model(p):
                raise ValueError(f"{p!r} is not an atomic model file (expected one of "
                                 f"{', '.join(ATOMIC_MODEL_SUFFIXES)})")
            files.append(p)
        else:
            raise ValueError(f"Atomic model path not found: {p!r}")
    if not files:
        raise ValueError(f"No atomic model files (PDB/mmCIF) in {list(paths)!r}")
    return files
