"""Orientations: unit quaternions, rotation matrices, Euler angles, Scipion transforms.

Conventions (used everywhere in orientlearn):

* A quaternion is an array ``(..., 4)`` ordered ``(w, x, y, z)``, scalar first.
  ``q`` and ``-q`` are the same orientation.
* ``quaternion_to_matrix(q)`` is the usual *active* rotation, and
  ``R(q1 q2) = R(q1) R(q2)``.
* An orientation ``R`` images a volume ``V`` as
  ``p(x, y) = integral V(R^T (x, y, z)) dz``: the volume is rotated by ``R`` and then
  projected along ``z`` onto the detector ``(x, y)``. Arrays are indexed
  ``vol[z, y, x]`` and ``img[y, x]``, the centre of a box of ``N`` samples at index ``N // 2``.
* An image-side transform ``g`` (in-plane rotation, mirror) acts on the left:
  rotating the image by ``alpha`` (counter-clockwise in ``(x, y)``) gives the projection of
  ``R_z(alpha) R``; mirroring ``y -> -y`` gives the projection of ``R_x(pi) R``.
* A point-group symmetry ``S`` of the object acts on the right: ``R`` and ``R S`` give the
  same image.
* Euler angles ``(rot, tilt, psi)`` follow Relion and Xmipp (ZYZ); the matrix they give,
  ``euler_to_matrix``, is our ``R``. Angles are radians.
* Lengths are in pixels (= voxels) unless a name says Angstrom (``_A``).
* Scipion's ``ALIGN_PROJ`` transform of a particle is the 4x4 matrix
  ``inv([[R, t], [0, 1]])`` where ``t = (tx, ty, 0)`` is the offset, in pixels, of the
  particle's centre from the box centre (what Scipion's Relion and Xmipp converters read).
"""
import numpy as np

__all__ = [
    "normalize", "multiply", "conjugate", "inverse", "distance", "symmetric_distance",
    "quaternion_to_matrix", "as_rotation_matrices", "matrix_to_quaternion", "euler_to_matrix",
    "matrix_to_euler",
    "matrix_to_scipion_transform", "scipion_transform_to_matrix", "uniform_quaternions",
    "axis_angle_quaternion", "in_plane_quaternion", "MIRROR_QUATERNION", "symmetry_group",
    "canonical_representative", "sample_orientations", "viewing_directions",
    "SYMMETRY_HELP",
    "MAX_GROUP_ORDER",
]

SYMMETRY_HELP = ("Point group of the protein: C1 (none), Cn (n-fold axis along z, "
                 "n <= 60), Dn (n-fold along z, 2-fold along x, n <= 30), T, O, I "
                 "(Relion/Xmipp's default orientations: 2-fold axes on x, y, z; I2 for "
                 "icosahedral).")


def normalize(q):
    """Unit quaternions ``(..., 4)`` from any non-zero 4-vectors ``(..., 4)``."""
    q = np.asarray(q, dtype=np.float64)
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def multiply(q1, q2):
    """Hamilton product ``q1 q2`` of ``(..., 4)`` arrays (broadcast)."""
    q1 = np.asarray(q1, dtype=np.float64)
    q2 = np.asarray(q2, dtype=np.float64)
    w1, x1, y1, z1 = np.moveaxis(q1, -1, 0)
    w2, x2, y2, z2 = np.moveaxis(q2, -1, 0)
    return np.stack([
        w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
        w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
        w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
        w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
    ], axis=-1)


def conjugate(q):
    """Quaternion conjugate ``(w, -x, -y, -z)``; the inverse of a unit quaternion."""
    q = np.array(q, dtype=np.float64)
    q[..., 1:] *= -1
    return q


inverse = conjugate


def distance(q1, q2):
    """Geodesic distance on SO(3) between orientations, eq. (2) of the paper.

    ``d_q = 2 arccos |<q1, q2>|`` in radians, in ``[0, pi]``; broadcast over ``(..., 4)``.
    """
    dot = np.abs(np.sum(np.asarray(q1) * np.asarray(q2), axis=-1))
    return 2.0 * np.arccos(np.clip(dot, 0.0, 1.0))


