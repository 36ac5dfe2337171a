"""Tests of `igtcga.simulation`: the fast exact sampler against an independent two-stage sampler written here
(per-gene means, variances, covariances, goodness of fit on the joint law), the structure and the validity rule,
determinism, the presets at paper size, parameter errors, the command line and the `.h5ad` round trip."""
import dataclasses
import itertools
import subprocess
import sys
from math import comb
from pathlib import Path

import numpy as np
import pytest
from scipy import sparse, stats

from igtcga.data import ExprData
from igtcga.simulation import (PRESETS, PathwayStructure, SimParams, class_prior, draw_structure, gene_probabilities,
                               multinomial_rows, sample_counts, sample_counts_two_stage, simulate, simulate_cli)


# ---------------------------------------------------------------- an independent reference, written for the tests
def two_stage(theta, beta, n_reads, rng):
    """The original's generative process, written plainly: for each sample, reads per pathway ~ Mult(N, theta), then for
    each pathway, its reads over genes ~ Mult(m_p, beta_p); gene counts are summed over pathways."""
    beta = np.asarray(beta, dtype=float)
    out = np.zeros((len(theta), beta.shape[1]), dtype=np.int64)
    for i, th in enumerate(theta):
        per_pathway = rng.multinomial(n_reads, th)
        for p, m in enumerate(per_pathway):
            if m: out[i] += rng.multinomial(m, beta[p])
    return out


def structure_of(beta, overexpressed=((0,),)):
    "A general (non-block) PathwayStructure from a dense pathways × genes matrix."
    return PathwayStructure(sparse.csr_array(np.asarray(beta, dtype=float)), np.array(overexpressed), block=False)


# three overlapping pathways over six genes, one gene (5) in no pathway
BETA = np.array([[0.5, 0.3, 0.2, 0.0, 0.0, 0.0],
                 [0.0, 0.4, 0.0, 0.4, 0.2, 0.0],
                 [0.1, 0.0, 0.0, 0.0, 0.9, 0.0]])
THETA = np.array([0.2, 0.5, 0.3])
Q = THETA @ BETA


def check_moments(counts, n_reads, q, z=5.0):
    "Means, variances and covariances of multinomial draws against N q, N q(1-q), -N q_i q_j, within z standard errors."
    n = len(counts)
    mean, cov = counts.mean(axis=0), np.cov(counts, rowvar=False)
    exp_cov = n_reads * (np.diag(q) - np.outer(q, q))
    se_mean = np.sqrt(np.diag(exp_cov) / n)
    assert np.all(np.abs(mean - n_reads * q) <= z * se_mean + 1e-12), (mean, n_reads * q)
    centred = counts - n_reads * q
    products = centred[:, :, None] * centred[:, None, :]
    se_cov = products.std(axis=0) / np.sqrt(n)  # sampling error of a covariance, from the draws' fourth moments
    assert np.all(np.abs(cov - exp_cov) <= z * se_cov + 1e-12), (cov, exp_cov)


def compositions(n_reads, n_genes):
    "Every vector of non-negative integers of length n_genes summing to n_reads."
    for cut in itertools.combinations(range(n_reads + n_genes - 1), n_genes - 1):
        edges = (-1,) + cut + (n_reads + n_genes - 1,)
        yield tuple(edges[i + 1] - edges[i] - 1 for i in range(n_genes))


