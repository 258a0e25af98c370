"""Orientation recovery from estimated distances (paper eq. 4, §2.3, §3.2).

We look for unit quaternions ``q_1..q_N`` that minimise

    L_OR = sum_e w_e rho( d_q(q_i, g_e q_j) - d_hat_e )

over a sparse graph of edges ``e = (i, j, g)``, where ``d_hat_e`` estimates the distance
between image ``p_i`` and image ``p_j`` transformed by an image-side transform ``g``
(in-plane rotation by a multiple of pi/2, optionally composed with the mirror
``y -> -y``; these are exact on the pixel grid). The transform acts on the left,
``g q_j``, as fixed in ``geometry.py``.

Why the transformed edges: with ``g = identity`` only, ``d_q`` is invariant to all of
O(4) (``q -> a q b`` and ``q -> conj(q)``), and the left factor ``a`` (a rotation of the
detector frame) and the conjugation change which image gets which view, so they break
reconstruction. An edge with ``g != identity`` is invariant to ``q -> a q b`` only if
``a^-1 g a = +-g``. For the 8 transforms ``{R_z(k pi/2)} x {1, mirror}`` (the dihedral
group D4 acting on the detector) the only such ``a`` are ``1`` and ``R_z(pi)``, and no
conjugation ``q -> a conj(q) b`` preserves them. So the minimiser is unique up to

* ``q -> q b``: a global rotation of the object frame (harmless), and
* ``q -> R_z(pi) q b``: the enantiomer. Projections of the point-inverted volume
  ``V(-r)`` at ``R_z(pi) R`` are exactly the projections of ``V`` at ``R``, so this is the
  handedness ambiguity that no method working on projections can resolve.

Both are harmless for reconstruction (the second gives the mirror-image map), so no
separate ambiguity-resolution step (common lines, reprojection) is needed when the
graph contains transformed edges (``resolve_ambiguity`` only puts an O(4)-ambiguous
starting point, such as the virtual-graph spectral start, in the right basin).
With the in-plane rotations alone (no mirror) a continuous ambiguity ``a = R_z(t)``
remains, and with the mirror alone ``a = R_x(t)``: use both (the default).

Numerics: the loss and its analytic gradient are vectorised over edges, gradients are
accumulated per particle by two sparse products with precomputed patterns;
optimisation is Adam on the sphere (tangent-projected gradient, renormalisation after
each step). ``d_q = 2 arccos |<q_i, g q_j>|`` and its derivative is capped near
``d = 0`` (where ``(d - d_hat)^2`` has a cone for ``d_hat > 0``).
Memory is linear in the number of edges; nothing ``N x N`` is ever formed.

Scale (100,000 particles on 2 CPU cores in minutes, ``benchmarks/recover.py``): the
neighbour search of ``build_graph`` switches from brute force to an inverted file
(spherical k-means cells, ``ivf_neighbors``) above a few thousand particles, and the
spectral start with the D4 transforms solves a ``2N``-dimensional equivariant
eigenproblem instead of the ``K N``-node virtual graph (``spectral_initialization``).
"""
import time

import numpy as np

from . import geometry

__all__ = ["Graph", "image_transforms", "build_graph", "edge_weights",
           "recover_orientations", "recover_from_features", "orientation_loss",
           "spectral_initialization", "resolve_ambiguity", "transform_table",
           "equivariant_plane", "ivf_neighbors", "spherical_kmeans"]


# ----------------------------------------------------------------------------- transforms

def image_transforms(n_rotations=4, mirror=True):
    """Image-side transforms exact on the pixel grid, as quaternions acting on the left.

    ``n_rotations`` in-plane rotations by ``2 pi k / n_rotations`` (use 1, 2 or 4 for
    transforms exact on a square grid), each with and without the mirror ``y -> -y``
    (mirror applied first to the image, then the rotation: ``g = R_z(alpha) M``).
    Returns ``(transforms (K, 4), descriptions list of K str)``, identity first;
    ``K = n_rotations * (2 if mirror else 1)``. Description ``"rot90x1+mirror"`` means:
    mirror ``img[y, x] -> img[-y, x]`` then rotate by 1 x 90 degrees counter-clockwise.
    """
    n_rotations = int(n_rotations)
    if n_rotations < 1:
        raise ValueError("n_rotations must be >= 1")
    step = 2 * np.pi / n_rotations
    quats, names = [], []
    for use_mirror in ([False, True] if mirror else [False]):
        for k in range(n_rotations):
            g = geometry.in_plane_quaternion(k * step)
            if use_mirror:
                g = geometry.multiply(g, geometry.MIRROR_QUATERNION)
            quats.append(g)
            deg = k * 360 // n_rotations
            names.append(f"rot{deg}" + ("+mirror" if use_mirror else ""))
    return np.array(quats), names