def symmetric_distance(q1, q2, group):
    """Distance up to a point-group symmetry: ``min_S d_q(q1, q2 S)``.

    ``group`` is ``(G, 4)`` quaternions (``symmetry_group``); returns ``(...)`` radians.
    """
    q2s = multiply(np.asarray(q2)[..., None, :], group)          # (..., G, 4)
    return distance(np.asarray(q1)[..., None, :], q2s).min(axis=-1)


def quaternion_to_matrix(q):
    """Rotation matrices ``(..., 3, 3)`` of quaternions ``(..., 4)`` (need not be unit)."""
    w, x, y, z = np.moveaxis(normalize(q), -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], axis=-2)


def as_rotation_matrices(rotations):
    """Rotation matrices ``(M, 3, 3)`` float64 from matrices ``(..., 3, 3)`` or quaternions
    ``(..., 4)`` (one orientation gives ``M = 1``)."""
    r = np.asarray(rotations, dtype=np.float64)
    if r.ndim >= 2 and r.shape[-2:] == (3, 3):
        return r.reshape(-1, 3, 3)
    if r.ndim >= 1 and r.shape[-1] == 4:
        return quaternion_to_matrix(r.reshape(-1, 4))
    raise ValueError(f"rotations must be (M, 3, 3) matrices or (M, 4) quaternions, "
                     f"got shape {r.shape}")


def matrix_to_quaternion(R):
    """Unit quaternions ``(..., 4)`` with ``w >= 0`` of rotation matrices ``(..., 3, 3)``.

    Takes the largest of the four candidate components (Shepperd) so it is stable near
    rotations by pi.
    """
    R = np.asarray(R, dtype=np.float64)
    tr = np.trace(R, axis1=-2, axis2=-1)
    cand = np.stack([tr, R[..., 0, 0], R[..., 1, 1], R[..., 2, 2]], axis=-1)
    k = np.argmax(cand, axis=-1)
    q = np.empty(R.shape[:-2] + (4,))
    r = R
    # case w largest
    s = np.sqrt(np.maximum(1 + tr, 1e-300)) * 2
    qw = np.stack([0.25 * s, (r[..., 2, 1] - r[..., 1, 2]) / s,
                   (r[..., 0, 2] - r[..., 2, 0]) / s, (r[..., 1, 0] - r[..., 0, 1]) / s], -1)
    s = np.sqrt(np.maximum(1 + r[..., 0, 0] - r[..., 1, 1] - r[..., 2, 2], 1e-300)) * 2
    qx = np.stack([(r[..., 2, 1] - r[..., 1, 2]) / s, 0.25 * s,
                   (r[..., 0, 1] + r[..., 1, 0]) / s, (r[..., 0, 2] + r[..., 2, 0]) / s], -1)
    s = np.sqrt(np.maximum(1 + r[..., 1, 1] - r[..., 0, 0] - r[..., 2, 2], 1e-300)) * 2
    qy = np.stack([(r[..., 0, 2] - r[..., 2, 0]) / s, (r[..., 0, 1] + r[..., 1, 0]) / s,
                   0.25 * s, (r[..., 1, 2] + r[..., 2, 1]) / s], -1)
    s = np.sqrt(np.maximum(1 + r[..., 2, 2] - r[..., 0, 0] - r[..., 1, 1], 1e-300)) * 2
    qz = np.stack([(r[..., 1, 0] - r[..., 0, 1]) / s, (r[..., 0, 2] + r[..., 2, 0]) / s,
                   (r[..., 1, 2] + r[..., 2, 1]) / s, 0.25 * s], -1)
    q = np.choose(k[..., None], [qw, qx, qy, qz]) if R.ndim > 2 else [qw, qx, qy, qz][int(k)]
    q = normalize(q)
    return np.where(q[..., :1] < 0, -q, q)


