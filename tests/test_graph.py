"""The correlation graph against an independent dense implementation (np.corrcoef), the diffusion operator against its
dense formula, the cache, and bad input."""
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from igtcga.data import ExprData
from igtcga.graph import (GeneGraph, cached_correlation_graph, correlation_graph, diffusion_matrix, gene_graph,
                          graph_key, to_torch_sparse, unit_columns)


def dense_graph(X, threshold):
    "The original formulation (protocol §7): np.corrcoef, NaN -> 0, zero diagonal, keep |r| > threshold."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        R = np.corrcoef(np.asarray(X, dtype=np.float64), rowvar=False)
    R[np.isnan(R)] = 0
    np.fill_diagonal(R, 0)
    return R * (np.abs(R) > threshold)


def dense_diffusion(R):
    "Â = D^-1/2 (A⁺ + I) D^-1/2 written densely."
    A = np.maximum(R, 0) + np.eye(len(R))
    d = A.sum(axis=1)
    return A / np.sqrt(np.outer(d, d))


def blocky(n, n_blocks, block, seed, noise=0.8):
    rng = np.random.default_rng(seed)
    F = rng.normal(size=(n, n_blocks)).repeat(block, axis=1)
    X = F + noise * rng.normal(size=F.shape)
    X[:, ::7] *= -1  # some negative correlations
    return X


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.8])
@pytest.mark.parametrize("block_size", [1, 7, 1024])
def test_graph_equals_dense_reference(seed, threshold, block_size):
    X = blocky(60, 6, 5, seed)
    X = np.hstack([X, np.full((60, 1), 2.5), np.zeros((60, 1))])  # two zero-variance genes
    A = correlation_graph(X, threshold, block_size=block_size, device="cpu", quiet=True)
    R = dense_graph(X, threshold)
    assert isinstance(A, sp.csr_matrix) and A.shape == R.shape
    assert np.array_equal(A.toarray() != 0, R != 0), "edge sets differ"
    np.testing.assert_allclose(A.toarray(), R, atol=2e-6)
    assert (A != A.T).nnz == 0
    assert A.diagonal().sum() == 0
    assert A[-1].nnz == 0 and A[-2].nnz == 0
    assert not np.isnan(A.data).any()


def test_threshold_is_strict_at_the_edge():
    # columns 0 and 1 have r = 1/2 exactly; 0 and 2 have r = -1/2 exactly; 0 and 3 have r = 1
    X = np.array([[1, 1, -1, 2], [-1, 0, 0, -2], [0, -1, 1, 0], [0, 0, 0, 0]], dtype=np.float32)
    R = dense_graph(X, 0.0)
    assert R[0, 3] == pytest.approx(1.0)
    A = correlation_graph(X, 0.5, device="cpu").toarray()
    assert A[0, 1] == 0 and A[0, 2] == 0 and A[1, 3] == 0, "a correlation equal to the threshold is not kept"
    assert A[0, 3] == pytest.approx(1.0)
    below = correlation_graph(X, 0.5 - 1e-7, device="cpu").toarray()
    assert below[0, 1] == pytest.approx(0.5) and below[0, 2] == pytest.approx(-0.5)


def test_near_threshold_pairs_match_float64():
    # many correlations close to the threshold: the decisions must be those of the float64 reference
    rng = np.random.default_rng(5)
    n = 400
    base = rng.normal(size=(n, 1))
    X = base * np.linspace(0.95, 1.05, 60) * 0 + base + rng.normal(size=(n, 60)) * np.linspace(0.9, 1.1, 60)
    R = dense_graph(X, 0.0)
    off = R[np.triu_indices(60, 1)]
    threshold = float(np.median(np.abs(off)))  # half of the pairs on each side, many within 1e-3
    A = correlation_graph(X.astype(np.float32), threshold, device="cpu").toarray()
    Rt = dense_graph(X.astype(np.float32), threshold)
    assert np.array_equal(A != 0, Rt != 0)


def test_unit_columns_gram_is_correlation():
    X = blocky(50, 3, 4, 3)
    Z, const = unit_columns(X, dtype=np.float64, block_size=5)
    np.testing.assert_allclose(Z.T @ Z, np.corrcoef(X, rowvar=False), atol=1e-12)
    assert not const.any()


def test_diffusion_matrix_dense_formula():
    X = np.hstack([blocky(80, 4, 5, 7), np.ones((80, 1))])
    R = dense_graph(X, 0.4)
    A_hat = diffusion_matrix(correlation_graph(X, 0.4, device="cpu"), dtype=np.float64)
    np.testing.assert_allclose(A_hat.toarray(), dense_diffusion(R), atol=1e-6)
    np.testing.assert_allclose(A_hat.toarray(), A_hat.toarray().T)
    assert A_hat[-1, -1] == pytest.approx(1.0)  # zero-variance gene: only its self-loop
    # the diagonal of the input is ignored (corrcoef's diagonal of 1 gives the same operator)
    np.testing.assert_allclose(diffusion_matrix(R + np.eye(len(R)), dtype=np.float64).toarray(), A_hat.toarray(), atol=1e-6)