def gof_pvalue(counts, n_reads, q):
    "Chi-square goodness of fit of whole count vectors to the exact Multinomial(n_reads, q) law (cells pooled to >= 5 expected)."
    support = q > 0
    outcomes = list(compositions(n_reads, int(support.sum())))
    assert len(outcomes) == comb(n_reads + support.sum() - 1, support.sum() - 1)
    index = {o: i for i, o in enumerate(outcomes)}
    assert (counts[:, ~support] == 0).all()
    observed = np.bincount([index[tuple(r)] for r in counts[:, support]], minlength=len(outcomes))
    expected = len(counts) * stats.multinomial.pmf(np.array(outcomes), n_reads, q[support] / q[support].sum())
    small = expected < 5
    obs = np.append(observed[~small], observed[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    return stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue


# ---------------------------------------------------------------- the exact sampler
def test_reference_two_stage_has_the_mixture_law():
    "The derivation checked on the plain two-stage sampler itself: its gene counts are Multinomial(N, theta @ beta)."
    counts = two_stage(np.tile(THETA, (20000, 1)), BETA, 40, np.random.default_rng(0))
    check_moments(counts, 40, Q)


@pytest.mark.parametrize("slack", [3.0, 0.0, 1.0])
def test_sample_counts_moments_match_two_stage(slack):
    "Means, variances and covariances of the fast sampler equal the two-stage ones (slack=0: half the rows fall back)."
    structure = structure_of(BETA)
    ours = sample_counts(np.tile(THETA, (20000, 1)), structure, 400, np.random.default_rng(1), slack=slack)
    assert ours.dtype == np.int32
    assert (ours.sum(axis=1) == 400).all()
    assert (ours[:, 5] == 0).all()  # a gene in no pathway never gets a read
    check_moments(ours.astype(np.int64), 400, Q)
    ref = two_stage(np.tile(THETA, (6000, 1)), BETA, 400, np.random.default_rng(2))
    # two-sample comparison of the means with the reference, per gene
    se = np.sqrt(ours.var(axis=0) / len(ours) + ref.var(axis=0) / len(ref))
    assert np.all(np.abs(ours.mean(axis=0) - ref.mean(axis=0)) <= 5 * se + 1e-12)


@pytest.mark.parametrize("n_reads, slack", [(6, 3.0), (6, 0.0), (30, 3.0), (30, 1.0)])
def test_sample_counts_goodness_of_fit(n_reads, slack):
    """Whole count vectors follow the exact multinomial law (chi-square on every outcome), for small N (pure categorical
    top-up), with Poisson draws (N=30: lambda > 0) and with the fall-back branch (slack=0)."""
    beta = BETA[:, [0, 1, 4]] / BETA[:, [0, 1, 4]].sum(axis=1, keepdims=True)
    q = THETA @ beta
    ours = sample_counts(np.tile(THETA, (8000, 1)), structure_of(beta), n_reads, np.random.default_rng(3), slack=slack)
    assert gof_pvalue(ours, n_reads, q) > 1e-3
    ref = two_stage(np.tile(THETA, (8000, 1)), beta, n_reads, np.random.default_rng(4))
    assert gof_pvalue(ref, n_reads, q) > 1e-3
    # and directly against the independent two-stage sampler: a contingency chi-square over pooled outcomes
    keys = {o: i for i, o in enumerate(compositions(n_reads, 3))}
    table = np.stack([np.bincount([keys[tuple(r)] for r in c], minlength=len(keys)) for c in (ours, ref)])
    table = table[:, table.sum(axis=0) >= 10]
    assert stats.chi2_contingency(table).pvalue > 1e-3


def test_goodness_of_fit_has_power():
    "The chi-square test above rejects a slightly wrong law, so passing it means something."
    q = THETA @ (BETA[:, [0, 1, 4]] / BETA[:, [0, 1, 4]].sum(axis=1, keepdims=True))
    wrong = q * np.array([1.06, 1.0, 0.94]); wrong /= wrong.sum()
    draws = np.random.default_rng(5).multinomial(30, wrong, size=8000)
    assert gof_pvalue(draws, 30, q) < 1e-3


def test_multinomial_rows_large_n_and_zero_categories():
    "Rows with very different probability vectors, a zero category and a large N (Poisson path) keep the right moments."
    rng = np.random.default_rng(6)
    probs = np.array([[0.7, 0.0, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]])
    draws = multinomial_rows(100_000, np.repeat(probs, 5000, axis=0), rng)
    assert (draws.sum(axis=1) == 100_000).all()
    assert (draws[:5000, 1] == 0).all()
    check_moments(draws[:5000], 100_000, probs[0])
    check_moments(draws[5000:], 100_000, probs[1])
    assert multinomial_rows(0, probs, rng).sum() == 0


def test_multinomial_rows_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="non-negative"): multinomial_rows(5, [[0.5, -0.5, 1.0]], rng)
    with pytest.raises(ValueError, match="sum to 0"): multinomial_rows(5, [[0.5, 0.5], [0.0, 0.0]], rng)
    with pytest.raises(ValueError, match="2-D"): multinomial_rows(5, [0.5, 0.5], rng)
    with pytest.raises(ValueError, match="theta must be samples"): gene_probabilities(np.ones((2, 4)), structure_of(BETA))
    with pytest.raises(ValueError, match="theta rows must be finite"): sample_counts([[0.5, np.nan, 0.5]], structure_of(BETA), 5, rng)
    with pytest.raises(ValueError, match="n_reads must be an integer"): sample_counts([THETA], structure_of(BETA), 5.5, rng)


def test_module_reference_sampler_and_block_probabilities():
    "The module's own two-stage reference and the block-indexed q agree with the plain formulas."
    params = SimParams("t", n_generated=2, n_genes=12, n_pathways=4, genes_per_pathway=3, n_overexpressed=1, n_samples=4)
    structure = draw_structure(params, seed=3)
    assert structure.block
    theta = np.random.default_rng(0).dirichlet(np.ones(4), size=5)
    np.testing.assert_allclose(gene_probabilities(theta, structure), theta @ structure.beta.toarray(), rtol=1e-14)
    counts = sample_counts_two_stage(np.tile(theta[0], (20000, 1)), structure, 60, np.random.RandomState(0))
    check_moments(counts, 60, theta[0] @ structure.beta.toarray())


# ---------------------------------------------------------------- the whole generative process
def test_simulate_matches_plain_generative_process():
    """Per-class gene means and variances of `simulate` equal those of the plain process (Dirichlet theta per sample,
    then the two-stage reads) on the same structure, read back from the stored metadata."""
    params = SimParams("small", n_generated=2, n_genes=12, n_pathways=6, structure="random", genes_per_pathway=3,
                       n_overexpressed=2, n_reads=300, n_samples=6000, alpha=2.0, alpha_overexpressed=6.0)
    data = simulate(params, seed=11, quiet=True)
    sim = data.meta["simulation"]
    beta = sparse.csr_array((sim["beta_data"], sim["beta_indices"], sim["beta_indptr"]), shape=(6, 12)).toarray()
    counts = data.X * (300 / 1e6)
    np.testing.assert_allclose(counts, np.rint(counts), atol=1e-3)  # X is exactly reads per million
    rng = np.random.default_rng(12)
    prior = np.full((2, 6), 2.0); prior[0, [0, 1]] = 6.0; prior[1, [2, 3]] = 6.0
    for c in range(2):
        theta = rng.dirichlet(prior[c], size=3000)
        ref = two_stage(theta, beta, 300, rng).astype(float)
        ours = counts[data.y == c]
        se = np.sqrt(ours.var(axis=0) / len(ours) + ref.var(axis=0) / len(ref))
        assert np.all(np.abs(ours.mean(axis=0) - ref.mean(axis=0)) <= 5 * se + 1e-9), c
        expressed = ref.var(axis=0) > 0
        ratio = ours.var(axis=0)[expressed] / ref.var(axis=0)[expressed]
        assert np.all(np.abs(np.log(ratio)) < 0.25), ratio  # 3000 vs 3000 overdispersed draws: sd of log ratio ≈ 0.06
        np.testing.assert_array_equal(ours.var(axis=0) == 0, ~expressed)


def test_determinism():
    a = simulate("SIMU1", n_samples=300, seed=7, quiet=True, n_jobs=1)
    b = simulate("SIMU1", n_samples=300, seed=7, quiet=True, n_jobs=3)
    assert a.X.tobytes() == b.X.tobytes()
    assert a.y.tobytes() == b.y.tobytes() and a.samples == b.samples
    assert all(np.array_equal(a.truth[k], b.truth[k]) for k in a.truth)
    c = simulate("SIMU1", n_samples=300, seed=8, quiet=True)
    assert not np.array_equal(a.X, c.X)
    s7, s8 = draw_structure("SIMU2", seed=7), draw_structure("SIMU2", seed=8)
    assert np.array_equal(s7.beta.indices, draw_structure("SIMU2", seed=7).beta.indices)
    assert not np.array_equal(s7.beta.indptr, s8.beta.indptr)
    # an unrelated draw from the global generators in between changes nothing
    np.random.seed(0); np.random.rand(10)
    assert simulate("SIMU1", n_samples=300, seed=7, quiet=True).X.tobytes() == a.X.tobytes()


def test_noise_option():
    "No noise by default (X * N / 1e6 are integer counts); noise=1e-4 adds U(0, 1e-4) on top of the same counts."
    exact = simulate("SIMU1", n_samples=33, seed=1, quiet=True).X.astype(np.float64)
    noisy = simulate(dataclasses.replace(PRESETS["SIMU1"], noise=1e-4), n_samples=33, seed=1, quiet=True).X.astype(np.float64)
    np.testing.assert_allclose(exact * 1.5, np.rint(exact * 1.5), atol=1e-3)
    diff, ulp = noisy - exact, np.spacing(exact.astype(np.float32)).astype(np.float64)  # X is float32
    assert (diff >= -ulp).all() and (diff <= 1e-4 + ulp).all()
    assert 0.4e-4 < diff.mean() < 0.6e-4


# ---------------------------------------------------------------- the structure and the validity rule
def test_structure_statistics():
    "Block weights are Dirichlet(5 x 10); random supports are Binomial(G, 10/G) sizes conditioned on >= 1."
    s1 = draw_structure("SIMU1", seed=0)
    w = s1.beta.data.reshape(1500, 10)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-12)
    expected_var = 0.1 * 0.9 / (10 * 5 + 1)
    assert abs(w.var() / expected_var - 1) < 0.05
    assert np.array_equal(s1.beta.indices, np.arange(15000))
    s2 = draw_structure("SIMU2", seed=0)
    sizes = np.diff(s2.beta.indptr)
    assert sizes.min() >= 1
    assert abs(sizes.mean() - 10) < 5 * np.sqrt(10 / 3000)
    never = s2.never_expressed()
    assert abs(never.size - 15000 * (1 - 1 / 1500) ** 3000) < 5 * 42
    assert np.array_equal(never, np.setdiff1d(np.arange(15000), s2.beta.indices))


