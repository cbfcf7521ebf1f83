"""Where the time of one training step goes for each cell, phase by phase.

profile_step.py for every cell: times each piece of RNNLM.loss_and_grads (one layer, batch 32 x
35 steps of the book, float32), clip_grad_norm and the SGD update, each the fastest of repeated
runs with its data warm in cache (so the pieces need not add up to the whole step exactly;
shares are of their sum). Indented lines split a phase: the matrix products it contains, timed
alone with the same shapes and outputs, and, for the backward product, the same product with a
C-contiguous copy of W_hhᵀ instead of the transposed view of W_hh. The header
line gives the number of NumPy calls in the code of one forward and one backward step and what
dispatching them alone costs per window (~0.4 µs a call whatever its size).

    python benchmarks/profile_cells.py                        # rnn, gru, lstm at 64, 256, 1024
    python benchmarks/profile_cells.py --cells lstm --hiddens 256 --json
    python benchmarks/profile_cells.py --cells lstm --layouts     # + the LSTM's forward in two layouts
    OPENBLAS_NUM_THREADS=1 python benchmarks/profile_cells.py
"""
import argparse
import ast
import inspect
import json
import textwrap

import numpy as np

from charrnn.data.corpus import load_corpus
from charrnn.data.samplers import seq_data_iter_sequential
from charrnn.nn.model import RNNLM
from charrnn.nn.truncation import path_scales
from charrnn.nn.optim import clip_grad_norm, make_optimizer
from profile_step import fastest_ms

BATCH_SIZE, NUM_STEPS = 32, 35
BACKWARD_STEPS = "backward steps (prepare_backward + T backward_step)"  # inside backward_segment: not summed


def numpy_calls(function) -> int:
    """NumPy operations written in a function's code: np.* calls and in-place operators (each one
    ufunc call), counted on its syntax tree (every branch)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return sum(isinstance(node, ast.AugAssign)
               or (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                   and isinstance(node.func.value, ast.Name) and node.func.value.id == "np")
               for node in ast.walk(tree))


def ufunc_call_us() -> float:
    """The cost of one NumPy call on a tiny array (dispatch, no work), in µs."""
    a, out = np.ones(8, np.float32), np.empty(8, np.float32)
    return fastest_ms(lambda: [np.add(a, a, out=out) for _ in range(1000)], seconds=0.3)


def phases(model, X, Y) -> dict:
    """Phase name -> callable running it once on the minibatch (X, Y), in the step's order."""
    B, T = X.shape
    X_tm, Y_tm, y = X.T, Y.T, Y.T.reshape(-1)
    ws = model.workspace(B, T)
    model.forward_segment(X_tm, None, ws)
    scales = path_scales("full", T, B, None, model.dtype)
    cell, layer = model.cells[0], ws.layers[0]
    G, H = model.gates, model.num_hiddens
    tmp, tmp_h = np.empty((B, G * H), model.dtype), np.empty((B, H), model.dtype)
    rows_prev, rows_delta = ws.hs[0, :-1].reshape(B * T, H), ws.dA.reshape(B * T, G * H)
    grads = model.loss_and_grads(X, Y)[1]
    optimizer = make_optimizer("sgd", model.params, 1.0)
    model.softmax_cross_entropy(y, ws)
    model.output_grads(y, 1.0 / y.size, ws)
    outputs_share = ws.dH.copy()  # what the backward steps start from
    saved = {name: getattr(ws, name).copy() for name in ("A", "aux", "M") if getattr(ws, name) is not None}

    def restore():  # the backward pieces work in place: give them the same input again
        for name, value in saved.items():
            np.copyto(getattr(ws, name), value)
        np.copyto(ws.dH, outputs_share)

    def forward_products():
        for t in range(T):
            np.matmul(layer.hs[t], layer.W_hh, out=tmp)

    def backward_steps():
        restore()
        cell.prepare_backward(layer)
        ws.carry.fill(0)
        for t in range(T - 1, -1, -1):
            cell.backward_step(layer, t, ws.carry[0], t > 0)

    def backward_products():
        for t in range(T):
            np.matmul(ws.dA[t], layer.W_hh_T, out=tmp_h)

    W_hh_T = np.ascontiguousarray(layer.W_hh_T)

    def backward_products_contiguous():
        for t in range(T):
            np.matmul(ws.dA[t], W_hh_T, out=tmp_h)

    def prepare_backward():
        restore()
        cell.prepare_backward(layer)

    def output_layer():
        model.softmax_cross_entropy(y, ws)
        model.output_grads(y, 1.0 / y.size, ws)

    def weight_grads():
        restore()
        model.backward_segment(X_tm, scales, ws.carry, ws)

    return {
        "forward (tables, recurrence)": lambda: model.forward_segment(X_tm, None, ws),
        "  h_{t-1} W_hh products": forward_products,
        "output layer, softmax, cross-entropy and their gradients": output_layer,
        BACKWARD_STEPS: backward_steps,
        "  prepare_backward (with restoring its input)": prepare_backward,
        "  δ_t W_hhᵀ products": backward_products,
        "  δ_t W_hhᵀ products, W_hhᵀ a contiguous copy": backward_products_contiguous,
        "backward_segment whole (steps + dW_hh, dW_xh, db_h)": weight_grads,
        "  dW_hh product": lambda: rows_prev.T @ rows_delta,
        "clip_grad_norm": lambda: clip_grad_norm(grads, np.inf),
        "SGD update": lambda: optimizer.step(grads),
        "whole step": lambda: clip_grad_norm(model.loss_and_grads(X, Y)[1], np.inf),
    }


