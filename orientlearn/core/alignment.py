"""Aligning two sets of orientations and measuring their disagreement (paper eq. 5, 6).

Orientations recovered from distances are defined only up to a transform that leaves all
pairwise distances ``d_q`` unchanged. Two families of alignment are provided:

* ``align_o4``: the full ambiguity, any orthogonal 4x4 map ``T`` of the quaternions
  (``q -> a q b`` and ``q -> a conj(q) b``). This is what the paper aligns by (eq. 5, 6),
  to report E_OR; it also removes the harmful detector-side rotation and conjugation.
* ``align_rotation_handedness``: only the harmless part, what a reconstruction sees: a
  global rotation of the object, ``q -> q a`` (right multiplication), optionally after a
  handedness flip (the reconstruction is then the mirror image of the object).

Handedness flip, derived (conventions of ``geometry``: ``p_R(x, y) = int V(R^T r) dz``,
``r = (x, y, z)``). Let ``J = diag(1, 1, -1)`` and ``V'(r) = V(J r)``, the object mirrored
through the plane ``z = 0`` of its own frame. Since ``J R^T = (J R J)^T J``,

    p'_R(x, y) = int V(J R^T r) dz = int V((J R J)^T (x, y, -z)) dz = p_{J R J}(x, y),

(the sign of the integration variable ``z`` does not matter). So the images the original
object gives at ``R_i`` are exactly those the mirrored object gives at ``J R_i J``: the
orientations ``J R_i J`` reconstruct the mirror image, a harmless ambiguity. In quaternions
``J R J = R_z(pi) R R_z(pi)^T``, i.e. ``(w, x, y, z) -> (w, -x, -y, z)`` (``handedness_flip``).
Modulo the right (object-side) rotation by ``R_z(pi)``, the flip is the same as the
detector-side in-plane rotation by pi, ``q -> in_plane_quaternion(pi) q``: rotating every
image by 180 degrees is the projection of the point-inverted object ``V(-r)``. Any other
left (detector-side) factor, and ``conj(q)``, changes which view each image is assigned to.

Errors are ``d_q`` in radians. With a point group (``symmetry != 'C1'``) errors are the
symmetric distance ``min_S d_q(q_ref, q S)``; the alignment then alternates between picking,
for every particle, the symmetry mate ``q_ref_i S`` nearest its aligned estimate and
re-solving the C1 alignment on those mates (deterministic candidate starts, see below).
"""
import numpy as np

from . import geometry as geo

__all__ = [
    "align_o4", "align_rotation_handedness", "handedness_flip", "quaternion_map_matrix",
    "apply_quaternion_map", "orientation_errors", "error_components", "compare_orientations",
    "expected_random_error", "HANDEDNESS_AXIS_QUATERNION",
]

#: Rotation by pi about z: ``handedness_flip(q) = k q conj(k)`` with this ``k``.
HANDEDNESS_AXIS_QUATERNION = np.array([0.0, 0.0, 0.0, 1.0])

_WEIGHT_FLOOR = 1e-7     # sin(d/2) floor in the IRLS weights (d ~ 2e-7 rad)
_CHUNK = 20000           # particles per block when expanding symmetry mates


# --------------------------------------------------------------------------- helpers

def handedness_flip(q):
    """Orientations ``(..., 4)`` of the mirrored object: ``R -> J R J``, ``J = diag(1, 1, -1)``.

    The z-mirrored volume ``V(x, y, -z)`` viewed at ``J R J`` gives the same image as ``V``
    viewed at ``R`` (derivation in the module docstring). Quaternion ``(w, -x, -y, z)``.
    """
    q = np.array(q, dtype=np.float64)
    q[..., 1:3] *= -1
    return q


def quaternion_map_matrix(left=None, right=None, conjugate=False):
    """4x4 orthogonal matrix ``T`` with ``T q = left * (conj(q) if conjugate else q) * right``.

    ``left`` / ``right``: unit quaternions ``(4,)`` or None (identity).
    """
    basis = np.eye(4)
    x = geo.conjugate(basis) if conjugate else basis
    if left is not None:
        x = geo.multiply(np.asarray(left, dtype=np.float64), x)
    if right is not None:
        x = geo.multiply(x, np.asarray(right, dtype=np.float64))
    return x.T                          # column j is the image of basis vector j