# ----------------------------------------------------------------------------- graph

class Graph:
    """A sparse distance graph: edge ``e`` says ``d_q(q_i[e], g[k[e]] q_j[e]) ~ d_hat[e]``.

    Attributes: ``i, j (E,) int64`` particle indices, ``k (E,) int64`` transform indices,
    ``d_hat (E,) float64`` radians in ``[0, pi]``, ``is_random (E,) bool`` (True for the
    random far pairs, False for the feature-space neighbours), ``n_particles`` int.
    """

    def __init__(self, i, j, k, d_hat, n_particles, is_random=None):
        self.i = np.asarray(i, dtype=np.int64)
        self.j = np.asarray(j, dtype=np.int64)
        self.k = np.asarray(k, dtype=np.int64)
        self.d_hat = np.asarray(d_hat, dtype=np.float64)
        self.n_particles = int(n_particles)
        self.is_random = (np.zeros(len(self.i), bool) if is_random is None
                          else np.asarray(is_random, dtype=bool))

    def __len__(self):
        return len(self.i)

    def __repr__(self):
        return (f"Graph({self.n_particles} particles, {len(self)} edges, "
                f"{int(self.is_random.sum())} random)")


def _unit(features):
    f = np.asarray(features, dtype=np.float32)
    return f / np.maximum(np.linalg.norm(f, axis=-1, keepdims=True), 1e-12)


#: ``build_graph(method="auto")`` searches exactly while ``K * N * N`` (similarity
#: evaluations of the brute force) is at most this, and with the inverted file above.
EXACT_SEARCH_LIMIT = 1e8


