"""Heatmaps of importance maps: heads as layer x head, MLPs as one column per layer.

Matplotlib's object API (no pyplot: no global backend, no figure registry), written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from iclvsft_tasks.atomic import save_figure


def plot_map(
    heads: np.ndarray,
    mlps: np.ndarray,
    path: str | os.PathLike[str],
    title: str,
    diverging: bool = False,
    head_max: float | None = None,
    mlp_max: float | None = None,
) -> Path:
    """One PNG: ``heads`` [layers, heads] and ``mlps`` [layers] side by side, layer 0 at the top.

    ``diverging``: a difference map, drawn on a red-blue scale symmetric around 0. ``head_max`` /
    ``mlp_max`` fix the colour range so that several figures share one scale.
    """
    from matplotlib.figure import Figure

    heads, mlps = np.asarray(heads, dtype=float), np.asarray(mlps, dtype=float)
    layers, n_heads = heads.shape
    fig = Figure(figsize=(3.2 + 0.45 * n_heads, 1.6 + 0.28 * layers), layout="constrained")
    ax_h, ax_m = fig.subplots(1, 2, width_ratios=[max(n_heads, 1), 1.3])
    for ax, data, vmax, label in ((ax_h, heads, head_max, "heads"), (ax_m, mlps.reshape(-1, 1), mlp_max, "MLPs")):
        top = vmax if vmax is not None else float(np.abs(data).max() or 1.0)
        top = top or 1.0
        if diverging:
            image = ax.imshow(data, cmap="RdBu_r", vmin=-top, vmax=top, aspect="auto", interpolation="nearest")
        else:
            image = ax.imshow(data, cmap="viridis", vmin=0, vmax=top, aspect="auto", interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.set_yticks(range(layers))
        ax.set_yticklabels([str(i) for i in range(layers)], fontsize=7)
        fig.colorbar(image, ax=ax, shrink=0.8)
    ax_h.set_xticks(range(n_heads))
    ax_h.set_xticklabels([str(i) for i in range(n_heads)], fontsize=7)
    ax_h.set_xlabel("head")
    ax_h.set_ylabel("layer")
    ax_m.set_xticks([])
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=100)