def apply_quaternion_map(T, q):
    """``T q`` for every row of ``q (P, 4)``, renormalised; ``T (4, 4)``."""
    return geo.normalize(np.asarray(q, dtype=np.float64) @ np.asarray(T, dtype=np.float64).T)


def _as_quaternions(q, name):
    q = np.asarray(q, dtype=np.float64)
    if q.ndim != 2 or q.shape[1] != 4 or len(q) == 0:
        raise ValueError(f"{name} must be a non-empty (P, 4) array of quaternions, got {q.shape}")
    return geo.normalize(q)


def _check_pair(q_ref, q_est):
    q_ref = _as_quaternions(q_ref, "q_ref")
    q_est = _as_quaternions(q_est, "q_est")
    if q_ref.shape != q_est.shape:
        raise ValueError(f"q_ref {q_ref.shape} and q_est {q_est.shape} differ in shape")
    return q_ref, q_est


def _group(symmetry):
    """Symmetry quaternions ``(G, 4)``, or None for C1 (the fast path)."""
    if symmetry is None:
        return None
    group = geo.symmetry_group(symmetry)
    return None if len(group) == 1 else group


def _nearest_mates(q_ref, q_al, group):
    """Per particle, the mate ``q_ref_i S`` nearest ``q_al_i``: ``(P, 4)``."""
    if group is None:
        return q_ref
    out = np.empty_like(q_ref)
    for start in range(0, len(q_ref), _CHUNK):
        sl = slice(start, start + _CHUNK)
        mates = geo.multiply(q_ref[sl, None, :], group[None])            # (p, G, 4)
        dots = np.abs(np.einsum("pgk,pk->pg", mates, q_al[sl]))
        out[sl] = mates[np.arange(len(mates)), np.argmax(dots, axis=1)]
    return out


def _sign_match(q, q_ref):
    """Flip rows of ``q`` so that ``<q_i, q_ref_i> >= 0`` (same orientations)."""
    s = np.sign(np.sum(q * q_ref, axis=1))
    return q * np.where(s == 0, 1.0, s)[:, None]


def _errors(q_ref, q_al, group):
    if group is None:
        return geo.distance(q_ref, q_al)
    return geo.symmetric_distance(q_al, q_ref, group)   # min_S d(q_al, q_ref S)


def _irls_weights(cos_abs):
    """Weights of the majorise-minimise step for ``sum arccos(c_i)``.

    ``arccos`` is concave on ``[0, 1]``, so its tangent at the current ``c_i`` bounds it from
    above; minimising the bound is a weighted linear problem with weights
    ``-d arccos(c)/dc = 1 / sqrt(1 - c^2) = 1 / sin(d_i / 2)``.
    """
    return 1.0 / np.maximum(np.sqrt(np.maximum(1.0 - cos_abs ** 2, 0.0)), _WEIGHT_FLOOR)


# --------------------------------------------------------------------------- O(4)

def _procrustes(M, det_sign):
    """Orthogonal ``T`` with ``det T = det_sign`` maximising ``trace(T^T M)``."""
    U, _, Vt = np.linalg.svd(M)
    d = np.ones(4)
    d[3] = det_sign * np.sign(np.linalg.det(U) * np.linalg.det(Vt))
    return (U * d) @ Vt


def _refine_o4(q_ref, q_est, T, group, n_sign_iter, n_irls_iter, tol=1e-12):
    """Alternate sign (and symmetry-mate) choice with Procrustes, then IRLS on mean d_q.

    Run with either ``n_sign_iter`` or ``n_irls_iter`` zero. Keeps ``det T``. Returns
    ``(T, mean error)``, the best iterate seen.
    """
    det_sign = np.sign(np.linalg.det(T))
    best_T, best_err = T, np.inf
    for it in range(n_sign_iter + n_irls_iter):
        y = q_est @ T.T
        ref = _nearest_mates(q_ref, y, group)
        c = np.einsum("pk,pk->p", ref, y)
        err = float(np.mean(2 * np.arccos(np.clip(np.abs(c), 0, 1))))
        if err < best_err - 1e-15:
            best_T, best_err = T, err
        s = np.where(c < 0, -1.0, 1.0)
        w = s if it < n_sign_iter else s * _irls_weights(np.abs(c))
        T_new = _procrustes((ref * w[:, None]).T @ q_est, det_sign)
        done = np.max(np.abs(T_new - T)) < tol
        T = T_new
        if done:
            break
    y = q_est @ T.T
    err = float(np.mean(_errors(q_ref, y, group)))
    if err < best_err:
        best_T, best_err = T, err
    return best_T, best_err