def calls_per_step(model) -> dict:
    """NumPy calls in the code of one forward step and one backward step of the cell."""
    cell = type(model.cells[0])
    return {"forward_step": numpy_calls(cell.forward_step), "backward_step": numpy_calls(cell.backward_step)}


def lstm_forward_layouts(num_hiddens, dtype=np.float32) -> dict:
    """The LSTM's forward steps over a window, written as cells.LSTMCell.forward_step (the same
    NumPy operations), in two layouts -> {layout: ms}: "rows", the model's (B, 4H) gate rows with
    the gate blocks as column slices, and "feature-major", the transposed (4H, B) with each gate
    block a contiguous run of rows and a_t = W_hhᵀ h_{t-1} as the product."""
    B, T, H = BATCH_SIZE, NUM_STEPS, num_hiddens
    rng = np.random.default_rng(0)
    W = (rng.standard_normal((H, 4 * H)) / np.sqrt(H)).astype(dtype)
    scale = np.concatenate([np.full(2 * H, 0.5), np.ones(H), np.full(H, 0.5)]).astype(dtype)
    shift = np.concatenate([np.full(2 * H, 0.5), np.zeros(H), np.full(H, 0.5)]).astype(dtype)
    inputs = rng.standard_normal((T, B, 4 * H)).astype(dtype)

    def run(A, hs, cs, aux, W, tmp, tmp_h, scale, shift, block):
        for t in range(T):
            a = A[t]
            np.matmul(*((hs[t], W) if block is None else (W, hs[t])), out=tmp)
            a += tmp
            np.tanh(a, out=a)
            a *= scale
            a += shift
            i, f, g, o = (a[:, k * H:(k + 1) * H] if block is None else a[k * H:(k + 1) * H] for k in range(4))
            np.multiply(f, cs[t], out=cs[t + 1])
            np.multiply(i, g, out=tmp_h)
            cs[t + 1] += tmp_h
            np.tanh(cs[t + 1], out=aux[t])
            np.multiply(o, aux[t], out=hs[t + 1])

    rows = (inputs.copy(), np.zeros((T + 1, B, H), dtype), np.zeros((T + 1, B, H), dtype), np.empty((T, B, H), dtype),
            W, np.empty((B, 4 * H), dtype), np.empty((B, H), dtype), scale, shift, None)
    feature_major = (np.ascontiguousarray(inputs.transpose(0, 2, 1)), np.zeros((T + 1, H, B), dtype),
                     np.zeros((T + 1, H, B), dtype), np.empty((T, H, B), dtype), np.ascontiguousarray(W.T),
                     np.empty((4 * H, B), dtype), np.empty((H, B), dtype), scale[:, None], shift[:, None], "rows")
    return {"rows": fastest_ms(lambda: run(*rows)), "feature-major": fastest_ms(lambda: run(*feature_major))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="rnn,gru,lstm", help="comma-separated cells")
    parser.add_argument("--hiddens", default="64,256,1024", help="comma-separated hidden sizes")
    parser.add_argument("--corpus", default="timemachine")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--layouts", action="store_true",
                        help="also time the LSTM's forward steps in the model's row layout and feature-major")
    args = parser.parse_args()
    corpus, vocab = load_corpus(args.corpus)
    X, Y = next(seq_data_iter_sequential(corpus, BATCH_SIZE, NUM_STEPS, np.random.default_rng(0)))
    call_us = ufunc_call_us()
    report = {"numpy_call_us": call_us, "rows": []}
    if not args.json:
        print(f"one NumPy call on a tiny array: {call_us:.2f} µs")
    for cell in args.cells.split(","):
        for num_hiddens in (int(h) for h in args.hiddens.split(",")):
            model = RNNLM(len(vocab), num_hiddens, seed=0, cell=cell)
            timings = {name: fastest_ms(fn) for name, fn in phases(model, X, Y).items()}
            calls = calls_per_step(model)
            report["rows"].append({"cell": cell, "num_hiddens": num_hiddens, "ms": timings, "calls_per_step": calls})
            if args.json:
                continue
            pieces = sum(ms for name, ms in timings.items()
                         if not name.startswith(" ") and name not in ("whole step", BACKWARD_STEPS))
            dispatch = {name: n * NUM_STEPS * call_us / 1e3 for name, n in calls.items()}
            print(f"{cell} hidden {num_hiddens}: whole step {timings['whole step']:.2f} ms, pieces {pieces:.2f} ms; "
                  f"NumPy calls per step: forward {calls['forward_step']}, "
                  f"backward {calls['backward_step']} "
                  f"(their dispatch alone ~{dispatch['forward_step']:.2f} + {dispatch['backward_step']:.2f} ms per window)")
            for name, ms in timings.items():
                print(f"  {name:<58} {ms:8.3f} ms  {ms / pieces:5.0%}")
            print(flush=True)
    if args.layouts:
        report["lstm_forward_layouts_ms"] = {}
        for num_hiddens in (int(h) for h in args.hiddens.split(",")):
            times = report["lstm_forward_layouts_ms"][num_hiddens] = lstm_forward_layouts(num_hiddens)
            if not args.json:
                print(f"lstm forward steps, hidden {num_hiddens}: rows (B, 4H) {times['rows']:.3f} ms, "
                      f"feature-major (4H, B) {times['feature-major']:.3f} ms")
    if args.json:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