def test_validity_rule_redraws_only_failing_pathways():
    "protocol §3.3 / B1: failing over-expressed pathways are redrawn until they pass; other pathways keep their first draw."
    base = SimParams("v", n_generated=2, n_genes=60, n_pathways=12, genes_per_pathway=5, n_overexpressed=3, n_samples=4)
    for structure_kind in ("block", "random"):
        strict = dataclasses.replace(base, structure=structure_kind, min_prop=0.15)
        loose = dataclasses.replace(strict, min_prop=0.0)
        s, s0 = draw_structure(strict, seed=2), draw_structure(loose, seed=2)
        assert s.n_redrawn > 0 and s0.n_redrawn == 0
        for p in range(6):  # over-expressed
            assert s.beta[[p]].data.min() >= 0.15
        for p in range(6, 12):  # ordinary pathways are untouched
            assert np.array_equal(s.beta[[p]].toarray(), s0.beta[[p]].toarray())
        np.testing.assert_allclose(s.beta.sum(axis=1), 1.0)


def test_truth_is_the_union_of_overexpressed_supports():
    s = draw_structure("SIMU2", seed=4)
    for c in (0, 17, 32):
        genes = set()
        for p in range(37 * c, 37 * c + 37): genes |= set(s.beta.indices[s.beta.indptr[p]:s.beta.indptr[p + 1]].tolist())
        assert s.truth()[c].tolist() == sorted(genes)
    sizes = [len(v) for v in s.truth().values()]
    assert abs(np.mean(sizes) - 366) < 5 * 19 / np.sqrt(33)  # 37 supports of ~10 genes, a few shared (protocol §3.2)