def _spectral_starts(q_ref, q_est, n_vectors):
    """Deterministic starting transforms from the sign-free 16x16 moment matrix.

    ``<a, T b>^2 = (vec T . (a (x) b))^2``, and ``a (x) b`` only changes sign when ``a`` or
    ``b`` does, so ``K = sum (a_i (x) b_i)(a_i (x) b_i)^T`` is blind to the quaternion
    sign ambiguity. For ``a_i = T0 b_i`` with ``b_i`` spread over the sphere, ``vec T0`` is
    its top eigenvector (eigenvalue P/4 against P/12 for the others). The top eigenvectors,
    reshaped and projected onto both components of O(4), are the starts.
    """
    X = np.einsum("pi,pj->pij", q_ref, q_est).reshape(len(q_ref), 16)
    _, vecs = np.linalg.eigh(X.T @ X)
    starts = []
    for k in range(n_vectors):
        M = vecs[:, -1 - k].reshape(4, 4)
        starts += [_procrustes(M, +1.0), _procrustes(M, -1.0)]
    return starts


def align_o4(q_ref, q_est, symmetry="C1", n_starts=4, n_sign_iter=50, n_irls_iter=50,
             extra_starts=(), rotation_info=None, screen_size=5000):
    """Orthogonal 4x4 ``T`` (det +1 or -1) minimising ``mean_i d_q(q_ref_i, T q_est_i)``.

    Deterministic: starts from the top ``n_starts`` eigenvectors of the sign-free moment
    matrix (see ``_spectral_starts``) on both components of O(4), plus ``extra_starts``
    (4x4 matrices), and from the rotation + handedness solution (``rotation_info``, the
    info dict of ``align_rotation_handedness``, computed if not given). Each start is
    improved by signed orthogonal Procrustes (per-particle sign
    ``s_i = sign <q_ref_i, T q_est_i>``, SVD, repeat) on ``screen_size`` evenly spaced
    particles; the best start of each determinant is improved the same way on all
    particles, then refined by IRLS on mean ``d_q`` (a majorise-minimise scheme, see
    ``_irls_weights``); the better branch wins. As the rotation + handedness solution is
    one of the starts, the O(4) error is never above the rotation-only one.

    With ``symmetry != 'C1'`` the error is the symmetric distance and each step first
    replaces ``q_ref_i`` by its symmetry mate nearest ``T q_est_i``. Limitation: when
    ``q_est`` carries arbitrary per-particle symmetry mates *and* a general O(4)
    transform, the starts (computed without the group) can miss the optimum for groups
    containing D2 (Dn, T, O, I); Cn and rotation + handedness relations are recovered.

    Parameters: ``q_ref, q_est`` ``(P, 4)`` quaternions. Returns ``(T (4, 4), q_aligned
    (P, 4))`` with ``q_aligned = T q_est`` (unit, signs matched to ``q_ref``).
    """
    q_ref, q_est = _check_pair(q_ref, q_est)
    group = _group(symmetry)
    if rotation_info is None:
        rotation_info, _ = align_rotation_handedness(q_ref, q_est, symmetry=symmetry)
    starts = _spectral_starts(q_ref, q_est, n_starts) + [np.asarray(s, float) for s in extra_starts]
    starts.append(rotation_info["matrix"])
    # Screen the starts on an evenly spaced subset (speed), keep the best of each branch.
    sub = np.unique(np.linspace(0, len(q_ref) - 1, min(screen_size, len(q_ref))).astype(int))
    best = {}
    for T0 in starts:
        T, err = _refine_o4(q_ref[sub], q_est[sub], T0, group, n_sign_iter, 0)
        branch = float(np.sign(np.linalg.det(T)))
        if branch not in best or err < best[branch][1]:
            best[branch] = (T, err)
    final = []
    for T0, _ in best.values():
        T1, err1 = _refine_o4(q_ref, q_est, T0, group, n_sign_iter, 0)
        final.append(_refine_o4(q_ref, q_est, T1, group, 0, n_irls_iter))
    # Each refinement returns its best iterate (never worse than its start).
    T, _ = min(final, key=lambda r: r[1])
    q_al = apply_quaternion_map(T, q_est)
    return T, _sign_match(q_al, _nearest_mates(q_ref, q_al, group))


