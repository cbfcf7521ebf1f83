"""Where the time of one charrnn training step goes, phase by phase.

Times each piece of RNNLM.loss_and_grads, clip_grad_norm and the SGD update on one minibatch
of the book (batch 32, num_steps 35, float32), each the fastest of many runs (wall clock), so
that other work on the machine shows as little as possible. The pieces are timed alone, with
their data warm in cache, so they need not add up to the whole step exactly (shares are printed
of their sum); "backward through time" includes one copy that restores its input.

    python benchmarks/profile_step.py                 # hidden 64, 256, 1024
    python benchmarks/profile_step.py --hiddens 256 --json
    OPENBLAS_NUM_THREADS=1 python benchmarks/profile_step.py
"""
import argparse
import json
import time

import numpy as np

from charrnn.data.corpus import load_corpus
from charrnn.data.samplers import seq_data_iter_sequential
from charrnn.nn.model import RNNLM
from charrnn.nn.truncation import path_scales
from charrnn.nn.optim import clip_grad_norm, make_optimizer

BATCH_SIZE, NUM_STEPS = 32, 35


def fastest_ms(fn, seconds=1.0, min_runs=5) -> float:
    """The fastest of repeated calls of fn (at least min_runs, about `seconds` in all), in ms."""
    fn()
    times, deadline = [], time.perf_counter() + seconds
    while len(times) < min_runs or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def phases(model, X, Y) -> dict:
    """Phase name -> callable running it once on the minibatch (X, Y), in the step's order."""
    B, T = X.shape
    X_tm, y = X.T, Y.T.reshape(-1)
    ws = model.workspace(B, T)
    model.forward_segment(X_tm, None, ws)
    scales = path_scales("full", T, B, None, model.dtype)
    W_hh, states, tmp = model.params["W_hh"], ws.hs[0], ws.tmp
    grads = model.loss_and_grads(X, Y)[1]
    rows_prev, rows_grad = states[:-1].reshape(B * T, -1), ws.dA.reshape(B * T, -1)
    optimizer = make_optimizer("sgd", model.params, 1.0)

    def recurrence_products():
        for t in range(T):
            np.matmul(states[t], W_hh, out=tmp)

    def tanh_per_step():
        for t in range(1, T + 1):
            np.tanh(states[t], out=states[t])

    def output_layer():
        model.softmax_cross_entropy(y, ws)
        model.output_grads(y, 1.0 / y.size, ws)

    model.forward_segment(X_tm, None, ws)
    output_layer()
    outputs_share = ws.dH.copy()  # dL/do_t W_hqᵀ, what the backward pass starts from

    def backward():  # through time, and the weight gradients dW_hh, dW_xh, db_h
        np.copyto(ws.dH, outputs_share)  # the pass works in place: give it the same input again
        ws.carry.fill(0)
        model.backward_segment(X_tm, scales, ws.carry, ws)

    return {
        "forward recurrence": lambda: model.forward_segment(X_tm, None, ws),
        "  h_{t-1} W_hh products": recurrence_products,
        "  tanh": tanh_per_step,
        "output layer, softmax, cross-entropy and their gradients": output_layer,
        "backward through time, weight gradients dW_hh, dW_xh, db_h": backward,
        "  dW_hh product": lambda: rows_prev.T @ rows_grad,
        "clip_grad_norm": lambda: clip_grad_norm(grads, np.inf),
        "SGD update": lambda: optimizer.step(grads),
        "whole step": lambda: clip_grad_norm(model.loss_and_grads(X, Y)[1], np.inf),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hiddens", default="64,256,1024", help="comma-separated hidden sizes")
    parser.add_argument("--corpus", default="timemachine")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    corpus, vocab = load_corpus(args.corpus)
    X, Y = next(seq_data_iter_sequential(corpus, BATCH_SIZE, NUM_STEPS, np.random.default_rng(0)))
    report = {}
    for num_hiddens in (int(h) for h in args.hiddens.split(",")):
        model = RNNLM(len(vocab), num_hiddens, seed=0)
        timings = {name: fastest_ms(fn) for name, fn in phases(model, X, Y).items()}
        report[num_hiddens] = timings
        if not args.json:
            pieces = sum(ms for name, ms in timings.items() if not name.startswith(" ") and name != "whole step")
            print(f"hidden {num_hiddens}: whole step {timings['whole step']:.2f} ms, pieces {pieces:.2f} ms "
                  f"(shares of the pieces' sum)")
            for name, ms in timings.items():
                print(f"  {name:<58} {ms:8.3f} ms  {ms / pieces:5.0%}")
    if args.json:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
