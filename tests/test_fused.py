"""The fused (numba) steps of charrnn.nn.fused against cells.py's readable NumPy steps: the same
loss, gradients and state, float64 to 1e-12 relative (only tanh differs: the C library's vs
NumPy's), float32 to float32 rounding; the backward steps and the flush of tiny δ bit for bit."""
import numpy as np
import pytest

from charrnn.nn import cells, fused
from charrnn.training.config import MATHS_FIELDS, TrainConfig
from charrnn.nn.model import RNNLM
from charrnn.nn.recompute import loss_and_grads_recompute

V, H, B, T = 7, 5, 3, 6
SETTINGS = [(1, 0.0, "full"), (2, 0.0, "regular:2"), (2, 0.4, "randomized:0.6"), (1, 0.4, "randomized:0.5")]
TOLERANCE = {"float64": 1e-12, "float32": 2e-5}  # max |fused − numpy| / max |numpy|, per array


def model(cell, num_layers, dropout, dtype, kernel):
    return RNNLM(V, H, dtype=dtype, seed=3, cell=cell, num_layers=num_layers, dropout=dropout, kernel=kernel)


def window(m, seed=0):
    rng = np.random.default_rng(seed)
    X, Y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    return X, Y, rng.standard_normal(m.state_shape(B)) * 0.5  # a carried state


def train_call(m, truncation, recompute=False):
    X, Y, state = window(m)
    rngs = {"rng": np.random.default_rng(5), "dropout_rng": np.random.default_rng(6)}
    if recompute:
        return loss_and_grads_recompute(m, X, Y, state, truncation, segment_steps=2, **rngs)
    return m.loss_and_grads(X, Y, state, truncation, **rngs)


def assert_close(fast, ref, tolerance):
    loss_f, grads_f, state_f = fast
    loss_r, grads_r, state_r = ref
    assert abs(loss_f - loss_r) <= tolerance * abs(loss_r)
    for name, value in {**grads_r, "state": state_r}.items():
        other = state_f if name == "state" else grads_f[name]
        assert np.max(np.abs(other - value)) <= tolerance * np.max(np.abs(value)), name


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cell", cells.CELLS)
@pytest.mark.parametrize("num_layers, dropout, truncation", SETTINGS)
def test_fused_equals_numpy_steps(cell, num_layers, dropout, truncation, dtype):
    results = [train_call(model(cell, num_layers, dropout, dtype, kernel), truncation) for kernel in ("fused", "numpy")]
    assert_close(*results, TOLERANCE[dtype])


@pytest.mark.parametrize("cell", cells.CELLS)
def test_fused_recompute_equals_numpy_store(cell):
    fast = train_call(model(cell, 2, 0.4, "float64", "fused"), "randomized:0.6", recompute=True)
    ref = train_call(model(cell, 2, 0.4, "float64", "numpy"), "randomized:0.6")
    assert_close(fast, ref, TOLERANCE["float64"])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cell", cells.CELLS)
def test_fused_backward_is_bit_identical(cell, dtype):
    """From the same forward buffers (NumPy's steps), the fused backward steps give the same bits:
    the same operations in the same order, prepare_backward's factors formed inside the step."""
    grads = {}
    for kernel in ("fused", "numpy"):
        m = model(cell, 2, 0.4, dtype, "numpy")
        X, Y, state = window(m)
        ws = m.workspace(B, T)
        m.forward_segment(X.T, m._check_state(state, B), ws, np.random.default_rng(6))
        ws.for_backward().carry.fill(0)
        m.kernel = kernel
        scales = [fused.CUT] + [np.full((B, 1), 2.0, m.dtype)] * (T - 1)
        grads[kernel] = (m.segment_grads(X.T, Y.T, scales, ws.carry, X.size, ws), ws.carry.copy())
    (loss_f, grads_f), carry_f = grads["fused"]
    (loss_r, grads_r), carry_r = grads["numpy"]
    assert loss_f == loss_r and np.array_equal(carry_f, carry_r)
    for name in grads_r:
        assert np.array_equal(grads_f[name], grads_r[name]), name


def test_flush_tiny_keeps_its_semantics():
    k = fused._kernels()
    smallest = np.float32(cells.TINY_DELTA["float32"])
    delta = np.array([[1e-30, -1e-30, 2e-19, -1.0, np.nan, np.inf, -np.inf, 0.0, -0.0, smallest]], np.float32)
    ref, fast = delta.copy(), delta.copy()
    cells.flush_tiny(ref, np.empty_like(ref))
    k.flush_tiny(fast, smallest)
    assert np.array_equal(ref, fast, equal_nan=True) and np.array_equal(np.signbit(ref), np.signbit(fast))


def test_tanh32_is_close_to_exact():
    k = fused._kernels()
    x = np.concatenate([np.linspace(-12, 12, 20001), [0.0, -0.0, 1e-30, 9.0, -9.0]]).astype(np.float32)
    out = x.reshape(1, -1).copy()
    k.rnn_forward(out, np.zeros_like(out), True)  # out <- tanh(out + 0)
    exact = np.tanh(x.astype(np.float64))
    ulps = np.abs(out[0] - exact) / np.spacing(np.abs(exact).astype(np.float32))
    assert ulps.max() <= 8 and ulps.mean() <= 1.5


def test_kernel_setting():
    assert "kernel" not in MATHS_FIELDS and TrainConfig(kernel="numpy").kernel == "numpy"
    with pytest.raises(ValueError):
        RNNLM(V, H, kernel="fast")
    assert fused.uses_fused("auto", "float32", "lstm") and fused.uses_fused("auto", "float32", "gru")
    assert not fused.uses_fused("auto", "float64", "lstm") and not fused.uses_fused("auto", "float32", "rnn")
    assert fused.uses_fused("fused", "float64", "rnn") and not fused.uses_fused("numpy", "float32", "lstm")
    info = fused.describe("auto", "float32", "lstm")
    assert info["fused"] and info["compile_s"] >= 0 and not fused.describe("auto", "float32", "rnn")["fused"]


def test_numba_failure_falls_back_to_numpy(monkeypatch, capsys):
    monkeypatch.setattr(fused, "_state", {"kernels": None, "failed": None, "warm": {}})
    monkeypatch.setattr(fused, "_run_kernels", lambda k, dtype, cell: 1 / 0)
    assert not fused.uses_fused("fused", "float32", "lstm")
    assert not fused.uses_fused("auto", "float32", "gru")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "using NumPy's steps" in lines[0]
    assert fused.describe("auto", "float32", "lstm")["fallback"].startswith("numba could not compile")
    m = RNNLM(V, H, cell="lstm", kernel="fused")
    X, Y, _ = window(m)
    assert np.isfinite(m.loss_and_grads(X, Y)[0])
