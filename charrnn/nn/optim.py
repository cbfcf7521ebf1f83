"""Gradient clipping and the optimizers that update a model's params in place.

Each optimizer owns one scratch array per parameter, so a step allocates nothing. Its state
(accumulators and step count) goes to a file as arrays + JSON and comes back bit for bit, so a
resumed run continues exactly as an uninterrupted one. Hyperparameters (lr, betas, eps) belong
to construction: load_state restores the state, not the learning rate.
"""
import math

import numpy as np

from charrnn.base.checks import is_finite, is_integer, is_real
from charrnn.base.errors import CharrnnError


def clip_grad_norm(grads, theta) -> float:
    """g <- min(1, θ/‖g‖) g in place, ‖g‖ the L2 norm over all arrays of `grads` (d2l §9.5).

    Returns ‖g‖ before clipping, summed in float64 (einsum widens float32 chunk by chunk, with
    no float64 copy of the gradient). theta: a number > 0 (inf never clips).
    """
    if not is_real(theta) or not theta > 0:
        raise CharrnnError(f"clipping threshold theta must be a number > 0, got {theta!r}")
    norm = math.sqrt(sum(float(np.einsum("i,i->", g.reshape(-1), g.reshape(-1), dtype=np.float64))
                         for g in grads.values()))
    if norm > theta:
        scale = theta / norm
        for g in grads.values():
            g *= scale
    return norm


class Optimizer:
    """Base: params (dict of arrays, updated in place), lr, per-parameter slots and scratch."""

    name = ""
    slot_names = ()

    def __init__(self, params, lr):
        if not is_finite(lr) or not lr > 0:
            raise CharrnnError(f"learning rate must be a finite number > 0, got {lr!r}")
        self.params = params
        self.lr = float(lr)
        self.num_steps = 0
        self.slots = {slot: {k: np.zeros_like(p) for k, p in params.items()}
                      for slot in self.slot_names}
        self._scratch = {k: np.empty_like(p) for k, p in params.items()}

    def step(self, grads) -> None:
        """Update every parameter in place from `grads` (same keys and shapes)."""
        self.num_steps += 1
        for k, p in self.params.items():
            self._update(p, grads[k], self._scratch[k], *(self.slots[s][k] for s in self.slot_names))

    def _update(self, p, g, scratch, *slots) -> None:
        raise NotImplementedError

    def state_arrays(self) -> dict:
        """Accumulators as "optim.<slot>.<param>" -> array (empty for SGD)."""
        return {f"optim.{slot}.{k}": a for slot, arrays in self.slots.items() for k, a in arrays.items()}

    def state_meta(self) -> dict:
        """JSON-serialisable description: name, lr, steps taken."""
        return {"name": self.name, "lr": self.lr, "steps": self.num_steps}

    def load_state(self, arrays, meta) -> None:
        """Restore state saved by state_arrays()/state_meta(); other keys in `arrays` are ignored."""
        if meta.get("name") != self.name:
            raise CharrnnError(f"optimizer state is for {meta.get('name')!r}, not {self.name!r}")
        steps = meta.get("steps")
        if not is_integer(steps) or steps < 0:
            raise CharrnnError(f"optimizer state has a bad step count {steps!r}")
        mine = self.state_arrays()
        for key, target in mine.items():
            saved = arrays.get(key)
            if saved is None:
                raise CharrnnError(f"optimizer state has no array {key!r}")
            if saved.shape != target.shape or saved.dtype != target.dtype:
                raise CharrnnError(
                    f"optimizer state {key} is {saved.dtype.name} {saved.shape}, "
                    f"expected {target.dtype.name} {target.shape}")
        for key, target in mine.items():
            np.copyto(target, arrays[key])
        self.num_steps = int(steps)


class SGD(Optimizer):
    """p <- p - lr g (d2l §9.5's sgd; lr 1 with clipping at 1 trains the textbook's model)."""

    name = "sgd"

    def _update(self, p, g, scratch):
        np.multiply(g, self.lr, out=scratch)
        p -= scratch


class Adagrad(Optimizer):
    """s <- s + g²;  p <- p - lr g / sqrt(s + eps) (d2l §12.7), eps = 1e-6."""

    name = "adagrad"
    slot_names = ("s",)
    eps = 1e-6

    def _update(self, p, g, scratch, s):
        np.multiply(g, g, out=scratch)
        s += scratch
        np.add(s, self.eps, out=scratch)
        np.sqrt(scratch, out=scratch)
        np.divide(g, scratch, out=scratch)
        scratch *= self.lr
        p -= scratch


class Adam(Optimizer):
    """Adam with bias correction (d2l §12.10): v <- β1 v + (1-β1) g, s <- β2 s + (1-β2) g²,
    p <- p - lr v̂ / (sqrt(ŝ) + eps), v̂ = v/(1-β1^t), ŝ = s/(1-β2^t); β1 0.9, β2 0.999, eps 1e-8."""

    name = "adam"
    slot_names = ("v", "s")
    beta1, beta2, eps = 0.9, 0.999, 1e-8

    def _update(self, p, g, scratch, v, s):
        v *= self.beta1
        np.multiply(g, 1 - self.beta1, out=scratch)
        v += scratch
        s *= self.beta2
        np.multiply(g, g, out=scratch)
        scratch *= 1 - self.beta2
        s += scratch
        np.multiply(s, 1 / (1 - self.beta2 ** self.num_steps), out=scratch)
        np.sqrt(scratch, out=scratch)
        scratch += self.eps
        np.divide(v, scratch, out=scratch)
        scratch *= self.lr / (1 - self.beta1 ** self.num_steps)
        p -= scratch


OPTIMIZERS = {cls.name: cls for cls in (SGD, Adagrad, Adam)}


def make_optimizer(name, params, lr) -> Optimizer:
    """"sgd" | "adagrad" | "adam" -> an optimizer updating `params` in place with learning rate lr."""
    cls = OPTIMIZERS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise CharrnnError(f"unknown optimizer {name!r} (use {', '.join(OPTIMIZERS)})")
    return cls(params, lr)
