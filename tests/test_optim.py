"""Clipping and optimizers: formulas, in-place updates, dtype, state save/restore, errors."""
import numpy as np
import pytest

from charrnn.base.errors import CharrnnError
from charrnn.base.io import load_npz, save_npz
from charrnn.nn.model import RNNLM
from charrnn.nn.optim import SGD, Adagrad, Adam, clip_grad_norm, make_optimizer


def random_arrays(seed, dtype=np.float64, scale=1.0):
    rng = np.random.default_rng(seed)
    return {"a": (rng.standard_normal((3, 4)) * scale).astype(dtype),
            "b": (rng.standard_normal(5) * scale).astype(dtype)}


def copy(arrays):
    return {k: v.copy() for k, v in arrays.items()}


# ------------------------------------------------------------------ clipping


def test_clip_scales_to_theta_and_returns_norm_before():
    grads = random_arrays(0)
    norm = np.sqrt(sum((g ** 2).sum() for g in grads.values()))
    expected = {k: g * (0.5 / norm) for k, g in grads.items()}
    returned = clip_grad_norm(grads, 0.5)
    assert returned == pytest.approx(norm, rel=1e-15)
    for k in grads:
        np.testing.assert_allclose(grads[k], expected[k], rtol=1e-15)
    after = np.sqrt(sum((g ** 2).sum() for g in grads.values()))
    assert after == pytest.approx(0.5, rel=1e-14)


def test_clip_leaves_small_gradients_untouched():
    grads = random_arrays(1, scale=0.01)
    before = copy(grads)
    norm = clip_grad_norm(grads, 1.0)
    assert norm < 1.0
    assert all(np.array_equal(grads[k], before[k]) for k in grads)
    assert clip_grad_norm(grads, float("inf")) == norm


def test_clip_float32_keeps_dtype_and_sums_accurately():
    grads = {"big": np.full(1_000_000, 1e-3, np.float32), "one": np.ones(1, np.float32)}
    norm = clip_grad_norm(grads, 0.1)
    exact = np.sqrt(1_000_000 * float(np.float32(1e-3)) ** 2 + 1)
    assert norm == pytest.approx(exact, rel=1e-12)
    assert grads["big"].dtype == np.float32 and grads["one"].dtype == np.float32
    assert grads["one"][0] == pytest.approx(0.1 / exact, rel=1e-6)


@pytest.mark.parametrize("theta", [0, -1.0, float("nan"), "1", None, True])
def test_clip_rejects_bad_theta(theta):
    with pytest.raises(CharrnnError, match="theta"):
        clip_grad_norm(random_arrays(0), theta)


# ------------------------------------------------------------------ update rules


def run_steps(opt, grad_seeds):
    for seed in grad_seeds:
        opt.step(random_arrays(seed, opt.params["a"].dtype))


def test_sgd_update():
    params = random_arrays(0)
    start = copy(params)
    opt = SGD(params, lr=0.3)
    grads = random_arrays(1)
    opt.step(grads)
    for k in params:
        np.testing.assert_allclose(params[k], start[k] - 0.3 * grads[k], rtol=1e-15)
    assert np.array_equal(grads["a"], random_arrays(1)["a"])  # gradients are not modified


def test_adagrad_update_matches_formula():
    params = random_arrays(0)
    expected, s = copy(params), {k: 0.0 for k in params}
    opt = Adagrad(params, lr=0.1)
    for seed in range(1, 5):
        g = random_arrays(seed)
        opt.step(g)
        for k in params:
            s[k] = s[k] + g[k] ** 2
            expected[k] = expected[k] - 0.1 * g[k] / np.sqrt(s[k] + 1e-6)
    for k in params:
        np.testing.assert_allclose(params[k], expected[k], rtol=1e-13)


def test_adam_update_matches_formula():
    params = random_arrays(0)
    expected = copy(params)
    v, s = {k: 0.0 for k in params}, {k: 0.0 for k in params}
    opt = Adam(params, lr=0.01)
    for t in range(1, 6):
        g = random_arrays(t)
        opt.step(g)
        for k in params:
            v[k] = 0.9 * v[k] + 0.1 * g[k]
            s[k] = 0.999 * s[k] + 0.001 * g[k] ** 2
            v_hat, s_hat = v[k] / (1 - 0.9 ** t), s[k] / (1 - 0.999 ** t)
            expected[k] = expected[k] - 0.01 * v_hat / (np.sqrt(s_hat) + 1e-8)
    for k in params:
        np.testing.assert_allclose(params[k], expected[k], rtol=1e-12)


def test_adam_first_step_moves_each_entry_by_lr():
    params = random_arrays(0)
    start = copy(params)
    grads = random_arrays(1)
    Adam(params, lr=0.05).step(grads)
    for k in params:
        np.testing.assert_allclose(params[k] - start[k], -0.05 * np.sign(grads[k]), rtol=1e-5)