# ---------------------------------------------------------------- presets at paper size
@pytest.mark.slow
@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_at_paper_size(name):
    p = PRESETS[name]
    data = simulate(name, seed=0, quiet=True)
    assert data.X.shape == (p.n_samples, p.n_genes) and data.X.dtype == np.float32
    n_gen = {"SIMU1": 33, "SIMU2": 33, "SimuA": 2, "SimuB": 4, "SimuC": 6}[name]
    per_gen = {"SIMU1": 300, "SIMU2": 300, "SimuA": 600, "SimuB": 300, "SimuC": 200}[name]
    generated = data.subclass if data.subclass is not None else data.y
    assert np.bincount(generated).tolist() == [per_gen] * n_gen
    assert np.all(np.diff(generated) >= 0)  # ordered by generated class
    if name in ("SimuB", "SimuC"):
        assert data.classes == ["C0", "C1"] and len(data.subclasses) == n_gen
        assert np.array_equal(data.y, (data.subclass == n_gen - 1).astype(int))  # protocol §3.2: last subclass -> class 1
        assert data.class_counts() == {"C0": per_gen * (n_gen - 1), "C1": per_gen}
    else:
        assert data.subclass is None and len(data.classes) == n_gen
    assert sorted(data.truth) == list(range(n_gen))
    if p.structure == "block":
        size = {"SIMU1": 370}.get(name, 5000)
        assert all(len(v) == size for v in data.truth.values())
        assert len(np.unique(np.concatenate(list(data.truth.values())))) == size * n_gen  # disjoint
    row_sums = data.X.sum(axis=1, dtype=np.float64)
    np.testing.assert_allclose(row_sums, 1e6, rtol=1e-5)
    assert data.X.min() >= 0
    sim = data.meta["simulation"]
    assert sim["preset"] == name and sim["seed"] == 0 and sim["n_reads"] == 1_500_000
    assert sim["alpha"] == 4.0 and sim["alpha_overexpressed"] == 8.0 and sim["eta"] == 5.0 and sim["min_prop"] == 0.01
    never = sim["never_expressed_genes"]
    assert np.array_equal(never, np.flatnonzero(data.X.max(axis=0) == 0))
    if name == "SIMU2": assert abs(never.size - 2029) < 5 * 42
    else: assert never.size == 0