# --------------------------------------------------------------------------- rotation

def _refine_rotation(q_ref, p, a, group, n_iter, tol=1e-13):
    """IRLS for ``a`` minimising ``mean d_q(q_ref_i, p_i a)``; returns ``(a, mean error)``.

    ``<r, p a> = <conj(p) r, a>`` (left multiplication is orthogonal), so for fixed signs and
    weights the best unit ``a`` is the normalised weighted sum of ``u_i = conj(p_i) r_i``.
    """
    p_conj = geo.conjugate(p)
    best_a, best_err = a, np.inf
    for _ in range(n_iter):
        y = geo.multiply(p, a)
        ref = _nearest_mates(q_ref, y, group)
        c = np.einsum("pk,pk->p", ref, y)
        err = float(np.mean(2 * np.arccos(np.clip(np.abs(c), 0, 1))))
        if err < best_err - 1e-15:
            best_a, best_err = a, err
        w = np.where(c < 0, -1.0, 1.0) * _irls_weights(np.abs(c))
        u = geo.multiply(p_conj, ref)
        a_new = geo.normalize(np.sum(u * w[:, None], axis=0))
        done = min(np.max(np.abs(a_new - a)), np.max(np.abs(a_new + a))) < tol
        a = a_new
        if done:
            break
    err = float(np.mean(_errors(q_ref, geo.multiply(p, a), group)))
    if err < best_err:
        best_a, best_err = a, err
    return best_a, best_err


def align_rotation_handedness(q_ref, q_est, symmetry="C1", n_iter=100, n_candidates=64,
                              screen_size=4000):
    """Best global object rotation ``a`` (and handedness) for ``q_est``: ``q_est -> q_est a``.

    Only the harmless ambiguity is removed: ``q_aligned = F(q_est) * a`` where ``F`` is the
    identity or ``handedness_flip`` (the module docstring derives the flip). For each of
    the two choices of ``F``: start from the quaternion average (top eigenvector of
    ``sum u_i u_i^T``, ``u_i = conj(F(q_est_i)) q_ref_i``, sign-free), refine mean ``d_q``
    by IRLS; keep the better ``F``. With a point group, ``a`` is only defined up to the
    group, so the starts are the ``u_j`` of ``n_candidates`` evenly spaced particles
    (each is exact for its particle), screened on ``screen_size`` particles.

    Parameters: ``q_ref, q_est`` ``(P, 4)``. Returns ``(info, q_aligned (P, 4))`` with
    ``info = dict(rotation=a (4,), flipped=bool, matrix=T (4, 4) with q_aligned = T q_est,
    mean_error=float radians)``; ``q_aligned`` signs are matched to ``q_ref``.
    """
    q_ref, q_est = _check_pair(q_ref, q_est)
    group = _group(symmetry)
    P = len(q_ref)
    results = []
    for flipped in (False, True):
        p = handedness_flip(q_est) if flipped else q_est
        u = geo.multiply(geo.conjugate(p), q_ref)
        _, vecs = np.linalg.eigh(u.T @ u)
        starts = [vecs[:, -1]]
        if group is not None:
            idx = np.unique(np.linspace(0, P - 1, min(n_candidates, P)).astype(int))
            starts += list(u[idx])
            sub = np.unique(np.linspace(0, P - 1, min(screen_size, P)).astype(int))
            scores = [np.mean(_errors(q_ref[sub], geo.multiply(p[sub], a), group))
                      for a in starts]
            starts = [starts[int(np.argmin(scores))]]
        a, err = _refine_rotation(q_ref, p, starts[0], group, n_iter)
        results.append((err, flipped, a))
    err, flipped, a = min(results, key=lambda r: r[0])
    a = a if a[0] >= 0 else -a
    T = quaternion_map_matrix(right=a)
    if flipped:
        T = T @ quaternion_map_matrix(left=HANDEDNESS_AXIS_QUATERNION,
                                      right=geo.conjugate(HANDEDNESS_AXIS_QUATERNION))
    q_al = geo.normalize(geo.multiply(handedness_flip(q_est) if flipped else q_est, a))
    q_al = _sign_match(q_al, _nearest_mates(q_ref, q_al, group))
    return dict(rotation=a, flipped=bool(flipped), matrix=T, mean_error=err), q_al