@pytest.mark.parametrize("name", ["sgd", "adagrad", "adam"])
def test_updates_in_place_and_keep_float32(name):
    params = random_arrays(0, np.float32)
    same_objects = dict(params)
    opt = make_optimizer(name, params, 0.1)
    run_steps(opt, range(1, 4))
    assert all(params[k] is same_objects[k] for k in params)
    assert all(p.dtype == np.float32 for p in params.values())
    assert all(a.dtype == np.float32 for a in opt.state_arrays().values())
    assert not np.array_equal(params["a"], random_arrays(0, np.float32)["a"])


# ------------------------------------------------------------------ state


@pytest.mark.parametrize("name", ["sgd", "adagrad", "adam"])
def test_resumed_run_is_bit_identical(tmp_path, name):
    uninterrupted = random_arrays(0, np.float32)
    opt = make_optimizer(name, uninterrupted, 0.02)
    run_steps(opt, range(1, 9))

    params = random_arrays(0, np.float32)
    first = make_optimizer(name, params, 0.02)
    run_steps(first, range(1, 5))
    path = tmp_path / "state.npz"
    save_npz(path, {**params, **first.state_arrays()}, {"optimizer": first.state_meta()})
    arrays, meta = load_npz(path)
    resumed_params = {k: arrays[k] for k in params}
    second = make_optimizer(name, resumed_params, 0.02)
    second.load_state(arrays, meta["optimizer"])
    assert second.num_steps == 4
    run_steps(second, range(5, 9))
    assert all(np.array_equal(resumed_params[k], uninterrupted[k]) for k in params)


def test_state_names_and_meta():
    opt = Adam(random_arrays(0), lr=0.5)
    assert set(opt.state_arrays()) == {"optim.v.a", "optim.v.b", "optim.s.a", "optim.s.b"}
    assert opt.state_meta() == {"name": "adam", "lr": 0.5, "steps": 0}
    assert SGD(random_arrays(0), lr=1).state_arrays() == {}


@pytest.mark.parametrize("change, word", [
    (lambda a, m: m.update(name="sgd"), "'sgd'"),
    (lambda a, m: m.update(steps=-1), "step count"),
    (lambda a, m: m.update(steps=2.5), "step count"),
    (lambda a, m: a.pop("optim.s.b"), "optim.s.b"),
    (lambda a, m: a.update({"optim.v.a": np.zeros((4, 3))}), "optim.v.a"),
    (lambda a, m: a.update({"optim.v.a": np.zeros((3, 4), np.float32)}), "float32"),
])
def test_load_state_refuses_mismatched_state(change, word):
    opt = Adam(random_arrays(0), lr=0.1)
    run_steps(opt, [1])
    arrays, meta = dict(opt.state_arrays()), opt.state_meta()
    change(arrays, meta)
    fresh = Adam(random_arrays(0), lr=0.1)
    with pytest.raises(CharrnnError, match=word):
        fresh.load_state(arrays, meta)
    assert fresh.num_steps == 0 and not fresh.slots["v"]["a"].any()


@pytest.mark.parametrize("name, lr, word", [
    ("rmsprop", 0.1, "rmsprop"), ("SGD", 0.1, "SGD"), (None, 0.1, "None"),
    ("sgd", 0, "learning rate"), ("sgd", -1, "learning rate"),
    ("sgd", float("inf"), "learning rate"), ("adam", "0.1", "learning rate"),
])
def test_make_optimizer_rejects_bad_arguments(name, lr, word):
    with pytest.raises(CharrnnError, match=word):
        make_optimizer(name, random_arrays(0), lr)


# ------------------------------------------------------------------ training


@pytest.mark.parametrize("name, lr", [("sgd", 1.0), ("adagrad", 0.1), ("adam", 0.01)])
def test_optimizers_learn_a_repeating_pattern(name, lr):
    """SGD with lr 1 and clipping at 1 (the textbook's setting) and the others drive the loss
    on a periodic sequence far below its starting value of about log(vocab)."""
    m = RNNLM(5, 16, seed=0)
    pattern = np.array([0, 1, 2, 3, 4, 3, 2, 1])
    stream = np.tile(pattern, 40)
    X = np.stack([stream[i:i + 20] for i in range(0, 160, 20)])
    Y = np.stack([stream[i + 1:i + 21] for i in range(0, 160, 20)])
    opt = make_optimizer(name, m.params, lr)
    first = m.loss_and_grads(X, Y)[0]
    for _ in range(150):
        loss, grads, _ = m.loss_and_grads(X, Y)
        clip_grad_norm(grads, 1.0)
        opt.step(grads)
    assert first == pytest.approx(np.log(5), abs=0.01)
    assert loss < 0.15 * first
