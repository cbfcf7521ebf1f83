"""The state reset at record boundaries (model.py, records.py): a packed minibatch, rows
taking the next record where one ends, is the records trained one at a time from a zero state,
to float64 rounding, for every cell; and a window without boundaries is the stream's, bit for bit."""
import numpy as np
import pytest

from charrnn.nn.model import RNNLM
from charrnn.nn.recompute import loss_and_grads_recompute

V = 7
LENGTHS = [[3, 5, 4], [6, 6], [1, 2, 9], [12]]  # the records of each row, whole in a window of 12 steps


def packed_window(rng):
    """Rows of records (ids of each record drawn at random) -> X, Y, resets, and the records."""
    rows, records = [], []
    for lengths in LENGTHS:
        x_row, y_row, starts = [], [], []
        for n in lengths:
            tokens = rng.integers(0, V, n + 1)
            starts.append(len(x_row))
            x_row += tokens[:-1].tolist()
            y_row += tokens[1:].tolist()
            records.append((tokens[:-1], tokens[1:]))
        reset = np.zeros(len(x_row), bool)
        reset[starts] = True
        rows.append((x_row, y_row, reset))
    X, Y, resets = (np.array([row[k] for row in rows]) for k in range(3))
    return X, Y, resets, records


def one_at_a_time(model, records):
    """Σ over the records of the summed loss and gradient, each alone from a zero state."""
    total, grads = 0.0, {name: np.zeros_like(value) for name, value in model.params.items()}
    for x, y in records:
        loss, g, _ = model.loss_and_grads(x[None], y[None])
        total += loss * len(x)
        for name in grads:
            grads[name] += g[name] * len(x)
    return total, grads


@pytest.mark.parametrize("cell, layers", [("rnn", 1), ("rnn", 2), ("gru", 2), ("lstm", 2)])
def test_a_packed_minibatch_equals_its_records_trained_one_at_a_time(cell, layers):
    rng = np.random.default_rng(1)
    model = RNNLM(V, 5, dtype="float64", seed=3, cell=cell, num_layers=layers)
    for value in model.params.values():
        value += rng.normal(0, 0.3, value.shape)
    X, Y, resets, records = packed_window(rng)
    state = rng.normal(0, 1, model.state_shape(len(X)))  # every row starts a record: no effect
    loss, grads, _ = model.loss_and_grads(X, Y, state, resets=resets)
    expected_loss, expected = one_at_a_time(model, records)
    assert loss * X.size == pytest.approx(expected_loss, rel=1e-13)
    for name, grad in grads.items():
        np.testing.assert_allclose(grad * X.size, expected[name], rtol=1e-11, atol=1e-14, err_msg=name)
    loss_r, grads_r, _ = loss_and_grads_recompute(model, X, Y, state, resets=resets, segment_steps=5)
    assert loss_r == pytest.approx(loss, rel=1e-13)
    for name, grad in grads_r.items():
        np.testing.assert_allclose(grad, grads[name], rtol=1e-11, atol=1e-15, err_msg=name)


def test_a_record_continued_from_the_carried_state_is_not_reset():
    """A row whose first record began in the previous window keeps its state until its next start."""
    rng = np.random.default_rng(2)
    model = RNNLM(V, 6, dtype="float64", seed=0, cell="lstm", num_layers=2)
    x, y = rng.integers(0, V, (2, 1, 10))
    whole, _, _ = model.forward_loss(x, y)
    _, _, state = model.forward_loss(x[:, :4], y[:, :4])
    rest_x = np.concatenate([x[:, 4:], rng.integers(0, V, (1, 3))], axis=1)
    rest_y = np.concatenate([y[:, 4:], rng.integers(0, V, (1, 3))], axis=1)
    resets = np.zeros(rest_x.shape, bool)
    resets[0, 6] = True
    head, _, _ = model.forward_loss(x[:, :4], y[:, :4])
    rest, _, _ = model.forward_loss(rest_x[:, :6], rest_y[:, :6], state)
    packed, _, _ = model.forward_loss(rest_x, rest_y, state, resets=resets)
    alone, _, _ = model.forward_loss(rest_x[:, 6:], rest_y[:, 6:])
    assert head + rest == pytest.approx(whole, rel=1e-13)
    assert packed == pytest.approx(rest + alone, rel=1e-13)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_no_boundary_in_the_window_gives_the_streams_numbers_bit_for_bit(cell):
    rng = np.random.default_rng(4)
    model = RNNLM(V, 8, seed=1, cell=cell, num_layers=2)
    X, Y = rng.integers(0, V, (2, 3, 9))
    plain = model.loss_and_grads(X, Y)
    model.loss_and_grads(X, Y, resets=np.eye(3, 9, 2, dtype=bool))  # the workspace used with resets first
    none = model.loss_and_grads(X, Y, resets=np.zeros((3, 9), bool))
    assert plain[0] == none[0]
    for name in plain[1]:
        assert np.array_equal(plain[1][name], none[1][name])


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_the_fused_kernels_give_way_to_numpys_steps_where_records_start(cell):
    """The compiled steps read h_{t-1} itself, not ρ_t ⊙ h_{t-1}: a window with record starts
    runs NumPy's steps, so kernel "fused" gives the numbers of kernel "numpy" there."""
    rng = np.random.default_rng(5)
    X, Y, resets, _ = packed_window(rng)
    results = []
    for kernel in ("numpy", "fused"):
        model = RNNLM(V, 8, seed=2, cell=cell, num_layers=2, kernel=kernel)
        results.append(model.loss_and_grads(X, Y, resets=resets))
    assert results[0][0] == results[1][0]
    for name, grad in results[0][1].items():
        assert np.array_equal(grad, results[1][1][name]), name


def test_a_records_validation_pass_stops_within_a_batch_when_asked():
    """records_loss asks should_stop before each packed batch, as mean_loss does before each chunk
    (a signal is honoured within a validation pass, charrnn.training.loop.Run.should_stop)."""
    from charrnn.data.records import RecordSet
    from charrnn.infer.evaluate import EvaluationStopped
    from charrnn.infer.records_eval import records_loss
    lengths = [5, 9, 3, 12, 7, 4]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    records = RecordSet(np.arange(sum(lengths)) % 5, starts, starts + np.array(lengths), np.arange(6) + 1, 5, 6)
    model = RNNLM(7, 6, dtype="float64", seed=0, cell="gru")
    asked = []
    with pytest.raises(EvaluationStopped):
        records_loss(model, records, batch_size=2, num_steps=4, should_stop=lambda: asked.append(1) or len(asked) > 2)
    assert len(asked) == 3  # two batches done, stopped before the third
    whole = records_loss(model, records, batch_size=2, num_steps=4)
    assert records_loss(model, records, batch_size=2, num_steps=4, should_stop=lambda: False) == whole
