"""Watch a network saturate (or not): the steps of `charrnn train TEXT [options]`, with the
state of the top layer logged along the way (docs/learning.md, "The defect").

Runs the training steps as charrnn.training.loop.Run does (the same data order, dropout masks, clipping,
Adam and cosine schedule over --tokens) and every --every steps prints the minibatch loss, the
top layer's mean |h| and share of saturated units (|h| > 0.95), for a GRU its update gate z (mean
and share above 0.99), and the gradient norms of the top layer's input weights and of W_hq.

    python benchmarks/diagnose_saturation.py TEXT --cell gru --seed 5 --output-bias zero
    python benchmarks/diagnose_saturation.py TEXT --cell gru --seed 5            # the fix
"""
import argparse
import math

import numpy as np

from charrnn.data.baselines import ngram_baselines
from charrnn.nn.cells import init_output_bias, layer_suffix
from charrnn.training.config import TrainConfig
from charrnn.nn.model import RNNLM
from charrnn.nn.optim import clip_grad_norm, make_optimizer
from charrnn.training.state import DROPOUT_STREAM, SAMPLER_STREAM, TRUNCATION_STREAM
from charrnn.data.samplers import seq_data_iter_sequential
from charrnn.training.schedule import learning_rate
from charrnn.training.start import load_data


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("text")
    parser.add_argument("--cell", default="gru")
    parser.add_argument("--num-layers", type=int, default=None)
    parser.add_argument("--dropout", type=float, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-bias", default="unigram", choices=("unigram", "zero"))
    parser.add_argument("--tokens", type=int, default=300_000)
    parser.add_argument("--steps", type=int, default=150, help="minibatches to run (of the --tokens budget)")
    parser.add_argument("--every", type=int, default=10)
    args = parser.parse_args()
    config = TrainConfig(corpus=args.text, cell=args.cell, num_layers=args.num_layers, dropout=args.dropout,
                         lr=args.lr, seed=args.seed, output_bias=args.output_bias, max_tokens=args.tokens)
    train, val, vocab, _ = load_data(config, None)
    model = RNNLM(len(vocab), config.num_hiddens, seed=config.seed, cell=config.cell,
                  num_layers=config.num_layers, dropout=config.dropout)
    if config.output_bias == "unigram":
        init_output_bias(model.params, ngram_baselines(train, val, len(vocab)).log_unigram)
    optimizer = make_optimizer(config.optimizer, model.params, config.lr)
    truncation_rng = np.random.default_rng([config.seed, TRUNCATION_STREAM])
    dropout_rng = np.random.default_rng([config.seed, DROPOUT_STREAM])
    batches = seq_data_iter_sequential(train, config.batch_size, config.num_steps,
                                       np.random.default_rng([config.order_seed, SAMPLER_STREAM, 0]))
    H, top, state = config.num_hiddens, config.num_layers - 1, None
    print("step  loss   |h| top  |h|>0.95  z mean  z>0.99  |dW_xh top|  |dW_hq|")
    for step, (X, Y) in zip(range(args.steps), batches):
        optimizer.lr = learning_rate(config, step * X.size / config.max_tokens, 0)
        loss, grads, state = model.loss_and_grads(X, Y, state, truncation=config.truncation, rng=truncation_rng,
                                                  dropout_rng=dropout_rng if config.dropout else None)
        norms = {name: float(np.linalg.norm(grad)) for name, grad in grads.items()}
        clip_grad_norm(grads, math.inf if config.clip is None else config.clip)
        optimizer.step(grads)
        if step % args.every and step != args.steps - 1:
            continue
        ws = model.workspace(*X.shape)
        h = ws.hs[top, 1:]
        gates = ""
        if config.cell == "gru":
            z = ws.A[top][..., H:2 * H]
            gates = f"{z.mean():6.2f}  {np.mean(z > 0.99):6.0%}"
        print(f"{step:4d}  {loss:5.3f}  {np.abs(h).mean():6.2f}  {np.mean(np.abs(h) > 0.95):7.0%}  "
              f"{gates or '     -       -'}  {norms[f'W_xh{layer_suffix(top)}']:10.3f}  {norms['W_hq']:7.3f}",
              flush=True)


if __name__ == "__main__":
    main()