def test_diffusion_bad_input():
    with pytest.raises(ValueError, match="must be square"):
        diffusion_matrix(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="must be symmetric"):
        diffusion_matrix(np.array([[0, 0.8], [0.1, 0]]))
    with pytest.raises(ValueError, match="NaN"):
        diffusion_matrix(np.array([[0, np.nan], [np.nan, 0]]))


def test_correlation_graph_bad_input():
    X = blocky(20, 2, 3, 0)
    with pytest.raises(ValueError, match="threshold must be in"):
        correlation_graph(X, -0.1)
    with pytest.raises(ValueError, match="2-D"):
        correlation_graph(X[0])
    with pytest.raises(ValueError, match="at least 2 samples"):
        correlation_graph(X[:1])
    bad = X.copy(); bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        correlation_graph(bad)
    with pytest.raises(ValueError, match="more than 10 edges"):
        correlation_graph(X, 0.0, max_edges=10)


def test_torch_sparse_product_and_autograd():
    X = blocky(40, 3, 4, 1)
    A_hat = diffusion_matrix(correlation_graph(X, 0.3, device="cpu"), dtype=np.float64)
    for layout in ("csr", "coo"):
        T = to_torch_sparse(A_hat, dtype=torch.float64, layout=layout)
        x = torch.randn(5, A_hat.shape[0], dtype=torch.float64)
        np.testing.assert_allclose(torch.sparse.mm(T, x.T).T.numpy(), x.numpy() @ A_hat.toarray(), atol=1e-12)


def test_cache_reuses_and_keys(tmp_path):
    X = blocky(30, 3, 4, 2).astype(np.float32)
    A = cached_correlation_graph(X, 0.5, cache=tmp_path, device="cpu")
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and graph_key(X, 0.5) in files[0].name
    assert not list(tmp_path.glob(".*")), "no temporary file left behind"
    # a changed file proves the second call reads the cache instead of recomputing
    sp.save_npz(files[0], sp.csr_matrix(np.eye(X.shape[1], dtype=np.float32)))
    assert cached_correlation_graph(X, 0.5, cache=tmp_path).nnz == X.shape[1]
    assert cached_correlation_graph(X, 0.6, cache=tmp_path).nnz == correlation_graph(X, 0.6).nnz
    assert len(list(tmp_path.glob("*.npz"))) == 2


class Standardise:
    "A tiny local transform (fit on the training rows, affine per gene)."
    def fit(self, X):
        self.mean, self.std = X.mean(0), X.std(0) + 1e-12
        return self
    def transform(self, X): return ((X - self.mean) / self.std).astype(np.float32)


class Log:
    def fit(self, X): return self
    def transform(self, X): return np.log2(X + 1).astype(np.float32)


def test_gene_graph_uses_training_rows_and_transform(tmp_path):
    rng = np.random.default_rng(0)
    X = np.exp(blocky(100, 4, 5, 4))
    data = ExprData(X, rng.integers(0, 2, 100), ["a", "b"], [f"g{i}" for i in range(20)])
    train = np.arange(0, 100, 2)
    g = gene_graph(data, train, threshold=0.5, cache=tmp_path, device="cpu")
    assert isinstance(g, GeneGraph) and g.genes == data.genes
    np.testing.assert_allclose(g.adjacency.toarray(), dense_graph(data.X[train], 0.5), atol=2e-6)
    np.testing.assert_allclose(g.diffusion.toarray(), dense_diffusion(dense_graph(data.X[train], 0.5)), atol=1e-6)
    assert np.array_equal(g.degrees, (dense_graph(data.X[train], 0.5) != 0).sum(1))
    # a per-gene affine transform does not change the graph; a log does
    gs = gene_graph(data, train, transform=Standardise(), cache=tmp_path, device="cpu")
    assert np.array_equal(gs.adjacency.toarray() != 0, g.adjacency.toarray() != 0)
    gl = gene_graph(data, train, transform=Log(), cache=tmp_path, device="cpu")
    np.testing.assert_allclose(gl.adjacency.toarray(), dense_graph(np.log2(data.X[train] + 1), 0.5), atol=2e-6)

    class Split: pass
    s = Split(); s.train = train
    assert (gene_graph(data, s, cache=False, device="cpu").adjacency != g.adjacency).nnz == 0
    with pytest.raises(ValueError, match="training split is empty"):
        gene_graph(data, np.array([], dtype=np.int64), cache=False)
    with pytest.raises(ValueError, match="outside"):
        gene_graph(data, np.array([0, 100]), cache=False)


def test_gpu_code_path_thresholds_like_the_cpu_path():
    "The torch branch of the candidate search (used on CUDA) agrees with the NumPy branch, run here on CPU tensors."
    from igtcga.graph import _upper_candidates
    rng = np.random.default_rng(0)
    block = rng.uniform(-1, 1, size=(7, 19)).astype(np.float32)
    for low in (0.0, 0.3, 0.9):
        a = _upper_candidates(block, 5, low)
        b = _upper_candidates(torch.from_numpy(block), 5, low)
        for x, y in zip(a, b): np.testing.assert_array_equal(x, y)
        i, j, v = a
        assert np.all(j > i) and np.all(np.abs(v) > low)
        assert len(v) == sum(1 for r in range(7) for c in range(19) if c > r and abs(block[r, c]) > low)
