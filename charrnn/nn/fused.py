"""The fast path of a layer's time loop: per step one BLAS product (NumPy's matmul, as the
reference) and one compiled pass over the gate block (kernels.py) instead of cells.py's NumPy
pass per operation. cells.py's forward_step/backward_step stay the reference that the docs
explain and tests/test_fused.py holds this path to.

The choice (RNNLM.kernel, TrainConfig.kernel, `charrnn train --kernel`):

    numpy   cells.py's steps.
    fused   the compiled steps (numba); NumPy with one line on stderr when numba is missing or
            its compilation fails.
    auto    fused for the gated cells (gru, lstm) in float32 where numba works, else numpy
            (the default). In float64 the C library's scalar tanh is slower than NumPy's
            vectorised one, so float64 gains nothing (float32 uses kernels.tanh32); the rnn's
            step has two elementwise operations, and fusing them measured no faster, so the
            rnn keeps NumPy's steps and a process training it never loads numba.

What changes in the numbers: only tanh (kernels.py). The backward steps, the flush of tiny δ and
every product are the reference's operations in the reference's order, so in float64 the fused
path differs from the reference only through tanh's last bit, and a backward pass from the
same forward buffers is bit-identical (tests/test_fused.py checks both).

Compilation: numba compiles each kernel per dtype on first use and caches the machine code
next to kernels.py (cache=True), so later processes load it; `warm_up` does that for one cell's
kernels and returns the seconds it took, which a run reports (Run.start_info).
"""
import sys
import time

import numpy as np

from charrnn.nn.truncation import CUT, KEEP

KERNELS = ("auto", "numpy", "fused")
AUTO_CELLS = ("gru", "lstm")  # the cells "auto" fuses (in float32)
_state = {"kernels": None, "failed": None, "warm": {}}