# --------------------------------------------------------------------------- errors

def orientation_errors(q_ref, q_aligned, symmetry="C1"):
    """Per-particle error ``d_q(q_ref_i, q_aligned_i)`` in radians, ``(P,)``, in ``[0, pi]``.

    With a point group, the symmetric distance (minimum over the group's mates).
    """
    q_ref, q_aligned = _check_pair(q_ref, q_aligned)
    return _errors(q_ref, q_aligned, _group(symmetry))


def error_components(q_ref, q_aligned, symmetry="C1"):
    """Split the error into viewing direction and in-plane parts, radians.

    ``viewing_direction (P,)``: angle in ``[0, pi]`` between the viewing directions (third
    rows of ``R``). ``in_plane (P,)``: in ``[0, pi]``, the angle of the rotation about the
    beam left after the smallest object-side rotation that brings the estimated viewing
    direction onto the reference one (for exactly opposite directions, about an arbitrary
    perpendicular axis). With a point group, the nearest symmetry mate of ``q_ref`` is used.
    """
    q_ref, q_aligned = _check_pair(q_ref, q_aligned)
    q_ref = _nearest_mates(q_ref, q_aligned, _group(symmetry))
    R_ref = geo.quaternion_to_matrix(q_ref)
    R_al = geo.quaternion_to_matrix(q_aligned)
    v_ref, v_al = R_ref[:, 2, :], R_al[:, 2, :]
    cos_v = np.clip(np.sum(v_ref * v_al, axis=1), -1.0, 1.0)
    axis = np.cross(v_al, v_ref)
    sin_v = np.linalg.norm(axis, axis=1)
    # Opposite (or equal) directions: any perpendicular axis; pick one deterministically.
    degenerate = sin_v < 1e-12
    if np.any(degenerate):
        helper = np.where(np.abs(v_al[degenerate, :1]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]])
        perp = np.cross(v_al[degenerate], helper)
        axis[degenerate] = perp / np.linalg.norm(perp, axis=1, keepdims=True)
    axis = axis / np.maximum(np.linalg.norm(axis, axis=1, keepdims=True), 1e-300)
    angle = np.arctan2(sin_v, cos_v)
    B = geo.quaternion_to_matrix(np.concatenate(
        [np.cos(angle / 2)[:, None], np.sin(angle / 2)[:, None] * axis], axis=1))
    # B v_al = v_ref, so D = R_ref B R_al^T fixes the beam axis: a rotation about z.
    D = R_ref @ B @ np.swapaxes(R_al, 1, 2)
    in_plane = np.abs(np.arctan2(D[:, 1, 0], D[:, 0, 0]))
    return dict(viewing_direction=np.arccos(cos_v), in_plane=in_plane)


def expected_random_error(statistic="mean", symmetry="C1", n_samples=20000, seed=0):
    """Expected ``d_q`` between two independent uniform orientations, radians.

    C1: the rotation angle ``t`` of a Haar-random rotation has density ``(1 - cos t) / pi``
    on ``[0, pi]``, CDF ``(t - sin t) / pi``. Mean: ``pi/2 + 2/pi = 2.2074`` rad (126.5 deg);
    median: root of ``t - sin t = pi/2``, ``2.3099`` rad (132.3 deg). Other point groups:
    Monte Carlo over ``n_samples`` pairs (seeded). ``statistic``: ``'mean'`` or ``'median'``.
    Note that aligning two independent sets (6 free parameters in O(4), 3 for a rotation)
    lowers their mean error slightly below this value.
    """
    if statistic not in ("mean", "median"):
        raise ValueError("statistic must be 'mean' or 'median'")
    if _group(symmetry) is None:
        if statistic == "mean":
            return float(np.pi / 2 + 2 / np.pi)
        t = 2.3                                   # Newton on t - sin t - pi/2 = 0
        for _ in range(50):
            t -= (t - np.sin(t) - np.pi / 2) / (1 - np.cos(t))
        return float(t)
    d = geo.symmetric_distance(geo.uniform_quaternions(n_samples, seed),
                               geo.uniform_quaternions(n_samples, seed + 1), _group(symmetry))
    return float(np.mean(d) if statistic == "mean" else np.median(d))


