"Model plumbing and progress bars of `igtcga.core` beyond the notebook's lesson cells."
import importlib.util, io, time, warnings

import numpy as np
import pytest
import torch
from torch import nn

import igtcga.core as core
from igtcga.core import check_int, evaluating, forward, model_device_dtype, progress, set_seed, unit_rows


@pytest.mark.parametrize("value, low, high, message", [
    (1.0, None, None, "k must be an integer, got 1.0"),
    (False, 0, None, "k must be an integer >= 0, got False"),
    (0, 1, None, "k must be an integer >= 1, got 0"),
    (11, 1, 10, r"k must be an integer in \[1, 10\], got 11"),
    (11, None, 10, "k must be an integer <= 10, got 11"),
    ("3", None, None, "k must be an integer, got '3'"),
])
def test_check_int_refuses(value, low, high, message):
    with pytest.raises(ValueError, match=message): check_int(value, "k", low, high)


def test_check_int_accepts_bounds():
    assert check_int(np.uint8(10), "k", 1, 10) == 10 and check_int(1, "k", 1, 10) == 1
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 4294967295\]"): set_seed(2**32)


def test_evaluating_restores_flags_after_error_and_keeps_gradients():
    net = nn.Sequential(nn.Linear(3, 2), nn.Dropout(0.5), nn.Sequential(nn.BatchNorm1d(2)))
    net.train(); net[2][0].eval()
    before = [m.training for m in net.modules()]
    with pytest.raises(KeyError):
        with evaluating(net, "cpu"):
            assert not any(m.training for m in net.modules())
            x = torch.ones(4, 3, requires_grad=True)
            net(x).sum().backward()
            assert x.grad is not None
            raise KeyError("stop")
    assert [m.training for m in net.modules()] == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_evaluating_moves_and_restores_device():
    net = nn.Linear(3, 2)
    with evaluating(net, "cuda") as m:
        assert model_device_dtype(m)[0].type == "cuda"
        assert forward(m, torch.ones(5, 3)).device.type == "cpu"  # back on X's device
    assert model_device_dtype(net)[0].type == "cpu"


def test_model_device_dtype_reads_buffers_when_no_parameters():
    class OnlyBuffer(nn.Module):
        def __init__(self): super().__init__(); self.register_buffer("scale", torch.ones(2, dtype=torch.float64))
    assert model_device_dtype(OnlyBuffer()) == (torch.device("cpu"), torch.float64)


def test_forward_chunks_match_one_pass():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    net(torch.randn(32, 6))  # training step: running statistics move away from their start
    X = torch.randn(1001, 6)
    net.eval()
    with torch.no_grad(): whole = net(X)
    net.train()
    torch.testing.assert_close(forward(net, X, batch_size=100), whole)
    torch.testing.assert_close(forward(net, X, "softmax", batch_size=7), torch.softmax(whole, -1))
    assert net.training
    with pytest.raises(TypeError, match="torch.as_tensor"): forward(net, X.numpy())
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"): forward(net, X, batch_size=0)


def test_unit_rows_dtypes_and_errors():
    a = np.array([[3, 4], [0, 0]], dtype=np.float16)
    assert unit_rows(a).dtype == np.float64
    assert unit_rows(torch.ones(2, 2, dtype=torch.float32, requires_grad=True)).dtype == np.float32
    with pytest.raises(ValueError, match="values has 1 NaN or infinite"): unit_rows(np.array([[1.0, np.inf]]))
    with pytest.raises(ValueError, match="values must be numeric"): unit_rows(np.array([["a", "b"]]))


def test_progress_text_bar_delay_and_quiet(monkeypatch):
    monkeypatch.setattr(core, "_in_jupyter", lambda: False)
    out = io.StringIO()
    for _ in progress(range(3), quiet=False, file=out): pass
    assert out.getvalue() == ""  # under the default 1 s delay: nothing
    out = io.StringIO()
    for _ in progress(range(3), quiet=False, file=out, delay=0): pass
    assert "3/3" in out.getvalue()
    out = io.StringIO()
    for _ in progress(range(3), quiet=False, file=out, delay=0.05): time.sleep(0.05)
    assert "3/3" in out.getvalue()  # a loop longer than the delay gets its bar
    out = io.StringIO()
    for _ in progress(range(3), quiet=True, file=out, delay=0): pass
    assert out.getvalue() == ""
    monkeypatch.setenv("IGTCGA_PROGRESS", "0")
    assert progress(range(2)).disable


def test_progress_in_jupyter_without_ipywidgets_never_warns(monkeypatch):
    from tqdm.std import tqdm as text_bar
    monkeypatch.setattr(core, "_in_jupyter", lambda: True)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ipywidgets" else real(name, *a))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bar = progress(range(3), quiet=False, file=io.StringIO())
        assert type(bar) is text_bar and bar.mininterval == 1.0
        bar.close()
