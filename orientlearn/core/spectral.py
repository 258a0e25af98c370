"""Spectral starting point of orientation recovery and ambiguity resolution.

With the D4 image transforms the start solves a ``2N``-dimensional equivariant
eigenproblem (``spectral_initialization``, ``equivariant_plane``) instead of the
``K N``-node virtual graph; ``resolve_ambiguity`` puts an O(4)-ambiguous starting point
in the right basin (see ``recovery.py``).
"""
import numpy as np

from . import geometry
from .graph import transform_table

__all__ = [
    "spectral_initialization", "resolve_ambiguity", "equivariant_plane",
]


def _virtual_edges(i, j, k, table, N):
    """Edges of the graph on virtual nodes ``(n, l) -> l * N + n`` = orientation g_l q_n:
    edge ``(i, j, k)`` says g_l q_i is near g_l g_k q_j, for every ``l``."""
    K = len(table)
    a = (np.arange(K)[:, None] * N + i[None]).ravel()
    b = (table[:, k] * N + j[None]).ravel()
    return a, b


def _fit_rotations(Y, n_fit=5000, restarts=8, iterations=60, seed=0):
    """Rotation matrices ``(M, 3, 3)`` from rows ``Y (M, 9)`` that span the entries of R
    up to an unknown linear map (whitening, then alternating projection onto O(3) and
    Procrustes in R^9)."""
    rng = np.random.default_rng(seed)
    # Whiten: for orientations covering SO(3) uniformly the entries of R are uncorrelated
    # with variance 1/3, so after whitening the unknown map is orthogonal (Procrustes).
    Y = Y - Y.mean(axis=0)
    evals, evecs = np.linalg.eigh(Y.T @ Y / len(Y))
    Y = Y @ evecs / np.sqrt(3.0 * np.maximum(evals, 1e-12 * evals.max()))
    sub = Y[rng.choice(len(Y), size=min(n_fit, len(Y)), replace=False)]
    best = (np.inf, None)
    for _ in range(restarts):
        M = np.linalg.qr(rng.standard_normal((9, 9)))[0]
        for _ in range(iterations):
            U, _, Vt = np.linalg.svd((sub @ M).reshape(-1, 3, 3))
            X = (U @ Vt).reshape(-1, 9)                      # nearest O(3) matrices
            u, _, vt = np.linalg.svd(sub.T @ X)
            M = u @ vt
        res = float(np.mean((sub @ M - X) ** 2))
        if res < best[0]:
            best = (res, M)
    U, _, Vt = np.linalg.svd((Y @ best[1]).reshape(-1, 3, 3))
    Rm = U @ Vt
    # The fit is defined up to R -> -R: choose the sign that makes most of them rotations.
    if np.mean(np.linalg.det(Rm) > 0) < 0.5:
        Rm = -Rm
    det = np.linalg.det(Rm)
    Rm[det < 0] *= -1                                    # rare stragglers: flip to SO(3)
    return Rm, best[0]


def equivariant_plane(transforms):
    """2x2 blocks ``(K, 2, 2)`` of the transforms on the image plane, or None.

    Returned when every transform's rotation matrix fixes the beam axis (z) and the
    blocks ``rho(g) = R(g)[:2, :2]`` act on the image plane absolutely irreducibly (only
    multiples of the identity commute with all of them): true for the dihedral group
    D4 of ``image_transforms()`` (rotations with the mirror), false for rotations alone
    (which commute with every in-plane rotation), the mirror alone or the identity.
    Then ``spectral_initialization`` can work on ``2 N`` unknowns instead of ``K N``.
    """
    R = geometry.quaternion_to_matrix(np.asarray(transforms, np.float64).reshape(-1, 4))
    if np.max(np.abs(R[:, 2, :2])) > 1e-6 or np.max(np.abs(R[:, :2, 2])) > 1e-6:
        return None
    rho = R[:, :2, :2]
    eye = np.eye(2)
    # Row-major vec: vec(rho X - X rho) = (rho (x) I - I (x) rho^T) vec(X).
    L = np.concatenate([np.kron(r, eye) - np.kron(eye, r.T) for r in rho])
    if np.linalg.matrix_rank(L, tol=1e-6) != 3:
        return None
    return rho


