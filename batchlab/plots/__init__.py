"""Figures drawn from the tables (matplotlib and seaborn), each saved as PNG and PDF.

Each figure is a function of the tables it reads, named in `FIGURES` (figure -> builder;
workflow/rules/figures.smk gives each the same tables by name):

Generalization (Masters & Luschi 2018), `generalization`:
- `training_curves` (runs, curves): train loss against epochs, one line per batch size, per
  model and LR rule, each batch size at its best base LR; band: range over seeds.
- `accuracy_vs_batch` (runs): final test accuracy against batch size, one line per LR rule,
  each batch size at its best base LR.
- `accuracy_vs_base_lr` (runs): final test accuracy against eta_tilde = eta / m, one line
  per batch size (the stable LR range).
- `generalization_gap` (runs): test minus train loss, and test error, against batch size.

Sharpness (Keskar et al. 2017), `sharpness`:
- `sharpness_vs_batch` (runs, sharpness): epsilon-sharpness, Hessian lambda_max and trace
  (with its Hutchinson interval) and test accuracy against batch size, at the best base LR
  chosen among all runs.
- `sharpness_along_training` (runs, sharpness): sharpness against the loss on the analysis
  subset along training, for the smallest (SB) and largest (LB) healthy batch.
- `interpolation` (interpolation): the 1-D parametric plot between SB and LB solutions.

Critical batch size (Golmant et al. 2018, Shallue et al. 2018, McCandlish et al. 2018), `critical`:
- `steps_to_target` (speedup, critical): steps to each target against batch size, with
  perfect scaling and what the fit says of B_crit (a number, a bound, or why neither).
- `speedup` (speedup): speed-up over the smallest batch, with its bootstrap interval.
- `best_lr` (speedup, runs): the tuned LR against batch size, marking the LRs at the edge of the grid.
- `noise_scale` (runs, sharpness, critical): B_simple and B_noise along training against the
  train loss, beside the measured B_crit, the train loss of the target (where the prediction is
  read) and the two noise-scale predictions of B_crit read there (batchlab.noise_prediction).
- `noise_vs_bcrit` (critical): the measured B_crit beside B_simple and B_noise read at the
  target, one row per study, model and training fraction for its first target.

Every figure draws from empty tables too (a panel that says why there is nothing to show),
and marks stalled and diverged runs where it shows them rather than dropping them. A figure has
a panel only for what the tables hold (a study with one LR rule gets no panels for the others),
wrapped into rows of up to four (five targets) so that many panels keep a window's shape.
"""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import pandas as pd

from batchlab.plots.common import figure_style, fit_titles, save_figure
from batchlab.plots.critical import (
    figure_best_lr, figure_noise_scale, figure_noise_vs_bcrit, figure_speedup, figure_steps_to_target,
)
from batchlab.plots.generalization import (
    figure_accuracy_vs_base_lr, figure_accuracy_vs_batch, figure_generalization_gap, figure_training_curves,
)
from batchlab.plots.sharpness import (
    final_sharpness, figure_interpolation, figure_sharpness_along_training, figure_sharpness_vs_batch,
    headline_sharpness,
)

__all__ = ["FIGURES", "build_figure", "draw_figure", "final_sharpness", "headline_sharpness"]

FIGURES = {
    "training_curves": figure_training_curves,
    "accuracy_vs_batch": figure_accuracy_vs_batch,
    "accuracy_vs_base_lr": figure_accuracy_vs_base_lr,
    "generalization_gap": figure_generalization_gap,
    "sharpness_vs_batch": figure_sharpness_vs_batch,
    "sharpness_along_training": figure_sharpness_along_training,
    "interpolation": figure_interpolation,
    "steps_to_target": figure_steps_to_target,
    "speedup": figure_speedup,
    "best_lr": figure_best_lr,
    "noise_scale": figure_noise_scale,
    "noise_vs_bcrit": figure_noise_vs_bcrit,
}


def build_figure(name: str, tables: dict[str, pd.DataFrame]) -> plt.Figure:
    """Figure `name` drawn from the tables it needs, passed by table name (runs, curves, ...), every panel title
    wrapped to its panel (`fit_titles`)."""
    if name not in FIGURES:
        raise ValueError(f"unknown figure {name!r}; choose one of {', '.join(FIGURES)}")
    with figure_style():
        fig = FIGURES[name](**tables)
        fit_titles(fig)
        return fig


def draw_figure(name: str, tables: dict[str, pd.DataFrame], png: str | os.PathLike, pdf: str | os.PathLike | None = None) -> None:
    """Draw figure `name` and save it as PNG (and PDF)."""
    fig = build_figure(name, tables)
    with figure_style():
        save_figure(fig, png, pdf)