def euler_to_matrix(rot, tilt, psi):
    """Relion/Xmipp ZYZ Euler angles (radians) to our rotation ``R``, ``(..., 3, 3)``.

    The third row of ``R`` is the projection direction in the volume's frame.
    """
    ca, sa = np.cos(rot), np.sin(rot)
    cb, sb = np.cos(tilt), np.sin(tilt)
    cg, sg = np.cos(psi), np.sin(psi)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.stack([
        np.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], -1),
        np.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], -1),
        np.stack([sc, ss, cb * np.ones_like(ca)], -1),
    ], axis=-2)


def matrix_to_euler(R):
    """Inverse of ``euler_to_matrix``: ``(rot, tilt, psi)`` radians, each ``(...)``.

    At the poles (tilt 0 or pi) only ``rot + psi`` is defined; ``rot`` is set to 0.
    """
    R = np.asarray(R, dtype=np.float64)
    tilt = np.arccos(np.clip(R[..., 2, 2], -1.0, 1.0))
    sb = np.sin(tilt)
    pole = sb < 1e-8
    rot = np.where(pole, 0.0, np.arctan2(R[..., 2, 1], R[..., 2, 0]))
    psi = np.where(pole, np.arctan2(-R[..., 1, 0], R[..., 0, 0]) *
                   np.where(R[..., 2, 2] > 0, 1.0, -1.0),
                   np.arctan2(R[..., 1, 2], -R[..., 0, 2]))
    # At tilt = pi the in-plane angle enters with the opposite sign.
    psi = np.where(pole & (R[..., 2, 2] < 0), np.arctan2(R[..., 1, 0], -R[..., 0, 0]), psi)
    return rot, tilt, psi


def matrix_to_scipion_transform(R, shifts=None):
    """Scipion ``ALIGN_PROJ`` 4x4 matrices ``(..., 4, 4)`` from ``R (..., 3, 3)`` and
    particle offsets ``shifts (..., 2)`` in pixels (default 0)."""
    R = np.asarray(R, dtype=np.float64)
    t = np.zeros(R.shape[:-2] + (3,))
    if shifts is not None:
        t[..., :2] = shifts
    M = np.zeros(R.shape[:-2] + (4, 4))
    Rt = np.swapaxes(R, -1, -2)
    M[..., :3, :3] = Rt
    M[..., :3, 3] = -np.einsum("...ij,...j->...i", Rt, t)
    M[..., 3, 3] = 1.0
    return M


def scipion_transform_to_matrix(M):
    """Inverse of ``matrix_to_scipion_transform``: ``(R (..., 3, 3), shifts (..., 2))``."""
    inv = np.linalg.inv(np.asarray(M, dtype=np.float64))
    return inv[..., :3, :3], inv[..., :2, 3]


def uniform_quaternions(n, seed=0):
    """``n`` orientations drawn uniformly (Haar) on SO(3), ``(n, 4)``, ``w >= 0``."""
    q = normalize(np.random.default_rng(seed).standard_normal((n, 4)))
    return np.where(q[:, :1] < 0, -q, q)


def axis_angle_quaternion(axis, angle):
    """Quaternion ``(..., 4)`` of the rotation by ``angle`` (radians) about ``axis`` (3,)."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    angle = np.asarray(angle, dtype=np.float64)[..., None]
    return np.concatenate([np.cos(angle / 2), np.sin(angle / 2) * axis], axis=-1)


def in_plane_quaternion(alpha):
    """The image-side rotation by ``alpha`` about the beam (z): apply as ``q' = g q``."""
    return axis_angle_quaternion([0, 0, 1], alpha)


#: The image mirror ``y -> -y`` as an image-side rotation: by pi about the detector's x.
MIRROR_QUATERNION = np.array([0.0, 1.0, 0.0, 0.0])


#: Largest point group supported (the icosahedral group's 60 elements): symmetric
#: distances take a minimum over every element, and rotations by 2 pi / n for very large
#: n are indistinguishable from the identity at the closure's tolerance.
MAX_GROUP_ORDER = 60