def spectral_initialization(i, j, k, transforms, d_hat, n_particles, max_distance=None,
                            seed=0, method="auto", tol=None):
    """Rough orientations ``(N, 4)`` from the local edges by Laplacian eigenmaps on SO(3).

    The first 9 non-trivial eigenfunctions of the Laplacian on SO(3) are the entries of
    ``R(q)``; a kernel graph on the data approximates them (for a roughly uniform
    coverage of orientations). Edges with transforms are used through virtual nodes
    ``g_l q_n`` (the transforms must form a group, see ``transform_table``). Edges with
    ``d_hat > max_distance`` (default: the 40th percentile) are ignored: they carry the
    least reliable distances. Use the result as ``q_init`` for ``recover_orientations``.

    ``method``:

    * ``"virtual"``: the kernel graph on the ``K N`` virtual nodes, 16 eigenvectors, a
      linear map from 9 of them to rotation matrices (``_fit_rotations``). The result is
      defined up to O(4) (fix with ``resolve_ambiguity``).
    * ``"equivariant"`` (needs ``equivariant_plane(transforms)``): the graph is
      invariant under the group acting on the virtual nodes, so the wanted
      eigenfunctions have the form ``f(l, n) = rho(g_l) u_n`` with ``u_n`` in R^2
      (``rho`` the 2x2 block of ``R(g)`` on the image plane) and are eigenvectors of the
      ``2N x 2N`` matrix with blocks ``w_e rho(g_k)`` at ``(i, j)`` (and the transpose
      at ``(j, i)``) — vector diffusion maps. Its top three eigenvectors are
      ``u_n = R(q_n)[:2] C`` for one unknown 3x3 ``C``; fitting ``C`` (whitening, then
      alternating projection) gives the first two rows of ``R(q_n)``, the third is their
      cross product. Solves a problem ``K / 2`` times smaller without the exact
      eigenvalue multiplicities of the virtual graph (Lanczos finds those slowly), and
      the result is already free of the harmful ambiguity (defined up to a global
      object rotation and the handedness), as ``rho(g)`` is fixed, not estimated.
    * ``"auto"`` (default): ``"equivariant"`` where possible, else ``"virtual"``.

    ``tol``: ARPACK tolerance (default 1e-10 virtual, 1e-6 equivariant).
    """
    return _spectral(i, j, k, transforms, d_hat, n_particles, max_distance, seed,
                     method, tol)[0]


