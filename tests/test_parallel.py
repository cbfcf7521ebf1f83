"""Data-parallel BPTT (docs/parallel.md), the parts that need no MPI: the split of a batch into ranks'
rows, the shared random streams sliced per rank, the share-weighted sum that equals the whole
batch's gradient (eq. 9.7.2), what `--procs` decides and says. tests/test_mpi.py runs the ranks."""
import copy

from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from charrnn import cli
from charrnn.base.errors import CharrnnError
from charrnn.nn.model import RNNLM
from charrnn.nn.recompute import loss_and_grads_recompute
from charrnn.runtime import launch
from charrnn.training.config import CELL_DEFAULTS, TrainConfig
from charrnn.training.parallel import RowShare, describe_error, follow, split_rows
from charrnn.training.start import load_data


@pytest.mark.parametrize("batch_size", [1, 2, 5, 7, 64])
@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_a_batch_splits_into_contiguous_blocks_as_even_as_possible(batch_size, size):
    blocks = [split_rows(batch_size, size, rank) for rank in range(size)]
    rows = [row for block in blocks for row in range(block.start, block.stop)]
    assert rows == list(range(batch_size))
    lengths = [block.stop - block.start for block in blocks]
    assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)


@pytest.mark.parametrize("rows", [slice(0, 3), slice(3, 5), slice(5, 7), slice(0, 7)])
def test_a_large_row_share_skips_the_other_rows_to_the_same_numbers_and_state(rows):
    shared, whole = np.random.default_rng(8), np.random.default_rng(8)
    share = RowShare(shared, rows, 7)
    size = (2, rows.stop - rows.start, RowShare.SKIP_FROM)
    np.testing.assert_array_equal(share.random(size), whole.random((2, 7, RowShare.SKIP_FROM))[:, rows])
    assert shared.bit_generator.state == whole.bit_generator.state
    np.testing.assert_array_equal(share.random((1, size[1], 3)), whole.random((1, 7, 3))[:, rows])  # small: sliced


def test_a_row_share_draws_the_whole_batch_and_keeps_its_rows():
    shared, whole = np.random.default_rng(3), np.random.default_rng(3)
    share = RowShare(shared, slice(2, 4), 5)
    np.testing.assert_array_equal(share.random((3, 2, 4)), whole.random((3, 5, 4))[:, 2:4])
    assert shared.bit_generator.state == whole.bit_generator.state  # the stream moved as for the whole batch
    twin = copy.deepcopy(share)  # what recompute.py redraws a segment from
    assert isinstance(twin, RowShare) and (twin.rows, twin.batch_size) == (slice(2, 4), 5)
    np.testing.assert_array_equal(twin.random((1, 2, 3)), share.random((1, 2, 3)))


@pytest.mark.parametrize("skip_from", [RowShare.SKIP_FROM, 1])  # 1: every draw skips the other rows
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_the_share_weighted_sum_of_row_blocks_is_the_whole_batch_gradient(cell, skip_from, monkeypatch):
    """Σ_r (b_r/B) ∇L_r = ∇L for 1-3 blocks, 2 layers, dropout, randomized truncation, carried
    state, plain and recomputing BPTT: the same up to the order of floating-point sums."""
    monkeypatch.setattr(RowShare, "SKIP_FROM", skip_from)
    B, T, V = 7, 9, 11
    model = RNNLM(V, 6, dtype="float64", seed=1, cell=cell, num_layers=2, dropout=0.3)
    data = np.random.default_rng(0)
    X, Y = data.integers(0, V, (B, T)), data.integers(0, V, (B, T))
    state = data.standard_normal(model.state_shape(B))
    streams = lambda: (np.random.default_rng(5), np.random.default_rng(6))  # noqa: E731
    truncation_rng, dropout_rng = streams()
    loss, grads, last = model.loss_and_grads(X, Y, state, "randomized:0.6", truncation_rng, dropout_rng)
    for size in (1, 2, 3):
        total_loss, total = 0.0, {name: 0.0 for name in grads}
        for rank in range(size):
            rows, (t_rng, d_rng) = split_rows(B, size, rank), streams()
            args = (X[rows], Y[rows], state[..., rows, :])
            draws = dict(truncation="randomized:0.6", rng=RowShare(t_rng, rows, B),
                         dropout_rng=RowShare(d_rng, rows, B))
            part = (loss_and_grads_recompute(model, *args, segment_steps=4, **draws) if rank % 2
                    else model.loss_and_grads(*args, **draws))
            share = (rows.stop - rows.start) / B
            total_loss += share * part[0]
            total = {name: total[name] + share * part[1][name] for name in grads}
            np.testing.assert_allclose(part[2], last[..., rows, :], rtol=1e-13, atol=1e-15)
            assert t_rng.bit_generator.state == truncation_rng.bit_generator.state
            assert d_rng.bit_generator.state == dropout_rng.bit_generator.state
        assert total_loss == pytest.approx(loss, rel=1e-14)
        for name, grad in grads.items():
            assert np.abs(total[name] - grad).max() <= 1e-13 * np.abs(grad).max(), name