def _close_group(generators):
    """All products of the generators, as quaternions ``(G, 4)`` with ``q ~ -q`` merged."""
    elems = [np.array([1.0, 0, 0, 0])]
    frontier = list(elems)
    gens = [normalize(g) for g in generators]
    while frontier:
        new = []
        for a in frontier:
            for g in gens:
                c = multiply(g, a)
                if all(abs(abs(np.dot(c, e)) - 1) > 1e-6 for e in elems + new):
                    new.append(c)
        elems += new
        frontier = new
        if len(elems) > MAX_GROUP_ORDER:
            raise ValueError(f"the group has more than {MAX_GROUP_ORDER} elements "
                             "(not a supported point group)")
    out = np.array(elems)
    return np.where(out[:, :1] < 0, -out, out)


def symmetry_group(name="C1"):
    """Rotations of a point group as quaternions ``(G, 4)``; identity first.

    ``name``: ``C1``, ``Cn``, ``Dn`` (n >= 1), ``T``, ``O`` or ``I`` (also ``I2``),
    case-insensitive, with Relion/Xmipp's standard axes (see ``SYMMETRY_HELP``).
    Raises ``ValueError`` for an unknown name or a group of more than
    ``MAX_GROUP_ORDER`` elements (Cn, n > 60; Dn, n > 30).
    """
    s = str(name).strip().upper()
    z = np.array([0, 0, 1.0])
    if s[:1] in "CD" and s[1:].isdigit() and int(s[1:]) >= 1:
        n = int(s[1:])
        order = n if s[0] == "C" else 2 * n
        if order > MAX_GROUP_ORDER:
            raise ValueError(
                f"Symmetry {s} has {order} elements; point groups of up to "
                f"{MAX_GROUP_ORDER} are supported (C1-C{MAX_GROUP_ORDER}, "
                f"D1-D{MAX_GROUP_ORDER // 2}, T, O, I). Check the symmetry order.")
        gens = [axis_angle_quaternion(z, 2 * np.pi / n)]
        if s[0] == "D":
            gens.append(axis_angle_quaternion([1, 0, 0], np.pi))
    elif s == "T":
        gens = [axis_angle_quaternion([0, 0, 1], np.pi),
                axis_angle_quaternion([1, 1, 1], 2 * np.pi / 3)]
    elif s == "O":
        gens = [axis_angle_quaternion(z, np.pi / 2),
                axis_angle_quaternion([1, 1, 1], 2 * np.pi / 3)]
    elif s in ("I", "I2"):
        phi = (1 + np.sqrt(5)) / 2
        # 2-folds on x, y, z; a 5-fold on (0, 1, phi) and a 3-fold on (1, 1, 1).
        gens = [axis_angle_quaternion(z, np.pi), axis_angle_quaternion([0, 1, phi], 2 * np.pi / 5),
                axis_angle_quaternion([1, 1, 1], 2 * np.pi / 3)]
    else:
        raise ValueError(f"Unknown symmetry group {name!r}: use C1, Cn, Dn, T, O or I.")
    return _close_group(gens)


def canonical_representative(q, group):
    """Map each orientation to its symmetry-equivalent ``q S`` nearest the identity.

    The set of such representatives is an asymmetric unit (a fundamental domain of the
    right action of ``group`` on SO(3)). ``q (N, 4)`` -> ``(N, 4)``.
    """
    cand = multiply(np.asarray(q)[:, None, :], np.asarray(group)[None])   # (N, G, 4)
    k = np.argmax(np.abs(cand[..., 0]), axis=1)
    out = cand[np.arange(len(cand)), k]
    return np.where(out[:, :1] < 0, -out, out)


def sample_orientations(n, symmetry="C1", seed=0):
    """``n`` uniform orientations restricted to the asymmetric unit of ``symmetry``."""
    q = uniform_quaternions(n, seed)
    return canonical_representative(q, symmetry_group(symmetry)) if symmetry.upper() != "C1" else q


def viewing_directions(q):
    """Unit viewing directions ``(..., 3)`` in the volume frame (third row of ``R``)."""
    return quaternion_to_matrix(q)[..., 2, :]