def _spectral(i, j, k, transforms, d_hat, n_particles, max_distance=None, seed=0,
              method="auto", tol=None):
    """``spectral_initialization``, returning ``(q (N, 4), method used)``."""
    import scipy.sparse as sp
    import scipy.sparse.linalg as sla
    i, j, k = (np.asarray(x, np.int64) for x in (i, j, k))
    d_hat = np.asarray(d_hat, np.float64)
    N = int(n_particles)
    table = transform_table(transforms)
    K = len(table)
    rho = equivariant_plane(transforms)
    if method == "auto":
        method = "virtual" if rho is None else "equivariant"
    if method == "equivariant" and rho is None:
        raise ValueError("the transforms do not allow the equivariant initialisation")
    if method not in ("virtual", "equivariant"):
        raise ValueError(f"unknown spectral method {method!r}")
    if max_distance is None:
        max_distance = np.quantile(d_hat, 0.4)
    keep = d_hat <= max_distance
    i, j, k, d = i[keep], j[keep], k[keep], d_hat[keep]
    eps = max(np.median(d) ** 2, 1e-6)
    w = np.exp(-d * d / eps)
    v0 = np.random.default_rng(seed)
    if method == "equivariant":
        deg = np.bincount(i, w, minlength=N) + np.bincount(j, w, minlength=N)
        s = np.repeat(1.0 / np.sqrt(np.maximum(deg, 1e-12)), 2)     # (2N,)
        blocks = w[:, None, None] * rho[k]                           # (E, 2, 2)
        two = np.arange(2)
        rows = (2 * i[:, None, None] + two[None, :, None]).repeat(2, axis=2).ravel()
        cols = (2 * j[:, None, None] + two[None, None, :]).repeat(2, axis=1).ravel()
        del deg
        vals = blocks.ravel()
        del blocks
        # Block (j, i) is the transpose of block (i, j): the same entries, swapped indices.
        r_all, c_all = np.concatenate([rows, cols]), np.concatenate([cols, rows])
        del rows, cols
        v_all = np.concatenate([vals, vals]) * s[r_all] * s[c_all]
        A = sp.csr_matrix((v_all, (r_all, c_all)), shape=(2 * N, 2 * N))
        del r_all, c_all, v_all
        vals, vecs = sla.eigsh(A, k=min(6, 2 * N - 1), which="LA",
                               v0=v0.standard_normal(2 * N),
                               tol=1e-6 if tol is None else tol)
        order = np.argsort(-vals)
        U = (vecs[:, order[:3]] * s[:, None]).reshape(N, 2, 3)
        Rm = _fit_two_rows(U)
        return geometry.matrix_to_quaternion(Rm), method
    a, b = _virtual_edges(i, j, k, table, N)
    w = np.tile(w, K)
    W = sp.coo_matrix((w, (a, b)), shape=(K * N, K * N)).tocsr()
    W = (W + W.T).tocsr()
    deg = np.asarray(W.sum(axis=1)).ravel()
    deg = np.maximum(deg, 1e-12)
    Dm = sp.diags(1.0 / np.sqrt(deg))
    A = (Dm @ W @ Dm).tocsr()
    vals, vecs = sla.eigsh(A, k=16, which="LA", v0=v0.standard_normal(K * N),
                           tol=1e-10 if tol is None else tol)
    order = np.argsort(-vals)
    Y = (vecs[:, order[1:10]] / np.sqrt(deg)[:, None])[:N]   # nodes (n, 0)
    Rm, _ = _fit_rotations(Y, seed=seed)
    return geometry.matrix_to_quaternion(Rm), method


def _fit_two_rows(U, iterations=20):
    """Rotation matrices ``(N, 3, 3)`` from ``U (N, 2, 3) ~ R(q_n)[:2] C`` (unknown C).

    Whitening (for orientations covering SO(3) uniformly ``mean R[:2]^T R[:2] = 2/3 I``)
    gives ``C`` up to an orthogonal factor, which is harmless (an object rotation, or
    with a reflection the handedness); then alternate the nearest matrices with
    orthonormal rows and the least-squares linear map. The third row is the cross
    product of the first two, so the result is a rotation.
    """
    U = np.asarray(U, np.float64)
    G = np.einsum("nac,nad->cd", U, U) / len(U)
    evals, evecs = np.linalg.eigh(G)
    M = evecs / np.sqrt(1.5 * np.maximum(evals, 1e-12 * evals.max())) @ evecs.T
    UtU = np.einsum("nac,nad->cd", U, U)
    for _ in range(int(iterations)):
        u, _, vt = np.linalg.svd(U @ M, full_matrices=False)          # (N,2,2),(N,2,3)
        X = u @ vt                                                    # orthonormal rows
        M = np.linalg.solve(UtU, np.einsum("nac,nad->cd", U, X))
    u, _, vt = np.linalg.svd(U @ M, full_matrices=False)
    X = u @ vt
    Rm = np.concatenate([X, np.cross(X[:, 0], X[:, 1])[:, None]], axis=1)
    return Rm