def build_graph(features, n_neighbors=16, n_random=4, seed=0, chunk_size=None,
                progress=None, method="auto", n_cells=None, n_probe=None):
    """Nearest neighbours (plus random pairs) in feature space, over all transforms.

    ``features (K, N, F)``: unit feature vectors; ``features[k][j]`` embeds image ``j``
    after image transform ``k`` (``features[0]`` the untransformed images).
    The estimated distance of an edge is the angle between ``features[0][i]`` and
    ``features[k][j]`` in radians, ``[0, pi]``.

    For each particle ``i``: the ``n_neighbors`` pairs ``(j, k)`` with the smallest angle
    (``j != i``; ``(i, i, k)`` carries no information: ``d_q(q, g q)`` is the angle of
    ``g``), plus ``n_random`` uniformly drawn ``(j, k)`` (mostly far pairs, which keep
    the embedding from folding).

    Search (``method``):

    * ``"exact"``: brute force, rows in chunks of ``chunk_size``; memory
      ``O(chunk_size * K * N + N * (n_neighbors + n_random))``, time ``O(K N^2 F)``.
    * ``"ivf"``: approximate, an inverted file (``ivf_neighbors``): spherical k-means
      on the ``K * N`` feature vectors into ``n_cells`` cells, each particle searched
      exactly in the ``n_probe`` cells nearest to it. Memory ``O(K N F)``, time about
      ``O(K N F (n_cells + n_probe K N / n_cells))``, i.e. ``O(N^1.5)``. Recall (the
      fraction of the exact neighbours found) is about 0.99 with the defaults on
      features of a 3-D orientation manifold.
    * ``"auto"`` (default): exact while ``K N^2 <= EXACT_SEARCH_LIMIT`` (N up to ~3,500
      at K = 8), inverted file above.

    ``progress(done, total)`` is called after each chunk (exact) or group of cells
    (ivf). Returns a ``Graph``; ``graph.search`` says which search was used.
    """
    feats = _unit(features)
    if feats.ndim == 2:
        feats = feats[None]
    K, N, F = feats.shape
    n_neighbors = int(min(n_neighbors, K * N - K))
    if method == "auto":
        method = "exact" if K * float(N) * N <= EXACT_SEARCH_LIMIT else "ivf"
    flat = feats.reshape(K * N, F)
    if n_neighbors <= 0:
        nb_idx = np.empty((N, 0), np.int64)
        nb_cos = np.empty((N, 0), np.float32)
    elif method == "exact":
        nb_idx, nb_cos = _exact_neighbors(flat, N, n_neighbors, chunk_size, progress)
    elif method == "ivf":
        nb_idx, nb_cos = ivf_neighbors(flat, N, n_neighbors, n_cells=n_cells,
                                       n_probe=n_probe, seed=seed, progress=progress)
    else:
        raise ValueError(f"unknown search method {method!r}")
    rng = np.random.default_rng(seed)
    i_nb = np.repeat(np.arange(N), n_neighbors)
    flat_nb = nb_idx.ravel()
    # Random pairs: uniform over (j, k) with j != i.
    i_r = np.repeat(np.arange(N), n_random)
    j_r = rng.integers(0, N - 1, size=N * n_random)
    j_r = j_r + (j_r >= i_r)                                  # skip j == i
    k_r = rng.integers(0, K, size=N * n_random)
    cos_r = np.einsum("ef,ef->e", feats[0, i_r], feats[k_r, j_r])
    i_all = np.concatenate([i_nb, i_r])
    j_all = np.concatenate([flat_nb % N, j_r])
    k_all = np.concatenate([flat_nb // N, k_r])
    cos_all = np.concatenate([nb_cos.ravel(), cos_r]).astype(np.float64)
    d_hat = np.arccos(np.clip(cos_all, -1.0, 1.0))
    is_random = np.concatenate([np.zeros(len(i_nb), bool), np.ones(len(i_r), bool)])
    graph = Graph(i_all, j_all, k_all, d_hat, N, is_random)
    graph.search = method
    return graph


def _exact_neighbors(flat, N, n_neighbors, chunk_size=None, progress=None):
    """Brute-force ``n_neighbors`` most similar columns of ``flat (K*N, F)`` for each of
    the rows ``flat[:N]``, excluding the particle itself under every transform.
    Returns ``(index (N, n) int64 into K*N, cosine (N, n) float32)``, unordered."""
    KN = len(flat)
    K = KN // N
    if chunk_size is None:        # ~16M similarity entries (64 MB float32) per chunk
        chunk_size = max(1, min(N, 16_000_000 // max(1, KN)))
    nb_idx = np.empty((N, n_neighbors), dtype=np.int64)
    nb_cos = np.empty((N, n_neighbors), dtype=np.float32)
    total = (N + chunk_size - 1) // chunk_size
    for c, start in enumerate(range(0, N, chunk_size)):
        stop = min(N, start + chunk_size)
        rows = np.arange(start, stop)
        sim = flat[start:stop] @ flat.T                        # (B, K*N) cosines
        sim[rows[:, None] - start, rows[:, None] + N * np.arange(K)[None]] = -np.inf
        part = np.argpartition(-sim, n_neighbors - 1, axis=1)[:, :n_neighbors]
        nb_idx[start:stop] = part
        nb_cos[start:stop] = np.take_along_axis(sim, part, axis=1)
        if progress is not None:
            progress(c + 1, total)
    return nb_idx, nb_cos


def _argmax_rows(X, C, block=None):
    """Index of the most similar row of ``C`` for every row of ``X`` (blocked matmul)."""
    if block is None:
        block = max(1, 8_000_000 // max(1, len(C)))
    out = np.empty(len(X), np.int64)
    for s in range(0, len(X), block):
        out[s:s + block] = np.argmax(X[s:s + block] @ C.T, axis=1)
    return out


def spherical_kmeans(X, n_clusters, n_iter=12, sample_size=None, seed=0):
    """Unit centroids ``(n_clusters, F)`` of unit vectors ``X (M, F)`` by cosine k-means.

    Trained on ``sample_size`` (default ``64 * n_clusters``) rows drawn with ``seed``;
    an empty cluster is re-seeded with a random sample row.
    """
    import scipy.sparse as sp
    rng = np.random.default_rng(seed)
    X = np.asarray(X, np.float32)
    n_clusters = int(min(n_clusters, len(X)))
    if sample_size is None:
        sample_size = 64 * n_clusters
    S = X[np.sort(rng.choice(len(X), size=min(len(X), int(sample_size)), replace=False))]
    C = S[rng.choice(len(S), size=n_clusters, replace=False)].copy()
    for _ in range(int(n_iter)):
        lab = _argmax_rows(S, C)
        counts = np.bincount(lab, minlength=n_clusters)
        member = sp.csr_matrix((np.ones(len(S), np.float32), (lab, np.arange(len(S)))),
                               shape=(n_clusters, len(S)))
        sums = np.asarray(member @ S, dtype=np.float32)
        empty = counts == 0
        if np.any(empty):
            sums[empty] = S[rng.choice(len(S), size=int(empty.sum()), replace=False)]
        C = _unit(sums)
    return C


def ivf_neighbors(flat, N, n_neighbors, n_cells=None, n_probe=None, seed=0,
                  progress=None):
    """Approximate ``_exact_neighbors`` with an inverted file (coarse quantiser).

    ``flat (K*N, F)`` unit vectors, the queries are its first ``N`` rows (the
    untransformed particles). Spherical k-means (``spherical_kmeans``) puts every vector
    in one of ``n_cells`` cells (default ``~sqrt(K*N)``); each query is compared exactly
    with the vectors of its ``n_probe`` nearest cells (default 8). Cells are processed
    one at a time (all queries probing a cell together, one matrix product), and the
    running best ``n_neighbors`` of every query are merged in place, so memory is
    ``O(K N F + N n_neighbors)``. A neighbour is missed only when it lies outside the
    probed cells; recall is measured in ``tests/test_recovery.py``.
    Returns ``(index (N, n) int64 into K*N, cosine (N, n) float32)``; entries that
    could not be filled (fewer than ``n_neighbors`` candidates) are filled by exact search.
    """
    flat = np.ascontiguousarray(flat, dtype=np.float32)
    KN, F = flat.shape
    if n_cells is None:
        n_cells = int(np.clip(round(np.sqrt(KN)), 1, 4096))
    n_cells = int(min(n_cells, KN))
    n_probe = int(min(8 if n_probe is None else n_probe, n_cells))
    centroids = spherical_kmeans(flat, n_cells, seed=seed)
    n_cells = len(centroids)
    # Inverted lists: database vectors sorted by cell.
    cell_of = _argmax_rows(flat, centroids)
    order = np.argsort(cell_of, kind="stable")
    bounds = np.searchsorted(cell_of[order], np.arange(n_cells + 1))
    # Probes: the n_probe nearest cells of every query, inverted into per-cell lists.
    probes = np.empty((N, n_probe), np.int64)
    block = max(1, 8_000_000 // n_cells)
    for s in range(0, N, block):
        sim = flat[s:min(N, s + block)] @ centroids.T
        if n_probe < n_cells:
            probes[s:s + block] = np.argpartition(-sim, n_probe - 1, axis=1)[:, :n_probe]
        else:
            probes[s:s + block] = np.arange(n_cells)[None]
    q_of = np.repeat(np.arange(N), n_probe)
    p_cell = probes.ravel()
    q_order = np.argsort(p_cell, kind="stable")
    q_sorted = q_of[q_order]
    q_bounds = np.searchsorted(p_cell[q_order], np.arange(n_cells + 1))
    del probes, q_of, p_cell, q_order
    best_idx = np.full((N, n_neighbors), -1, np.int64)
    best_cos = np.full((N, n_neighbors), -np.inf, np.float32)
    n = n_neighbors
    max_entries = 4_000_000
    for c in range(n_cells):
        db = order[bounds[c]:bounds[c + 1]]
        qs_all = q_sorted[q_bounds[c]:q_bounds[c + 1]]
        if len(db) == 0 or len(qs_all) == 0:
            continue
        D = flat[db]
        db_particle = db % N
        step = max(1, max_entries // len(db))
        for s in range(0, len(qs_all), step):
            qs = qs_all[s:s + step]
            sim = flat[qs] @ D.T                                    # (q, d)
            sim[db_particle[None, :] == qs[:, None]] = -np.inf      # no self pairs
            if len(db) > n:
                part = np.argpartition(-sim, n - 1, axis=1)[:, :n]
                cand_idx = db[part]
                cand_cos = np.take_along_axis(sim, part, axis=1)
            else:
                cand_idx = np.broadcast_to(db, sim.shape)
                cand_cos = sim
            all_idx = np.concatenate([best_idx[qs], cand_idx], axis=1)
            all_cos = np.concatenate([best_cos[qs], cand_cos], axis=1)
            keep = np.argpartition(-all_cos, n - 1, axis=1)[:, :n]
            best_idx[qs] = np.take_along_axis(all_idx, keep, axis=1)
            best_cos[qs] = np.take_along_axis(all_cos, keep, axis=1)
        if progress is not None and (c % 64 == 63 or c == n_cells - 1):
            progress(c + 1, n_cells)
    # Queries that met fewer than n candidates (tiny inputs): fill them exactly.
    short = np.flatnonzero(np.any(~np.isfinite(best_cos), axis=1))
    if len(short):
        for s in range(0, len(short), max(1, 16_000_000 // KN)):
            rows = short[s:s + max(1, 16_000_000 // KN)]
            sim = flat[rows] @ flat.T
            sim[rows[:, None] % N == (np.arange(KN) % N)[None]] = -np.inf
            part = np.argpartition(-sim, n - 1, axis=1)[:, :n]
            best_idx[rows] = part
            best_cos[rows] = np.take_along_axis(sim, part, axis=1)
    return best_idx, best_cos


# ----------------------------------------------------------------------------- weights

def edge_weights(d_hat, scheme="gaussian", scale=1.0, floor=0.05):
    """Trust weights ``(E,)`` for estimated distances ``d_hat (E,)`` radians.

    Learned distances are accurate for small true distances and plateau (underestimate)
    for large ones (paper §3.3), so small ``d_hat`` deserve more trust.

    * ``"uniform"``: all ones (the paper's eq. 4).
    * ``"gaussian"``: ``floor + (1 - floor) exp(-(d_hat / scale)^2)``; ``floor`` keeps
      far edges in the loss at a low weight (they still prevent folding).
    * ``"inverse"``: ``1 / (d_hat + scale)`` normalised to max 1.
    """
    d_hat = np.asarray(d_hat, dtype=np.float64)
    if scheme == "uniform":
        return np.ones_like(d_hat)
    if scheme == "gaussian":
        return floor + (1.0 - floor) * np.exp(-(d_hat / scale) ** 2)
    if scheme == "inverse":
        return scale / (d_hat + scale)
    raise ValueError(f"unknown weighting scheme {scheme!r}")


# ----------------------------------------------------------------------------- loss

_MIN_SIN = 1e-3   # cap of the arccos derivative near d = 0 (d < ~2e-3 rad)


def _robust(r, loss, scale):
    """rho(r) and rho'(r) for residuals ``r`` (radians)."""
    if loss == "l2":
        return r * r, 2 * r
    if loss == "huber":
        a = np.abs(r)
        quad = a <= scale
        rho = np.where(quad, r * r, 2 * scale * a - scale * scale)
        return rho, np.where(quad, 2 * r, 2 * scale * np.sign(r))
    if loss == "cauchy":
        t = (r / scale) ** 2
        return scale * scale * np.log1p(t), 2 * r / (1 + t)
    raise ValueError(f"unknown loss {loss!r}")


class _Edges:
    """Edge arrays prepared once for repeated loss evaluations: indices, normalised
    weights, the virtual index ``j * K + k`` of the transformed partner ``g_k q_j`` (the
    row of ``q @ left`` reshaped to ``(N * K, 4)``), and the sparsity patterns of the
    two edge-to-particle sums of the gradient, so that each is one sparse product."""

    def __init__(self, i, j, k, transforms, d_hat, weights, n_particles):
        self.N = int(n_particles)
        self.transforms = np.asarray(transforms, np.float64)
        self.K = len(self.transforms)
        self.i = np.asarray(i, np.int64)
        self.vidx = np.asarray(j, np.int64) * self.K + np.asarray(k, np.int64)
        self.d_hat = np.asarray(d_hat, np.float64)
        w = np.ones(len(self.i)) if weights is None else np.asarray(weights, np.float64)
        self.w = w / w.sum()
        # Left multiplication by g_k as a matrix: g_k q = q @ left[:, 4k:4k+4].
        L = np.stack([geometry.multiply(g[None], np.eye(4)).T for g in self.transforms])
        self.left = np.ascontiguousarray(L.transpose(2, 0, 1).reshape(4, 4 * self.K))
        E, KN = len(self.i), self.K * self.N
        itype = np.int32 if max(KN, E) < 2 ** 31 - 1 else np.int64
        # CSR (N, E): row i_e, column e. Its product with (E, 4) sums per particle.
        self.perm_i = np.argsort(self.i, kind="stable")
        self.cols_i = self.perm_i.astype(itype)
        self.ptr_i = np.concatenate([[0], np.cumsum(np.bincount(self.i, minlength=self.N))]
                                    ).astype(itype)
        # CSR (K*N, N): row vidx_e, column i_e.
        self.perm_v = np.argsort(self.vidx, kind="stable")
        self.cols_v = self.i[self.perm_v].astype(itype)
        self.ptr_v = np.concatenate([[0], np.cumsum(np.bincount(self.vidx, minlength=KN))]
                                    ).astype(itype)

    def transformed(self, q):
        """``g_k q_j`` for all ``(j, k)``, ``(N * K, 4)``, row ``j * K + k``."""
        return (q @ self.left).reshape(self.N * self.K, 4)

    def gradient(self, dL_dc, q, v):
        """Gradient ``(N, 4)`` of ``sum_e L(c_e)`` for ``c_e = <q_i, v_e>``,
        ``v_e = g_k q_j``, given ``dL/dc (E,)``."""
        import scipy.sparse as sp
        N, KN = self.N, self.K * self.N
        Ai = sp.csr_matrix((dL_dc[self.perm_i], self.cols_i, self.ptr_i),
                           shape=(N, len(dL_dc)), copy=False)
        Av = sp.csr_matrix((dL_dc[self.perm_v], self.cols_v, self.ptr_v), shape=(KN, N),
                           copy=False)
        grad = Ai @ v                                        # d c / d q_i = g_k q_j
        acc = Av @ q                                         # d c / d (g_k q_j) = q_i
        # c = <q_i, L_k q_j>: d c / d q_j = L_k^T q_i, i.e. the row acc_jk @ L_k.
        grad += acc.reshape(N, 4 * self.K) @ self.left.T
        return grad


def _loss_and_gradient(q, edges, loss="l2", loss_scale=0.3, with_gradient=True):
    """Loss (float), Euclidean gradient ``(N, 4)`` and ``|residual| (E,)`` for unit q."""
    e = edges
    gq = e.transformed(q)                                                      # (N*K, 4)
    qi = np.take(q, e.i, axis=0)
    v = np.take(gq, e.vidx, axis=0)                                            # g_k q_j
    c = np.einsum("ef,ef->e", qi, v)
    del qi
    ac = np.minimum(np.abs(c), 1.0)
    r = 2.0 * np.arccos(ac) - e.d_hat
    rho, drho = _robust(r, loss, loss_scale)
    value = float(np.dot(e.w, rho))
    if not with_gradient:
        return value, None, np.abs(r)
    # d(d_q)/dc = -2 sign(c) / sin(d/2), sin(d/2) = sqrt(1 - c^2), capped near d = 0.
    sin_half = np.sqrt(np.maximum((1.0 - ac) * (1.0 + ac), _MIN_SIN ** 2))
    dL_dc = e.w * drho * np.where(c < 0, 2.0, -2.0) / sin_half
    return value, e.gradient(dL_dc, q, v), np.abs(r)


def orientation_loss(q, i, j, k, transforms, d_hat, weights=None, loss="l2",
                     loss_scale=0.3, with_gradient=False):
    """Weighted mean loss ``sum w rho(d_q(q_i, g_k q_j) - d_hat) / sum w`` (rad^2 for l2).

    ``q (N, 4)`` unit quaternions; ``i, j, k (E,)``; ``transforms (K, 4)``;
    ``d_hat, weights (E,)``. With ``with_gradient`` also returns the Euclidean gradient
    ``(N, 4)`` and the per-edge absolute residuals ``(E,)``.
    """
    q = np.asarray(q, dtype=np.float64)
    edges = _Edges(i, j, k, transforms, d_hat, weights, len(q))
    value, grad, res = _loss_and_gradient(q, edges, loss, loss_scale, with_gradient)
    return (value, grad, res) if with_gradient else value


# ----------------------------------------------------------------------------- initialisation

def transform_table(transforms):
    """Multiplication table ``(K, K) int`` with ``g[table[l, k]] = +-g[l] g[k]``.

    Raises ``ValueError`` if ``transforms (K, 4)`` is not closed under multiplication.
    """
    t = np.asarray(transforms, dtype=np.float64)
    prod = geometry.multiply(t[:, None, :], t[None, :, :])              # (K, K, 4)
    overlap = np.abs(np.einsum("lkf,mf->lkm", prod, t))
    table = np.argmax(overlap, axis=2)
    if np.any(np.max(overlap, axis=2) < 1 - 1e-6):
        raise ValueError("transforms are not closed under composition")
    return table


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
    i = np.asarray(i, np.int64); j = np.asarray(j, np.int64); k = np.asarray(k, np.int64)
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
        r_all = np.concatenate([rows, cols]); c_all = np.concatenate([cols, rows])
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
    i = np.asarray(i, np.int64); j = np.asarray(j, np.int64); k = np.asarray(k, np.int64)
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


# ----------------------------------------------------------------------------- recovery

def _as_transform_indices(g, k, transforms, n_edges):
    """Normalise the two ways of giving edge transforms to ``(k (E,), transforms (K, 4))``."""
    if k is not None:
        if transforms is None:
            raise ValueError("k given without transforms")
        return np.asarray(k, dtype=np.int64), np.asarray(transforms, dtype=np.float64)
    if g is None:
        return np.zeros(n_edges, np.int64), np.array([[1.0, 0, 0, 0]])
    g = np.asarray(g, dtype=np.float64)
    if g.ndim == 1:
        if transforms is None:      # 1-D g: transform indices
            raise ValueError("integer g needs transforms")
        return g.astype(np.int64), np.asarray(transforms, dtype=np.float64)
    g = geometry.normalize(g)
    g = np.where(g[:, :1] < 0, -g, g)           # q ~ -q
    uniq, inv = np.unique(np.round(g, 9), axis=0, return_inverse=True)
    return inv.ravel().astype(np.int64), uniq


def recover_orientations(i, j, g=None, d_hat=None, weights=None, n_particles=None, *,
                         k=None, transforms=None, n_steps=1000, learning_rate=0.05,
                         final_learning_rate=0.002, restarts=1, restart_steps=200,
                         loss="l2", loss_scale=0.3, tol=1e-6, patience=50, q_init=None,
                         init="spectral", seed=0, progress=None, spectral_method="auto"):
    """Minimise eq. (4) on a sparse graph: orientations ``q (N, 4)`` from distances.

    Edges ``e``: particles ``i[e], j[e]`` (``(E,)`` int), image-side transform given either
    as ``g (E, 4)`` quaternions or as indices ``k (E,)`` into ``transforms (K, 4)``
    (``g=None, k=None``: identity, the paper's plain eq. 4), estimated distances
    ``d_hat (E,)`` radians, optional trust ``weights (E,)`` (``edge_weights``).

    Optimiser: Adam on the sphere (tangent gradients, renormalisation), learning rate
    decaying exponentially from ``learning_rate`` to ``final_learning_rate`` (radians per
    step, roughly) over ``n_steps``; stops early when the loss has improved by less than
    ``tol`` (relative) over ``patience`` steps. With ``restarts > 1``, that many random
    starts each run ``restart_steps`` steps and the lowest loss continues to the end.
    ``loss``: ``"l2"`` (eq. 4), ``"huber"`` or ``"cauchy"`` with ``loss_scale`` (radians).
    ``progress(done, total)`` is called every 10 steps.

    Initialisation (``init``): ``"spectral"`` (default; ``spectral_initialization`` on
    the edges, then ``resolve_ambiguity`` when there are transformed edges; falls back
    to random when the transforms are not a group), ``"random"`` (uniform, with
    ``restarts``), or an explicit ``q_init (N, 4)``. From random starts, sparse graphs
    (tens of edges per particle) often end in folded local minima even with exact
    distances; the spectral start avoids them when orientations cover SO(3).

    Returns ``(q (N, 4), info)`` with ``info``: ``loss`` (final weighted mean loss,
    rad^2), ``loss_history`` (per step), ``residual`` ``(N,)`` the weighted mean
    ``|d_q - d_hat|`` over each particle's edges (a ground-truth-free confidence: high
    means the particle does not fit; NaN for isolated particles), ``n_steps`` done,
    ``restart_losses``, ``seconds`` (``seconds_init``: the initialisation,
    ``seconds_optimize``: the rest).
    The result is defined up to ``q -> q b`` (object rotation) and, with transformed
    edges, ``q -> R_z(pi) q b`` (handedness); with identity edges only, up to O(4).
    """
    t0 = time.time()
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    d_hat = np.asarray(d_hat, dtype=np.float64)
    E = len(i)
    k, transforms = _as_transform_indices(g, k, transforms, E)
    if n_particles is None:
        n_particles = int(max(i.max(), j.max())) + 1
    N = int(n_particles)
    w = np.ones(E) if weights is None else np.asarray(weights, dtype=np.float64)
    rng = np.random.default_rng(seed)

    edges = _Edges(i, j, k, transforms, d_hat, w, N)

    def run(q, steps, step_offset, history, total):
        m = np.zeros_like(q)
        v = np.zeros_like(q)
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        decay = (final_learning_rate / learning_rate) ** (1.0 / max(1, n_steps))
        best_recent = np.inf
        since_improved = 0
        for t in range(1, steps + 1):
            value, grad, _ = _loss_and_gradient(q, edges, loss, loss_scale)
            history.append(value)
            grad -= np.sum(grad * q, axis=1, keepdims=True) * q      # tangent part
            m = beta1 * m + (1 - beta1) * grad
            v = beta2 * v + (1 - beta2) * grad * grad
            lr = learning_rate * decay ** (step_offset + t)
            mhat = m / (1 - beta1 ** t)
            vhat = v / (1 - beta2 ** t)
            q = q - lr * mhat / (np.sqrt(vhat) + eps)
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            if progress is not None and (len(history) % 10 == 0):
                progress(min(len(history), total), total)
            # Convergence: relative improvement over the last `patience` steps, or an
            # (exact-distance) loss at round-off level.
            if value < 1e-20:
                break
            if value < best_recent * (1 - tol):
                best_recent = value
                since_improved = 0
            else:
                since_improved += 1
                if since_improved >= patience:
                    break
        return q, t

    restarts = max(1, int(restarts))
    history_all = []
    init_info = {}
    if q_init is None and init == "spectral":
        try:
            q_init, how = _spectral(i, j, k, transforms, d_hat, N, seed=seed,
                                    method=spectral_method)
            init_info["init"] = "spectral" if how == "virtual" else f"spectral ({how})"
            if np.any(np.abs(np.abs(transforms[:, 0]) - 1) > 1e-9):
                q_init, amb = resolve_ambiguity(q_init, i, j, k, transforms, d_hat, w,
                                                seed=seed)
                init_info["ambiguity"] = amb
        except (ValueError, np.linalg.LinAlgError) as err:   # not a group, degenerate
            init_info["init"] = f"random (spectral failed: {err})"
            q_init = None
    t_init = time.time()
    if q_init is not None:
        starts = [geometry.normalize(q_init)]
        restarts = 1
    else:
        starts = [geometry.normalize(rng.standard_normal((N, 4))) for _ in range(restarts)]
    total = n_steps + (restarts * restart_steps if restarts > 1 else 0)
    restart_losses = []
    if restarts > 1:
        candidates = []
        for q0 in starts:
            hist = []
            qr, _ = run(q0, restart_steps, 0, hist, total)
            restart_losses.append(_loss_and_gradient(qr, edges, loss, loss_scale, False)[0])
            candidates.append(qr)
            history_all.extend(hist)
        q = candidates[int(np.argmin(restart_losses))]
        offset = restart_steps
        remaining = max(0, n_steps - restart_steps)
    else:
        q, offset, remaining = starts[0], 0, n_steps
    hist = []
    q, steps_done = run(q, remaining, offset, hist, total) if remaining else (q, 0)
    history_all.extend(hist)
    value, _, abs_res = _loss_and_gradient(q, edges, loss, loss_scale, False)
    wsum_p = np.bincount(i, w, minlength=N) + np.bincount(j, w, minlength=N)
    res_p = (np.bincount(i, w * abs_res, minlength=N)
             + np.bincount(j, w * abs_res, minlength=N))
    with np.errstate(invalid="ignore", divide="ignore"):
        residual = res_p / wsum_p
    q = np.where(q[:, :1] < 0, -q, q)
    if progress is not None:
        progress(total, total)
    info = dict(loss=value, loss_history=np.array(history_all), residual=residual,
                n_steps=len(history_all), restart_losses=restart_losses,
                seconds=time.time() - t0, seconds_init=t_init - t0,
                seconds_optimize=time.time() - t_init, **init_info)
    return q, info


def recover_from_features(features, transforms, n_neighbors=32, n_random=16,
                          weighting="gaussian", weight_scale=1.0, distance_map=None,
                          seed=0, progress=None, search="auto", loss="cauchy",
                          loss_scale=0.3, **recover_kwargs):
    """Orientations from per-transform image embeddings: graph, weights, recovery.

    ``features (K, N, F)``: ``features[k]`` embeds every image after transform
    ``transforms[k]`` (``(K, 4)`` from ``image_transforms``; ``features[0]`` must be the
    identity). ``distance_map``: optional callable mapping feature angles (radians) to
    distance estimates (a calibration), applied before weighting. ``search``: the
    neighbour search of ``build_graph`` (``"auto"``, ``"exact"`` or ``"ivf"``). Other keyword
    arguments go to ``recover_orientations``. Returns ``(q (N, 4), info)``; ``info``
    also holds ``graph``.

    Defaults (measured on 5j0n, 1,650 test particles, learned distances): 32 neighbours,
    16 random pairs and the Cauchy loss (scale 0.3 rad) against false neighbours lowered
    the median error from 0.083 to 0.079 rad noiseless and from 0.44 to 0.33 rad at
    sigma^2 = 16, compared with 16 / 4 / L2.
    """
    graph = build_graph(features, n_neighbors=n_neighbors, n_random=n_random, seed=seed,
                        method=search)
    d_hat = graph.d_hat if distance_map is None else np.asarray(distance_map(graph.d_hat))
    w = edge_weights(d_hat, weighting, weight_scale)
    q, info = recover_orientations(graph.i, graph.j, d_hat=d_hat, weights=w,
                                   n_particles=graph.n_particles, k=graph.k,
                                   transforms=transforms, seed=seed, progress=progress,
                                   loss=loss, loss_scale=loss_scale, **recover_kwargs)
    info["graph"] = graph
    return q, info
