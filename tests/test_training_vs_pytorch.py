"""charrnn's whole training loop against PyTorch, step for step (float64).

The gradient tests (test_export, test_gradcheck) hold one minibatch's loss and gradients equal
to autograd's. These hold what happens between minibatches too: the initialisation a run
starts from (the output bias from the text's unigram), the state carried from one minibatch
into the next and reset at an epoch's end, the dropout masks of every step, global-norm
clipping, Adam, and the cosine learning rate over the token budget. PyTorch runs the same
recipe from the same initial weights (through the export mapping) on the same minibatches
with the same masks, one nn.GRU / nn.LSTM / nn.RNN layer at a time so that the masks can be
applied between layers; after a dozen steps every parameter must agree to float64 rounding.

PyTorch is a test dependency installed by CI (.ci/run); where CI is set a missing torch fails
these tests, elsewhere they are skipped.
"""
import math
import os

import numpy as np
import pytest

from charrnn.data.baselines import ngram_baselines
from charrnn.nn.cells import init_output_bias, layer_suffix
from charrnn.training.config import TrainConfig
from charrnn.infer.export import TORCH_MODULES, torch_state_dict
from charrnn.nn.model import RNNLM
from charrnn.training.state import DROPOUT_STREAM, SAMPLER_STREAM
from charrnn.data.samplers import seq_data_iter_sequential
from charrnn.training.start import load_data, train

if os.environ.get("CI"):
    import torch
else:
    torch = pytest.importorskip("torch")

H, B, T, STEPS = 8, 4, 6, 13


def torch_layers(model):
    """One single-layer PyTorch module per layer of `model` and the decoder, holding its weights."""
    tensors = {name: torch.from_numpy(array.copy()) for name, array in torch_state_dict(model).items()}
    layers = []
    for l in range(model.num_layers):
        inputs = model.vocab_size if l == 0 else model.num_hiddens
        layer = getattr(torch.nn, TORCH_MODULES[model.cell])(inputs, model.num_hiddens, dtype=torch.float64)
        layer.load_state_dict({f"{kind}_l0": tensors[f"{kind}_l{l}"]
                               for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")})
        layers.append(layer)
    decoder = torch.nn.Linear(model.num_hiddens, model.vocab_size, dtype=torch.float64)
    decoder.load_state_dict({"weight": tensors["decoder.weight"], "bias": tensors["decoder.bias"]})
    return layers, decoder


def pytorch_training(config, train_data, vocab_size, initial):
    """The recipe of charrnn's Run, written against PyTorch: -> the PyTorch modules after
    STEPS minibatches, started from the charrnn model `initial`."""
    layers, decoder = torch_layers(initial)
    params = [p for module in (*layers, decoder) for p in module.parameters()]
    optimizer = torch.optim.Adam(params, lr=config.lr, betas=(0.9, 0.999), eps=1e-8)
    masks_rng = np.random.default_rng([config.seed, DROPOUT_STREAM])
    lstm, P, L = initial.cell == "lstm", config.dropout, config.num_layers
    tokens_per_batch, step, epoch = config.batch_size * config.num_steps, 0, 0
    while step < STEPS:
        state = None  # every epoch starts from zeros
        order = np.random.default_rng([config.order_seed, SAMPLER_STREAM, epoch])
        for X, Y in seq_data_iter_sequential(train_data, config.batch_size, config.num_steps, order):
            if step == STEPS:
                break
            masks = torch.from_numpy((masks_rng.random((T, L, B, H)) >= P) / (1 - P))
            x = torch.nn.functional.one_hot(torch.from_numpy(X.T.astype(np.int64)), vocab_size).double()
            new_state = []
            for l, layer in enumerate(layers):
                start = None if state is None else state[l]
                x, last = layer(x, start)
                new_state.append(tuple(s.detach() for s in last) if lstm else last.detach())
                x = x * masks[:, l]  # dropout on what the next layer and the output layer read
            state = new_state
            logits = decoder(x)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab_size),
                                                     torch.from_numpy(Y.T.reshape(-1).astype(np.int64)))
            optimizer.zero_grad()
            loss.backward()
            for l, layer in enumerate(layers):  # charrnn has one bias per gate: bias_hh stays 0,
                grad = layer.bias_hh_l0.grad    # but for the GRU candidate's hidden-side b_hn
                grad[:2 * H if initial.cell == "gru" else None] = 0
            norm = math.sqrt(sum(float((p.grad ** 2).sum()) for p in params))
            if norm > config.clip:  # θ/‖g‖ exactly (clip_grad_norm_ would divide by ‖g‖ + 1e-6)
                for p in params:
                    p.grad *= config.clip / norm
            fraction = step * tokens_per_batch / config.max_tokens  # the budget used before this step
            lr_min = config.lr * config.lr_floor
            for group in optimizer.param_groups:
                group["lr"] = lr_min + (config.lr - lr_min) * (1 + math.cos(math.pi * fraction)) / 2
            optimizer.step()
            step += 1
        epoch += 1
    return layers, decoder


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_a_dozen_training_steps_equal_pytorchs_with_the_same_weights_batches_and_masks(tmp_path, write_words, cell):
    text = write_words(tmp_path / "words.txt", 30, seed=3)  # about 6 minibatches an epoch: two resets in 13 steps
    config = TrainConfig(corpus=str(text), cell=cell, num_hiddens=H, num_layers=2, dropout=0.3, dtype="float64",
                         batch_size=B, num_steps=T, lr=0.01, max_tokens=STEPS * B * T, eval_every=10**9, seed=4)
    result = train(config, tmp_path / "run", threads=1)
    assert result.progress.step == STEPS and result.progress.epoch >= 2

    train_data, val_data, vocab, _ = load_data(config, None)
    initial = RNNLM(len(vocab), H, dtype="float64", seed=config.seed, cell=cell, num_layers=2, dropout=0.3)
    init_output_bias(initial.params, ngram_baselines(train_data, val_data, len(vocab)).log_unigram)
    layers, decoder = pytorch_training(config, train_data, len(vocab), initial)

    ours = torch_state_dict(result.model)
    moved = 0.0
    for l, layer in enumerate(layers):
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            theirs = getattr(layer, f"{kind}_l0").detach().numpy()
            np.testing.assert_allclose(ours[f"{kind}_l{l}"], theirs, rtol=1e-9, atol=1e-11, err_msg=f"{kind} layer {l}")
            moved = max(moved, float(np.abs(theirs - torch_state_dict(initial)[f"{kind}_l{l}"]).max()))
    np.testing.assert_allclose(ours["decoder.weight"], decoder.weight.detach().numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(ours["decoder.bias"], decoder.bias.detach().numpy(), rtol=1e-9, atol=1e-11)
    assert moved > 1e-3  # the weights did move: the comparison is not of two untouched copies
    assert result.model.params[f"W_hh{layer_suffix(1)}"].dtype == np.float64
