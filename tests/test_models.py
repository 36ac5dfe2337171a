"""Models: architectures per protocol §5.1, the diffusion models against a dense X·Â reference, the first-layer interface
used by the attribution code, autograd through the sparse product, device and dtype moves."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

from igtcga.models import LR, MLP, DiffuseLR, DiffuseMLP, Diffusion, GeneModel, build_model


def random_operator(g, seed, symmetric=True, density=0.2):
    M = sp.random(g, g, density=density, random_state=seed, dtype=np.float64)
    if symmetric: M = M + M.T
    M = (M + sp.identity(g)).tocsr()
    return M.astype(np.float32).astype(np.float64)  # values exactly representable in float32


def dense_forward(model, x, A):
    "Independent dense reference: x·Â, then the layers written out with the model's own parameters."
    h = x @ A
    if isinstance(model, LR):
        return h @ model.fc.weight.T + model.fc.bias
    bn = model.bn
    u = h @ model.fc1.weight.T + model.fc1.bias
    u = (u - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    return torch.relu(u) @ model.fc2.weight.T + model.fc2.bias


def test_architectures_match_the_protocol():
    lr, mlp = LR(100, 7), MLP(100, 7)
    assert [type(m) for m in lr.children()] == [nn.Dropout, nn.Linear]
    assert lr.dropout.p == 0.2 and (lr.fc.in_features, lr.fc.out_features) == (100, 7)
    assert [type(m) for m in mlp.children()] == [nn.Linear, nn.BatchNorm1d, nn.Linear]
    assert (mlp.fc1.out_features, mlp.bn.num_features, mlp.fc2.out_features) == (20, 20, 7)
    assert MLP(100, 7, n_hidden=40).fc1.out_features == 40
    for m in (lr, mlp):
        assert isinstance(m, GeneModel) and (m.n_genes, m.n_classes) == (100, 7)
        assert m(torch.randn(4, 100)).shape == (4, 7)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("kind", ["LR", "MLP"])
def test_diffuse_models_equal_dense_reference(kind, symmetric):
    g, c = 30, 4
    A = random_operator(g, 3, symmetric)
    torch.manual_seed(0)
    model = (DiffuseLR(A, c) if kind == "LR" else DiffuseMLP(A, c, n_hidden=6)).double()
    x = torch.randn(16, g, dtype=torch.float64)
    model.train(); model(x)  # non-trivial BatchNorm running statistics
    model.eval()
    At = torch.from_numpy(A.toarray())
    with torch.no_grad():
        torch.testing.assert_close(model(x), dense_forward(model, x, At), rtol=0, atol=1e-12)
        # (x Â) Wᵀ = x (W Âᵀ)ᵀ: the effective weight is W Âᵀ (W Â for the symmetric operators of igtcga's graphs)
        torch.testing.assert_close(model.first_linear_weight(), model.first_linear.weight @ At.T, rtol=0, atol=1e-12)
        h = x @ model.first_linear_weight().T + model.first_linear.bias
        torch.testing.assert_close(model.head(h), model(x), rtol=0, atol=1e-12)


def test_diffuse_lr_keeps_dropout_after_diffusion():
    A = random_operator(20, 1)
    model = DiffuseLR(A, 3).double().train()
    seen = {}
    def record(module, inputs, output): seen.update(inp=inputs[0].detach().clone(), out=output.detach().clone())
    model.dropout.register_forward_hook(record)
    x = torch.randn(64, 20, dtype=torch.float64)
    out = model(x)
    assert model.dropout.p == 0.2
    torch.testing.assert_close(seen["inp"], x @ torch.from_numpy(A.toarray()), rtol=0, atol=1e-12)  # dropout sees x·Â
    dropped = (seen["out"] == 0) & (seen["inp"] != 0)
    assert 0.1 < dropped.double().mean() < 0.3
    torch.testing.assert_close(seen["out"][~dropped], seen["inp"][~dropped] / 0.8)
    torch.testing.assert_close(out, seen["out"] @ model.fc.weight.T + model.fc.bias)


@pytest.mark.parametrize("symmetric", [True, False])
def test_input_gradients_through_diffusion(symmetric):
    A = random_operator(15, 7, symmetric)
    d = Diffusion(A, dtype=torch.float64)
    x = torch.randn(3, 15, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(d, (x,))
    model = DiffuseMLP(A, 3).double().eval()
    model(x)[:, 1].sum().backward()
    xr = x.detach().clone().requires_grad_()
    dense_forward(model, xr, torch.from_numpy(A.toarray()))[:, 1].sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=0, atol=1e-12)


def test_gradient_of_lr_logit_is_effective_weight_row():
    A = random_operator(12, 2)
    for model in (LR(12, 3), DiffuseLR(A, 3)):
        model = model.double().eval()
        x = torch.randn(1, 12, dtype=torch.float64, requires_grad=True)
        model(x)[0, 2].backward()
        torch.testing.assert_close(x.grad[0], model.first_linear_weight()[2].detach())


def test_diffusion_buffer_moves_and_is_not_trained():
    A = random_operator(10, 4)
    model = DiffuseLR(A, 2)
    assert all(p.shape != (10, 10) for p in model.parameters()), "Â must not be a trainable parameter"
    assert "diffusion.op_t" not in model.state_dict()
    assert model.diffusion.op_t.layout == torch.sparse_csr
    m64 = model.double()
    assert m64.diffusion.op_t.dtype == torch.float64
    if torch.cuda.is_available():
        mc = model.to("cuda")
        assert mc.diffusion.op_t.device.type == "cuda"
        assert mc(torch.randn(2, 10, dtype=torch.float64, device="cuda")).device.type == "cuda"


def test_build_model_roundtrip():
    A = random_operator(10, 5)
    for model in (LR(10, 3), MLP(10, 3, n_hidden=5), DiffuseLR(A, 3), DiffuseMLP(A, 3, n_hidden=4)):
        again = build_model(type(model).__name__, **model.init_args())
        again.load_state_dict(model.state_dict())
        model.eval(); again.eval()
        x = torch.randn(4, 10)
        with torch.no_grad(): torch.testing.assert_close(again(x), model(x))
    np.testing.assert_allclose(DiffuseLR(A, 3).init_args()["diffusion"].toarray(), A.toarray(), atol=1e-7)


def test_reset_parameters_follows_the_seed():
    def params(seed):
        torch.manual_seed(seed)
        m = MLP(30, 3).reset_parameters()
        return torch.cat([p.flatten() for p in m.parameters()])
    assert torch.equal(params(1), params(1)) and not torch.equal(params(1), params(2))


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_genes must be an integer >= 1, got 0"):
        LR(0, 3)
    with pytest.raises(ValueError, match="n_classes must be at least 2"):
        MLP(10, 1)
    with pytest.raises(ValueError, match="n_hidden must be an integer >= 1, got 0"):
        MLP(10, 3, n_hidden=0)
    with pytest.raises(ValueError, match="must be square"):
        DiffuseLR(np.ones((3, 4)), 2)
    with pytest.raises(ValueError, match="NaN"):
        DiffuseLR(np.array([[1.0, np.nan], [np.nan, 1.0]]), 2)
    with pytest.raises(ValueError, match=r"expected a batch of shape \(n, 5\)"):
        DiffuseLR(np.eye(5), 2)(torch.randn(3, 4))
    with pytest.raises(ValueError, match="unknown model"):
        build_model("GCN", n_genes=3)