# ---------------------------------------------------------------- parameters
@pytest.mark.parametrize("kwargs, message", [
    (dict(n_genes=15001), r"1500 \* 10 = 15000 != n_genes = 15001"),
    (dict(n_pathways=1400), r"n_genes == n_pathways \* genes_per_pathway"),
    (dict(n_overexpressed=46), "only n_pathways = 1500 exist"),
    (dict(alpha=0), "alpha must be a finite number > 0"),
    (dict(alpha_overexpressed=-8), "alpha_overexpressed must be a finite number > 0"),
    (dict(eta=float("nan")), "eta must be a finite number > 0"),
    (dict(structure="overlapping"), "structure must be 'block'"),
    (dict(structure="random", genes_per_pathway=15000), "genes_per_pathway < n_genes"),
    (dict(min_prop=0.1), r"use min_prop < 0.1"),
    (dict(n_generated=1, n_samples=10), "n_generated must be an integer >= 2, got 1"),
    (dict(n_samples=20), "n_samples must be an integer >= 33, got 20"),
    (dict(n_reads=2**31), r"n_reads must be an integer in \[1, 2147483647\], got 2147483648"),
    (dict(n_reads=1.5e6), "n_reads must be an integer"),
    (dict(proportions=(1, 2)), "proportions has 2 entries for 33 generated classes"),
    (dict(n_generated=3, n_pathways=1500, regroup=(0, 1)), "regroup has 2 entries for 3"),
    (dict(n_generated=3, regroup=(0, 2, 2)), "regroup must name model classes 0..K-1"),
    (dict(noise=-1.0), "noise must be a finite number >= 0"),
])
def test_simparams_errors(kwargs, message):
    with pytest.raises(ValueError, match=message): SimParams(**kwargs)


