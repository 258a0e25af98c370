"""The graph of orientation recovery: image-side transforms, edges between particles.

Transforms: the 8 image-plane transforms exact on the pixel grid (``image_transforms``;
the dihedral group D4 acting on the detector, see ``recovery.py``). Edges: nearest
neighbours in feature space (exact for small sets, an inverted file over spherical
k-means cells, ``ivf_neighbors``, above a few thousand particles) plus random pairs,
under every transform (``build_graph``), and their weights (``edge_weights``).
"""
import numpy as np

from . import geometry

__all__ = [
    "Graph", "image_transforms", "build_graph", "edge_weights", "transform_table",
    "ivf_neighbors", "spherical_kmeans",
]


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