def resolve_ambiguity(q, i, j, k, transforms, d_hat, weights=None, n_candidates=2048,
                      max_edges=3000, n_refine=3, seed=0):
    """Fix the detector-side factor and the conjugation of an O(4)-ambiguous solution.

    ``q (N, 4)`` fits the identity edges up to O(4), i.e. ``q ~ a q_true b`` or
    ``a conj(q_true) b``. Only the transformed edges (``k`` with ``transforms[k] != 1``)
    depend on ``a`` and on the conjugation; this scores ``q -> c q`` and
    ``q -> c conj(q)`` for ``n_candidates`` uniform ``c`` on a subsample of at most
    ``max_edges`` transformed edges, then refines the best ``c`` ``n_refine`` times by
    sampling around it at shrinking scales, and returns ``(q_fixed (N, 4), info)`` for the best
    one (``info``: ``conjugated`` bool, ``left`` (4,), ``loss``, ``loss_identity``).
    The final joint refinement by ``recover_orientations`` polishes ``c``.
    """
    q = np.asarray(q, np.float64)
    i, j, k = (np.asarray(x, np.int64) for x in (i, j, k))
    transforms = np.asarray(transforms, np.float64)
    w = np.ones(len(i)) if weights is None else np.asarray(weights, np.float64)
    nontrivial = np.abs(np.abs(transforms[:, 0]) - 1) > 1e-9
    sel = np.flatnonzero(nontrivial[k])
    rng = np.random.default_rng(seed)
    if len(sel) == 0:
        return q, dict(conjugated=False, left=np.array([1.0, 0, 0, 0]), loss=np.nan,
                       loss_identity=np.nan)
    if len(sel) > max_edges:
        sel = rng.choice(sel, max_edges, replace=False)
    ie, je, ke, de, we = i[sel], j[sel], k[sel], d_hat[sel], w[sel]
    g = transforms[ke]

    def score(c, conj):
        """Losses ``(C,)`` of the candidates ``c (C, 4)`` applied as ``c q`` (or ``c conj(q)``)."""
        qc = geometry.conjugate(q) if conj else q
        qi, qj = qc[ie], qc[je]
        out = []
        for start in range(0, len(c), 64):
            cc = c[start:start + 64]
            # <c q_i, g c q_j> = <q_i, conj(c) g c q_j>
            h = geometry.multiply(geometry.multiply(geometry.conjugate(cc)[:, None], g[None]),
                                  cc[:, None])                            # (C, E', 4)
            dot = np.abs(np.einsum("cef,ef->ce", geometry.multiply(h, qj[None]), qi))
            d = 2 * np.arccos(np.clip(dot, 0, 1))
            out.append(((d - de) ** 2) @ we / we.sum())
        return np.concatenate(out)

    identity = np.array([[1.0, 0, 0, 0]])
    cands = np.concatenate([identity, geometry.uniform_quaternions(n_candidates, seed)])
    loss_identity = float(score(identity, False)[0])
    best = (np.inf, None, None)
    for conj in (False, True):
        losses = score(cands, conj)
        m = int(np.argmin(losses))
        if losses[m] < best[0]:
            best = (float(losses[m]), conj, cands[m])
    scale = 0.3     # ~ the spacing of the candidate grid, radians
    for _ in range(n_refine):
        _, conj, c0 = best
        pert = geometry.normalize(np.concatenate(
            [np.ones((256, 1)), 0.5 * scale * rng.standard_normal((256, 3))], axis=1))
        local = np.concatenate([c0[None], geometry.multiply(pert, c0)])
        losses = score(local, conj)
        m = int(np.argmin(losses))
        best = (float(losses[m]), conj, local[m])
        scale /= 3
    _, conj, c = best
    q_fixed = geometry.multiply(c, geometry.conjugate(q) if conj else q)
    return q_fixed, dict(conjugated=bool(conj), left=c, loss=best[0],
                         loss_identity=loss_identity)