# --------------------------------------------------------------------------- report

def compare_orientations(q_ref, q_est, symmetry="C1"):
    """E_OR both ways: after the full O(4) alignment and after rotation + handedness only.

    ``q_ref, q_est`` ``(P, 4)``. Returns a dict (errors in radians):
    ``o4_errors, rot_errors (P,)``; ``o4_mean, o4_median, rot_mean, rot_median``;
    ``o4_viewing_direction, o4_in_plane, rot_viewing_direction, rot_in_plane (P,)`` and
    their ``*_median``; ``o4_transform (4, 4)``, ``o4_det`` (+1 or -1), ``rot_rotation
    (4,)``, ``rot_flipped``, ``rot_transform (4, 4)``; ``o4_aligned, rot_aligned (P, 4)``;
    ``random_mean, random_median`` (expected values for unrelated sets); ``symmetry``.
    With a point group, errors are symmetric distances and the alignments pick symmetry
    mates per particle (see ``align_o4``).
    """
    q_ref, q_est = _check_pair(q_ref, q_est)
    info, q_rot = align_rotation_handedness(q_ref, q_est, symmetry=symmetry)
    T, q_o4 = align_o4(q_ref, q_est, symmetry=symmetry, rotation_info=info)
    out = dict(symmetry=str(symmetry), n_particles=len(q_ref),
               o4_transform=T, o4_det=float(np.sign(np.linalg.det(T))), o4_aligned=q_o4,
               rot_rotation=info["rotation"], rot_flipped=info["flipped"],
               rot_transform=info["matrix"], rot_aligned=q_rot,
               random_mean=expected_random_error("mean", symmetry),
               random_median=expected_random_error("median", symmetry))
    for name, q_al in (("o4", q_o4), ("rot", q_rot)):
        err = orientation_errors(q_ref, q_al, symmetry)
        comp = error_components(q_ref, q_al, symmetry)
        out[f"{name}_errors"] = err
        out[f"{name}_mean"] = float(np.mean(err))
        out[f"{name}_median"] = float(np.median(err))
        for key, val in comp.items():
            out[f"{name}_{key}"] = val
            out[f"{name}_{key}_median"] = float(np.median(val))
    return out


def fit_frame_translation(rotations, shifts_est, shifts_ref):
    """The 3-D translation between two frames' particle offsets, and the errors left.

    A map is only defined up to where its origin sits: moving it by ``c`` (voxels, in
    the estimated map's frame) moves every particle's offset by ``(R_i c)_xy``. This
    finds ``c`` minimising ``sum_i |t_est_i - t_ref_i - (R_i c)_xy|^2`` (linear least
    squares) from the estimated orientations ``rotations (M, 3, 3)`` or ``(M, 4)`` and
    offsets ``(M, 2)`` px. Returns ``(c (3,), errors (M,) px after removing it)``; like
    the global rotation of ``align_rotation_handedness``, it is fixed by the data, not
    by any one particle.
    """
    from . import geometry
    R = np.asarray(rotations, dtype=np.float64)
    if R.shape[-1] == 4:
        R = geometry.quaternion_to_matrix(R)
    d = np.asarray(shifts_est, np.float64) - np.asarray(shifts_ref, np.float64)
    A = R[:, :2, :].reshape(-1, 3)
    c, *_ = np.linalg.lstsq(A, d.reshape(-1), rcond=None)
    residual = d - np.einsum("mij,j->mi", R[:, :2, :], c)
    return c, np.linalg.norm(residual, axis=1)
