"""Figures for `charrnn analyze` and `charrnn compare`: one-line text charts (sparklines) for
the terminal, and matplotlib figures (the optional extra `plot`).

matplotlib is imported only here, and only when a figure is asked for; figures are drawn on a
bare Figure (no pyplot state, no display) and written atomically.
"""
from pathlib import Path

import numpy as np

from charrnn.base.errors import CharrnnError
from charrnn.base.io import write_atomic

FORMATS = ("png", "pdf", "svg")
SPARK_LEVELS = "▁▂▃▄▅▆▇█"


def chart_heights(values, log=True):
    """Values as a chart plots them: log10 (non-positive values: nan) or as they are."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log10(values) if log else np.asarray(values, dtype=np.float64)


def sparkline(values, width=40, log=True, scale_with=None):
    """A one-line chart of `values`, at most `width` characters, log scale by default.

    scale_with: the curves drawn beside it (values among them), to share one vertical scale.
    """
    heights = chart_heights(values, log)
    heights = heights[np.linspace(0, len(heights) - 1, min(width, len(heights))).round().astype(int)]
    scale = np.concatenate([chart_heights(v, log) for v in scale_with or [values]])
    shown, known = np.isfinite(heights), scale[np.isfinite(scale)]
    if not shown.any():
        return " " * len(heights)
    low, high = known.min(), known.max()
    levels = np.round(np.where(shown, heights - low, 0) / ((high - low) or 1.0) * (len(SPARK_LEVELS) - 1))
    return "".join(SPARK_LEVELS[int(level)] if ok else " " for level, ok in zip(levels, shown))


def check_plot_path(path) -> str:
    """Refuse early a figure that cannot be made: matplotlib missing, a file name that is not
    .png, .pdf or .svg, or a folder that does not exist -> the format."""
    kind = Path(path).suffix.lstrip(".").lower()
    if kind not in FORMATS:
        raise CharrnnError(f"cannot write a figure to {path}: use a .png, .pdf or .svg file name")
    if not Path(path).parent.is_dir():
        raise CharrnnError(f"cannot write a figure to {path}: no folder {Path(path).parent}")
    _figure_class()
    return kind


def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise CharrnnError("plots need matplotlib, which is not installed: "
                           "pip install -e '.[plot]' in a checkout, or pip install matplotlib") from None
    return Figure


def new_figure(num_panels, width=4.6, height=3.6):
    """A matplotlib Figure with `num_panels` axes side by side -> (figure, axes)."""
    figure = _figure_class()(figsize=(width * num_panels, height), layout="constrained")
    return figure, figure.subplots(1, num_panels, squeeze=False)[0]


def save_figure(figure, path) -> None:
    """Write `figure` to `path` (.png, .pdf or .svg, by its suffix), atomically."""
    kind = check_plot_path(path)
    write_atomic(path, lambda f: figure.savefig(f, format=kind, dpi=100))


def plot_analysis(analysis, path) -> None:
    """analysis (charrnn.analysis.gradients.GradientAnalysis) -> a figure: ‖∂L/∂h_t‖; the Jacobian product
    ‖∂h_t/∂h_0‖ (‖∂s_t/∂s_0‖ on the full state of a gated or stacked network), with ρ^t and
    σ_max^t for a one-layer rnn; the error of each truncation, relative to the full gradient."""
    figure, (grads, jacobians, errors) = new_figure(3)
    steps = np.arange(1, analysis.num_steps + 1)
    grads.semilogy(steps, analysis.hidden_grad_norms, color="C0")
    grads.set(title="gradient of each hidden state", xlabel="step t", ylabel="‖∂L/∂h_t‖")
    jacobians.semilogy(steps, analysis.jacobian_norms, color="C0", label=f"measured {analysis.jacobian_name()}")
    if analysis.spectral_radius is not None:
        jacobians.semilogy(steps, analysis.predicted_norms, "--", color="C1",
                           label=f"ρ(W_hh)^t, ρ = {analysis.spectral_radius:.3g}")
        jacobians.semilogy(steps, analysis.singular_bound, ":", color="C2",
                           label=f"σ_max(W_hh)^t, σ = {analysis.largest_singular_value:.3g}")
    jacobians.set(title=f"Jacobian product ({analysis.network})", xlabel="steps back t")
    jacobians.legend(fontsize="small")
    names = [error.truncation for error in analysis.truncations]
    x = np.arange(len(names))
    errors.bar(x - 0.2, [e.relative_bias for e in analysis.truncations], 0.4, label="‖mean - full‖")
    errors.bar(x + 0.2, [e.relative_spread for e in analysis.truncations], 0.4, label="spread of one draw")
    errors.set_xticks(x, names)
    errors.set(title="truncated vs full gradient", ylabel="relative to ‖full gradient‖")
    errors.legend(fontsize="small")
    save_figure(figure, path)


def plot_analyses(analyses, sources, path) -> None:
    """Several GradientAnalysis (e.g. an rnn, a gru and an lstm) -> one figure: ‖∂L/∂h_t‖ and the
    Jacobian product of each (full state for gated or stacked networks), one curve per model."""
    figure, (grads, jacobians) = new_figure(2, width=5.4)
    networks = [analysis.network for analysis in analyses]
    for index, (analysis, source) in enumerate(zip(analyses, sources)):
        steps = np.arange(1, analysis.num_steps + 1)
        label = analysis.network if networks.count(analysis.network) == 1 else f"{analysis.network} ({source})"
        grads.semilogy(steps, analysis.hidden_grad_norms, color=f"C{index}", label=label)
        jacobians.semilogy(steps, analysis.jacobian_norms, color=f"C{index}",
                           label=f"{analysis.jacobian_name()}, {label}")
    grads.set(title="gradient of each hidden state", xlabel="step t", ylabel="‖∂L/∂h_t‖")
    jacobians.set(title="Jacobian product over the window (s: full state)", xlabel="steps back t")
    for axes in (grads, jacobians):
        axes.legend(fontsize="small")
    save_figure(figure, path)


def plot_comparison(comparison, path) -> None:
    """comparison (charrnn.experiments.compare.Comparison) -> the mean validation perplexity of each strategy
    against tokens, and its paired difference from the baseline, each with its confidence band."""
    figure, (curves, differences) = new_figure(2)
    for color, (truncation, (xs, means, lows, highs)) in enumerate(comparison.mean_curves().items()):
        curves.plot(xs, means, marker=".", color=f"C{color}", label=truncation)
        curves.fill_between(xs, lows, highs, color=f"C{color}", alpha=0.2, linewidth=0)
        if truncation in comparison.difference_curves():
            xs, means, lows, highs = comparison.difference_curves()[truncation]
            differences.plot(xs, means, marker=".", color=f"C{color}", label=truncation)
            differences.fill_between(xs, lows, highs, color=f"C{color}", alpha=0.2, linewidth=0)
    seeds = comparison.num_seeds()
    curves.set_yscale("log")  # a run that blows up early spans decades; a band below zero is clipped
    curves.set(xlabel="training tokens", ylabel="validation perplexity (log scale)",
               title=f"mean of {seeds} seed{'s' if seeds != 1 else ''}, {comparison.confidence:.0%} band")
    curves.legend()
    differences.axhline(0, color="0.5", linewidth=0.8)
    differences.set_yscale("symlog", linthresh=1)  # linear within ±1, logarithmic beyond
    differences.set(xlabel="training tokens", ylabel=f"minus {comparison.baseline}, seed by seed (symlog)",
                    title=f"difference from {comparison.baseline}, {comparison.confidence:.0%} band")
    save_figure(figure, path)


def plot_runs(histories, path) -> None:
    """histories ([charrnn.analysis.curves.RunHistory]) -> training (dashed) and validation (solid)
    perplexity against tokens, one colour per run, log scale."""
    figure, (axes,) = new_figure(1, width=6.4, height=4.2)
    for i, history in enumerate(histories):
        for values, style, what in ((history.val_ppl, "-", "validation"), (history.train_ppl, "--", "training")):
            points = [(t, p) for t, p in zip(history.tokens, values) if p is not None]
            if points:
                axes.plot(*zip(*points), style, marker="." if style == "-" else None, color=f"C{i % 10}",
                          label=f"{history.name} ({what})")
    axes.set(xlabel="training tokens", ylabel="perplexity", yscale="log")
    axes.legend(fontsize="small")
    save_figure(figure, path)