def test_auto_keeps_a_tiny_network_on_one_process_and_says_so():
    tiny = launch.step_flops(64, 32, 16, 1, "rnn", 100)
    assert launch.resolve_procs("auto", 4, tiny)[0] == 1
    assert "too small to gain" in launch.resolve_procs("auto", 4, tiny)[1]
    default = launch.step_flops(64, 32, 256, 1, "rnn", 28)  # the default network on the book
    assert launch.resolve_procs("auto", 4, default) == (4, None)
    assert launch.resolve_procs("auto", 1, default)[0] == 1
    assert launch.resolve_procs(3, 1, tiny) == (3, None)  # a number is taken as given
    for cell, defaults in CELL_DEFAULTS.items():
        assert launch.step_flops(64, 32, defaults["num_hiddens"], defaults["num_layers"], cell,
                                 28) >= launch.PARALLEL_MIN_FLOPS, cell


def test_the_ranks_get_the_train_arguments_without_procs():
    argv = ["--threads", "2", "train", "book.txt", "--procs", "2", "--lr", "0.1", "--procs=auto", "--out", "d"]
    assert launch.rank_arguments(argv) == ["book.txt", "--lr", "0.1", "--out", "d"]


def test_mpiexec_is_recognised_from_its_environment():
    assert (launch.world_size({}), launch.world_rank({})) == (1, 0)
    assert (launch.world_size({"PMI_SIZE": "3"}), launch.world_rank({"PMI_RANK": "2"})) == (3, 2)
    assert launch.world_size({"OMPI_COMM_WORLD_SIZE": "4"}) == 4


def test_the_launcher_turns_mpich_s_banner_about_a_dead_rank_into_one_line(tmp_path):
    (tmp_path / "rank-1").write_text("4242")
    watcher = launch.Watcher(SimpleNamespace(pid=1), tmp_path)
    watcher.banner = ["=   PID 4242 RUNNING AT host", "=   EXIT CODE: 9",
                      "YOUR APPLICATION TERMINATED WITH THE EXIT STRING: Killed (signal 9)"]
    assert watcher.death_line(2) == ("Error: rank 1 (pid 4242) of 2 died (Killed (signal 9)); "
                                     "the other ranks were stopped")
    assert launch.BANNER.match("===================") and not launch.BANNER.match("epoch 1 ===")


def test_an_error_on_a_rank_is_one_line():
    assert describe_error(CharrnnError("no such\ncorpus")) == "no such corpus"
    assert describe_error(KeyboardInterrupt()) == "interrupted"
    assert describe_error(FileNotFoundError(2, "No such file", "x.txt")) == "No such file: x.txt"
    assert describe_error(ZeroDivisionError("boom")).startswith("unexpected ZeroDivisionError: boom")


def test_procs_without_mpi_names_the_extra_to_install_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(launch, "importlib", SimpleNamespace(util=SimpleNamespace(find_spec=lambda name: None)))
    result = CliRunner().invoke(cli.main, ["train", str(tmp_path / "t.txt"), "--procs", "2"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: --procs needs MPI for Python (mpi4py and an MPI), which is not installed: pip install 'charrnn[mpi]'"]
    result = CliRunner().invoke(cli.main, ["train", "--procs", "0"])
    assert result.exit_code == 2 and "processes must be 'auto' or an integer >= 1" in result.output


def test_procs_auto_trains_a_tiny_network_here_and_says_so(monkeypatch, tmp_path, write_words):
    monkeypatch.setattr(launch, "mpi_problem", lambda: None)
    text = write_words(tmp_path / "words.txt", 300, seed=1)
    result = CliRunner().invoke(cli.main, ["train", str(text), "--procs", "auto", "--num-hiddens", "8",
                                           "--batch-size", "4", "--num-steps", "8", "--max-tokens", "400",
                                           "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "training on one process" in result.output and (tmp_path / "run" / "checkpoint.npz").is_file()


def test_a_rank_that_reads_another_text_than_rank_0_refuses_to_join(tmp_path, write_words):
    text = write_words(tmp_path / "words.txt", 300, seed=2)
    config = TrainConfig(corpus=str(text), num_hiddens=8, batch_size=4, num_steps=8)
    vocab = load_data(config, None)[2]
    spec = {"config": config, "vocab": vocab, "training": SimpleNamespace(data_id="0" * 40)}  # rank 0's text
    ranks = SimpleNamespace(rank=1, size=2, comm=SimpleNamespace(bcast=lambda obj, root: spec))
    with pytest.raises(CharrnnError, match=r"^the text '.*words.txt' read here is not the one rank 0 trains on"):
        follow(ranks)
