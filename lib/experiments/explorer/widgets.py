"""The explorer's controls: ipywidgets sliders wired to :func:`~lib.experiments.explorer.compute.explore`."""
from __future__ import annotations

import asyncio
import base64
import html
from typing import Any

from lib.core.quantizers import STE_VARIANTS

from .compute import NUM_DIMS, SAMPLES, ExplorerResult, explore, explorer_params
from .figure import figure_png, plot_explorer

DEBOUNCE_S = 0.3  # seconds the controls must stay still before a recompute starts
# The values the report's grids use (params/toy.yaml and toy_pretrained.yaml), as plain numbers.
STEPS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)  # CDG ε and NES σ
LRS = (1e-5, 3e-5, 1e-4, 3e-4, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def _options(grid: tuple[float, ...], *values: float) -> list[tuple[str, float]]:
    """``(label, value)`` pairs of ``grid`` in plain numbers; a value off the grid (e.g. tiny test
    parameters) joins it."""
    return [(f"{v:g}", v) for v in sorted(set(grid) | {float(v) for v in values})]


def make_widgets(num_dim: int = 16, eps: float = 0.1, sigma: float = 0.1, samples: int = 500,
                 lr_min: float = 1e-5, lr_max: float = 10.0, pretrained: bool = False,
                 variant: str = "clipped", held_out: bool = True) -> dict[str, Any]:
    """The controls, keyed by :func:`explore` argument (``lr_range`` holds ``(lr_min, lr_max)``),
    all with ``continuous_update=False`` where the widget has it; ε, σ and the lr range step
    through the report's grid values (:data:`STEPS`, :data:`LRS`)."""
    import ipywidgets as W

    explorer_params(num_dim=num_dim, eps=eps, sigma=sigma, samples=samples, lr_min=lr_min, lr_max=lr_max,
                    pretrained=pretrained, variant=variant, held_out=held_out)
    style = {"description_width": "90px"}
    layout = W.Layout(width="340px")
    common = dict(continuous_update=False, style=style, layout=layout)
    # A value off the standard choices (e.g. tiny test parameters) joins the options.
    dims = sorted(set(NUM_DIMS) | {int(num_dim)})
    counts = sorted(set(SAMPLES) | {int(samples)})
    return {
        "num_dim": W.SelectionSlider(options=dims, value=int(num_dim), description="num_dim", **common),
        "eps": W.SelectionSlider(options=_options(STEPS, eps), value=float(eps), description="CDG ε", **common),
        "sigma": W.SelectionSlider(options=_options(STEPS, sigma), value=float(sigma), description="NES σ", **common),
        "samples": W.SelectionSlider(options=counts, value=int(samples), description="NES samples", **common),
        "lr_range": W.SelectionRangeSlider(options=_options(LRS, lr_min, lr_max), value=(float(lr_min), float(lr_max)),
                                           description="lr range", **common),
        "pretrained": W.Checkbox(value=pretrained, description="pretrained student", indent=False,
                                 layout=W.Layout(width="200px")),
        "held_out": W.Checkbox(value=held_out, description="held out, hidden layers (the report's)",
                               indent=False, layout=W.Layout(width="300px")),
        "variant": W.Dropdown(options=list(STE_VARIANTS), value=variant, description="STE variant",
                              style=style, layout=layout),
    }


class ExplorerApp:
    """ipywidgets front end of :func:`explore`: every control change (on release) recomputes and
    redraws into ``output`` (a PNG display-data entry, or the error text).

    ``calls`` counts updates (``cancelled`` the queued ones a newer change replaced), ``last_result`` / ``last_figure`` hold the latest ones, ``ui`` is the
    widget to display. Extra keyword arguments (``batch_size``, ``seed``, ``cache_dir``,
    ``pretrain_steps`` …) are passed to every :func:`explore` call.
    """

    def __init__(self, num_dim: int = 16, eps: float = 0.1, sigma: float = 0.1, samples: int = 500,
                 lr_min: float = 1e-5, lr_max: float = 10.0, pretrained: bool = False, variant: str = "clipped",
                 held_out: bool = True, auto_update: bool = True, **explore_kwargs: Any) -> None:
        import ipywidgets as W

        self.explore_kwargs = explore_kwargs
        self.controls = make_widgets(num_dim, eps, sigma, samples, lr_min, lr_max, pretrained, variant, held_out)
        self.output = W.Output(layout=W.Layout(min_height="380px"))
        self.status = W.HTML(value="")
        self.calls = 0
        self.cancelled = 0  # recomputes a newer change cancelled before they started
        self._pending: asyncio.TimerHandle | None = None
        self.last_result: ExplorerResult | None = None
        self.last_figure = None
        self.last_error: str | None = None
        for w in self.controls.values():
            w.observe(self._on_change, names="value")
        c = self.controls
        self.ui = W.VBox([
            W.HBox([W.VBox([c["num_dim"], c["eps"], c["sigma"], c["samples"]]),
                    W.VBox([c["lr_range"], c["variant"], c["pretrained"], c["held_out"], self.status])]),
            self.output,
        ])
        if auto_update:
            self.update()

    def arguments(self) -> dict[str, Any]:
        """The :func:`explore` arguments the controls stand for now."""
        c = self.controls
        lo, hi = c["lr_range"].value
        return {"num_dim": c["num_dim"].value, "eps": float(c["eps"].value), "sigma": float(c["sigma"].value),
                "samples": c["samples"].value, "lr_min": float(lo), "lr_max": float(hi),
                "pretrained": bool(c["pretrained"].value), "variant": c["variant"].value,
                "held_out": bool(c["held_out"].value), **self.explore_kwargs}

    def _on_change(self, change: dict[str, Any]) -> None:
        """Recompute once the controls have been still for :data:`DEBOUNCE_S`: a newer change
        cancels the recompute an earlier one queued. Without a running event loop (a script, a
        test), at once."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.update()
            return
        if self._pending is not None:
            self._pending.cancel()
            self.cancelled += 1
        self._pending = loop.call_later(DEBOUNCE_S, self._run_pending)

    def _run_pending(self) -> None:
        self._pending = None
        self.update()

    def update(self) -> ExplorerResult | None:
        """Recompute with the current controls and redraw; errors are shown, not raised."""
        self.calls += 1
        self.status.value = "<i>computing…</i>"
        try:
            result = explore(**self.arguments())
            fig = plot_explorer(result)
            png = figure_png(fig)
        except (ValueError, FloatingPointError) as err:
            self.last_error = f"{type(err).__name__}: {err}"
            self.output.outputs = ({"output_type": "stream", "name": "stderr", "text": self.last_error + "\n"},)
            self.status.value = f"<b>error</b>: {html.escape(self.last_error)}"
            return None
        self.last_error = None
        self.last_result, self.last_figure = result, fig
        b = result.best
        summary = ", ".join(f"{k} {b[k][0]:.3g}@{b[k][1]:.2g}" for k in ("cdg", "nes", "ste", "exact"))
        self.output.outputs = ({"output_type": "display_data",
                                "data": {"image/png": base64.b64encode(png).decode("ascii"),
                                         "text/plain": f"<explorer figure: best ΔL@lr {summary}>"},
                                "metadata": {}},)
        self.status.value = f"computed in {result.wall_s:.2f} s" + (
            f" (pretrain {'cached' if result.pretrain['cached'] else 'trained'}, "
            f"loss {result.pretrain['final_loss']:.3g})" if result.pretrain else "")
        return result

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.ui)