def test_simulate_errors_and_sizes():
    with pytest.raises(KeyError, match="unknown preset 'SIMU9'"): simulate("SIMU9")
    with pytest.raises(TypeError, match="preset name or a SimParams"): simulate(3)
    with pytest.raises(ValueError, match="n_samples must be an integer >= 2, got 1"): simulate("SimuA", n_samples=1)
    with pytest.raises(ValueError, match="seed must be"): simulate("SimuA", n_samples=4, seed=-1)
    p = SimParams("p", n_generated=3, n_genes=30, n_pathways=6, genes_per_pathway=5, n_overexpressed=2, n_samples=9,
                  proportions=(1, 1, 2))
    assert p.samples_per_class(10).tolist() == [3, 2, 5]  # floors 2, 2, 5; the remainder goes to the largest fraction
    assert p.samples_per_class(8).tolist() == [2, 2, 4]
    with pytest.raises(ValueError, match="empty"): dataclasses.replace(p, proportions=(1, 1, 100)).samples_per_class(10)
    assert simulate(p, n_samples=10).class_counts() == dict(zip(["C0", "C1", "C2"], p.samples_per_class(10).tolist()))
    assert simulate("simua", n_samples=4).classes == ["C0", "C1"]  # preset names are case-insensitive
    assert class_prior("SimuC").shape == (6, 5000)


# ---------------------------------------------------------------- files and the command line
def test_h5ad_round_trip_keeps_truth_subclass_and_structure(tmp_path):
    data = simulate("SimuC", n_samples=60, seed=2, quiet=True)
    back = ExprData.read(data.write(tmp_path / "simuc.h5ad"))
    assert back.X.tobytes() == data.X.tobytes()
    assert np.array_equal(back.y, data.y) and np.array_equal(back.subclass, data.subclass)
    assert back.subclasses == data.subclasses == ["C0.0", "C0.1", "C0.2", "C0.3", "C0.4", "C1.0"]
    assert back.truth.keys() == data.truth.keys()
    assert all(np.array_equal(back.truth[k], data.truth[k]) for k in data.truth)
    sim = back.meta["simulation"]
    assert sim["preset"] == "SimuC" and int(sim["seed"]) == 2 and int(sim["n_samples"]) == 60
    assert np.array_equal(sim["regroup"], [0, 0, 0, 0, 0, 1])
    rebuilt = PathwayStructure.from_meta(sim)
    original = draw_structure("SimuC", seed=2)
    assert (rebuilt.beta != original.beta).nnz == 0
    assert np.array_equal(rebuilt.overexpressed, original.overexpressed)


def test_cli_in_process_and_as_console_script(tmp_path):
    out = tmp_path / "a.h5ad"
    simulate_cli("SIMU1", n_samples=66, seed=3, out=str(out), quiet=True)
    expected = simulate("SIMU1", n_samples=66, seed=3, quiet=True)
    assert ExprData.read(out).X.tobytes() == expected.X.tobytes()
    script = Path(sys.executable).parent / "igtcga-simulate"  # the installed console script, else the same wrapper
    if not script.exists():
        script = tmp_path / "igtcga_simulate.py"
        script.write_text("import sys\nfrom igtcga.simulation import simulate_cli\nif __name__ == '__main__': sys.exit(simulate_cli())\n")
    script = [sys.executable, str(script)]
    out2 = tmp_path / "b.h5ad"
    run = subprocess.run(script + ["SimuB", "--n-samples", "8", "--seed", "4", "--out", str(out2), "--quiet"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    back = ExprData.read(out2)
    assert back.shape == (8, 50000) and back.subclasses == ["C0.0", "C0.1", "C0.2", "C1.0"]
    assert int(back.meta["simulation"]["seed"]) == 4
    bad = subprocess.run(script + ["SIMU7", "--out", str(tmp_path / "c.h5ad")], capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown preset 'SIMU7'" in bad.stderr
    assert simulate_cli("SIMU1", n_samples=33, out=str(tmp_path / "x.csv")) == 2  # one line on stderr, exit code 2
    with pytest.raises(ValueError, match="must end in .h5ad"): simulate_cli("SIMU1", n_samples=33, out=str(tmp_path / "x.csv"), debug=True)