def check_kernel(kernel) -> str:
    """kernel if it is one of KERNELS, else ValueError."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r} (choose from {', '.join(KERNELS)})")
    return kernel


def _kernels():
    """The kernels module, or None (with one line on stderr, once) where numba cannot load."""
    if _state["kernels"] is None and _state["failed"] is None:
        try:
            from charrnn.nn import kernels
            _state["kernels"] = kernels
        except Exception as err:  # numba missing, or an llvmlite that does not load
            _fail(f"numba is not available ({type(err).__name__}: {err})")
    return _state["kernels"]


def _fail(reason) -> None:
    _state["failed"] = reason
    print(f"charrnn: the fused kernels are off, {reason}; using NumPy's steps", file=sys.stderr)


def uses_fused(kernel, dtype, cell) -> bool:
    """Whether a model of this cell and dtype with this kernel setting runs the compiled steps."""
    if kernel == "numpy" or (kernel == "auto" and (np.dtype(dtype) != np.float32 or cell not in AUTO_CELLS)):
        return False
    return _kernels() is not None and warm_up(dtype, cell) is not None


def warm_up(dtype, cell):
    """Compile (or load from numba's cache) the cell's kernels for dtype -> the seconds it took,
    or None when compilation fails (then the fused path is off, with one line on stderr)."""
    key = (np.dtype(dtype).name, cell)
    if key in _state["warm"] or _state["failed"]:
        return _state["warm"].get(key)
    k, started = _kernels(), time.perf_counter()
    try:
        _run_kernels(k, np.dtype(dtype), cell)
    except Exception as err:
        _fail(f"numba could not compile them ({type(err).__name__}: {err})")
        return None
    _state["warm"][key] = seconds = time.perf_counter() - started
    return seconds


def _run_kernels(k, dtype, cell) -> None:
    """One call of each kernel of the cell on arrays of one step, batch 1, H = 1."""
    z = lambda *shape: np.zeros(shape, dtype)  # noqa: E731
    if cell == "rnn":
        k.rnn_forward(z(1, 1), z(1, 1), True)
        k.rnn_backward(0, z(1, 1, 1), z(1, 1), z(2, 1, 1), True)
    elif cell == "gru":
        k.gru_forward(0, z(1, 1, 3), z(1, 3), z(1, 1, 1), z(2, 1, 1), z(1))
        k.gru_backward(0, z(1, 1, 1), z(1, 1), z(1, 1, 3), z(1, 1, 1), z(2, 1, 1), z(1, 1, 3), z(1, 1))
    else:
        k.lstm_forward(0, z(1, 1, 4), z(1, 4), z(2, 1, 1), z(1, 1, 1), z(2, 1, 1))
        k.lstm_backward(0, z(1, 1, 1), z(1, 1), z(1, 1), z(1, 1, 4), z(2, 1, 1), z(1, 1, 1), z(1, 1, 4), True)
    k.flush_tiny(z(1, 1, 4), dtype.type(1))


def describe(kernel, dtype, cell) -> dict:
    """What a run records about its kernel: the setting, the path taken, and for the fused path
    numba's version and the seconds of compiling or loading the cell's kernels."""
    info = {"kernel": kernel, "fused": uses_fused(kernel, dtype, cell)}
    if info["fused"]:
        import numba
        info.update(numba=numba.__version__, compile_s=round(_state["warm"][(np.dtype(dtype).name, cell)], 3))
    elif _state["failed"] and kernel != "numpy":
        info["fallback"] = _state["failed"]
    return info


def forward_steps(cell, layer, stop, start=0) -> None:
    """Forward steps start..stop−1 of one layer (model._run_forward's loop: 0..T−1): per step the
    product h_{t−1} W_hh into tmp, as the cell's forward_step, then the cell's kernel."""
    k, name = _state["kernels"], type(cell).__name__
    hs, tmp, W_hh = layer.hs, layer.tmp, layer.W_hh
    if name == "RNNCell":
        for t in range(start, stop):
            np.matmul(hs[t], W_hh, out=tmp)
            k.rnn_forward(hs[t + 1], tmp, cell.tanh)
    elif name == "GRUCell":
        A, aux, b_hn = layer.A, layer.aux, layer.b_hn
        for t in range(start, stop):
            np.matmul(hs[t], W_hh, out=tmp)
            k.gru_forward(t, A, tmp, aux, hs, b_hn)
    else:
        A, aux, cs = layer.A, layer.aux, layer.cs
        for t in range(start, stop):
            np.matmul(hs[t], W_hh, out=tmp)
            k.lstm_forward(t, A, tmp, cs, aux, hs)


def step_functions(model) -> tuple:
    """For sample.stepper, which runs forward steps one at a time: (recur, [forward_step per
    layer]) with the signatures of RNNCell.recur and the cells' forward_step, the fused ones
    where the model's kernel setting runs them, so that a sample follows model.step exactly."""
    cells = model.cells
    if not uses_fused(model.kernel, model.dtype, model.cell):
        return cells[0].recur if model.cell == "rnn" else None, [cell.forward_step for cell in cells]
    k = _state["kernels"]

    def recur(a, h_prev, W_hh, tmp):
        np.matmul(h_prev, W_hh, out=tmp)
        k.rnn_forward(a, tmp, cells[0].tanh)

    def step(cell):
        return lambda layer, t: forward_steps(cell, layer, t + 1, t)

    return recur if model.cell == "rnn" else None, [step(cell) for cell in cells]


def backward_steps(cell, layer, scales, d_state, smallest) -> None:
    """The T backward steps of one layer (model.backward_segment's loop, with the cell's
    prepare_backward inside the kernels), then flush_tiny of dA when `smallest` is not None.
    d_state (S, B, H): (dh_next[, dc_next]) on entry, the gradient reaching the layer's start
    state on exit; scales: path_scales (KEEP, CUT or ξ_t (B, 1) per step)."""
    k, name = _state["kernels"], type(cell).__name__
    hs, dH, W_hh_T, dh_next = layer.hs, layer.dH, layer.W_hh_T, d_state[0]
    for t in range(len(scales) - 1, -1, -1):
        scale = scales[t]
        keep = scale is not CUT
        if name == "RNNCell":
            k.rnn_backward(t, dH, dh_next, hs, cell.tanh)
            if keep:
                np.matmul(dH[t], W_hh_T, out=dh_next)
        elif name == "GRUCell":
            k.gru_backward(t, dH, dh_next, layer.A, layer.aux, hs, layer.dA, layer.tmp_h)
            if keep:
                np.matmul(layer.dA[t], W_hh_T, out=dh_next)
                dh_next += layer.tmp_h  # dh ⊙ z, the direct path
        else:
            k.lstm_backward(t, dH, dh_next, d_state[1], layer.A, layer.cs, layer.aux, layer.dA, keep)
            if keep:
                np.matmul(layer.dA[t], W_hh_T, out=dh_next)
        if scale is CUT:
            d_state.fill(0)
        elif scale is not KEEP:
            d_state *= scale
    if smallest is not None:
        k.flush_tiny(layer.dA, layer.dA.dtype.type(smallest))
