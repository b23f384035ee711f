"""Pictures of diffusion: image grids, denoising trajectories, interpolations and animations.

Conventions:

- Images are tensors in [-1, 1] shaped [B, C, H, W] with C = 1 (grey) or 3 (RGB), the package's
  convention; a single image [C, H, W] is accepted as a batch of one. Numpy arrays work too.
- Grids put ``nrow`` images in each row (as torchvision does) with ``padding`` pixels between the
  images and around the border; ``pad_value`` is on the images' own [-1, 1] scale (1 = white).
- Time labels: code index ``t`` in {0, ..., T-1} is the paper's step ``t + 1``. Figures label
  steps the paper's way by default (``paper_steps=True``); the trajectory from
  :meth:`ddpm.diffusion.GaussianDiffusion.sample` records code indices.
- Files are written atomically (a temporary file in the same folder, then ``os.replace``), and
  parent folders are created. Helpers that save close the figures they make; functions that return
  a figure leave closing it to the caller (``plt.close(fig)`` in loops).
- Animations are rendered to HTML with :func:`animation_html` (``to_jshtml``), so the static book
  shows them: ``IPython.display.HTML(animation_html(anim))``.

matplotlib and Pillow are imported only inside the functions that need them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .checkpoint import atomic_write

if TYPE_CHECKING:
    from matplotlib.animation import FuncAnimation
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "animate_frames",
    "animation_html",
    "interpolation_figure",
    "make_grid",
    "progressive_figure",
    "save_figure",
    "save_gif",
    "save_image_grid",
    "show_images",
    "to_uint8",
]


# ---------------------------------------------------------------------- input checks
def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch tensor or numpy array, got {type(x).__name__}")
    return x.detach().cpu()


def _as_images(x, name: str = "x") -> torch.Tensor:
    """Check a batch of images [B, C, H, W] (or one image [C, H, W]); return [B, C, H, W]."""
    x = _as_tensor(x, name)
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4:
        raise ValueError(f"{name} must be [B, C, H, W] or [C, H, W], got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)})")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have 1 or 3 channels, got shape {tuple(x.shape)}")
    return x


def _stack(items, name: str) -> torch.Tensor:
    """A tensor, or a sequence of equally shaped tensors stacked along a new first dimension."""
    if isinstance(items, (torch.Tensor, np.ndarray)):
        return _as_tensor(items, name)
    items = [_as_tensor(v, f"{name}[{i}]") for i, v in enumerate(items)]
    if not items:
        raise ValueError(f"{name} is empty")
    for i, v in enumerate(items):
        if v.shape != items[0].shape:
            raise ValueError(
                f"{name} have inconsistent shapes: {name}[0] is {tuple(items[0].shape)}, "
                f"{name}[{i}] is {tuple(v.shape)}"
            )
    return torch.stack(items)


def _subsample(n: int, max_frames: int | None) -> list[int]:
    """At most ``max_frames`` evenly spaced indices into range(n), keeping the first and last."""
    if max_frames is None or n <= max_frames:
        return list(range(n))
    if max_frames < 2:
        raise ValueError(f"max_frames must be >= 2 (first and last are kept), got {max_frames}")
    return [int(i) for i in np.linspace(0, n - 1, max_frames).round()]


# ---------------------------------------------------------------------- pixels and grids
def to_uint8(x) -> torch.Tensor:
    """[-1, 1] floats -> uint8 levels 0..255, same shape: ``round((clamp(x) + 1) * 127.5)``.

    Rounds half up, so -1 -> 0, 0 -> 128 (127.5 rounds up) and 1 -> 255; values outside [-1, 1]
    are clamped and NaN shows as 128 (mid-grey), so a diverged sample still displays.
    """
    x = _as_tensor(x, "x").to(torch.float32)
    x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0).clamp(-1.0, 1.0)
    return torch.floor((x + 1.0) * 127.5 + 0.5).to(torch.uint8)


def make_grid(x, nrow: int | None = None, padding: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """Tile a batch [B, C, H, W] in [-1, 1] into one uint8 picture (no torchvision needed).

    ``nrow`` images per row (default ceil(sqrt(B))), ``padding`` pixels of ``pad_value`` (on the
    [-1, 1] scale) between images and around the border; unused cells are padding too. Returns
    a numpy uint8 array [H', W'] for grey images (C = 1, ready for imshow and PIL) and
    [H', W', 3] for RGB, with H' = rows * (H + padding) + padding, likewise W'.
    """
    x = _as_images(x)
    b, c, h, w = x.shape
    if nrow is None:
        nrow = math.ceil(math.sqrt(b))
    if isinstance(nrow, bool) or not isinstance(nrow, int) or nrow < 1:
        raise ValueError(f"nrow must be a positive integer, got {nrow!r}")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be a non-negative integer, got {padding!r}")
    ncol = min(nrow, b)
    nrows = math.ceil(b / ncol)
    p = padding
    pad = int(to_uint8(torch.tensor(float(pad_value))))
    grid = np.full((nrows * (h + p) + p, ncol * (w + p) + p, c), pad, dtype=np.uint8)
    pixels = to_uint8(x).permute(0, 2, 3, 1).numpy()
    for i in range(b):
        r, col = divmod(i, ncol)
        top, left = p + r * (h + p), p + col * (w + p)
        grid[top : top + h, left : left + w] = pixels[i]
    return grid[..., 0] if c == 1 else grid


def _upscale(img: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling by an integer factor (8x8 digits are tiny on screen)."""
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    return img.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else img


def save_image_grid(
    x, path, nrow: int | None = None, scale: int = 1, padding: int = 1, pad_value: float = 1.0
) -> Path:
    """Save a batch [B, C, H, W] in [-1, 1] as one PNG grid (see :func:`make_grid`).

    ``scale`` is an integer nearest-neighbour upscaling factor. Returns the path.
    """
    from PIL import Image

    grid = _upscale(make_grid(x, nrow, padding, pad_value), scale)
    image = Image.fromarray(grid)
    return atomic_write(path, lambda f: image.save(f, format="PNG"))


# ---------------------------------------------------------------------- matplotlib figures
def _imshow(ax: Axes, grid: np.ndarray):
    """Show a uint8 grid pixel for pixel: grey colormap for 2-D, no smoothing, fixed 0..255."""
    cmap = "gray" if grid.ndim == 2 else None
    return ax.imshow(grid, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")


def _bare(ax: Axes) -> None:
    """No ticks or frame, but keep the title and the y label (row names)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def show_images(
    x, nrow: int | None = None, ax: Axes | None = None, title: str | None = None, padding: int = 1
) -> Axes:
    """Show a batch [B, C, H, W] in [-1, 1] as one grid on ``ax`` (a new figure if None).

    Grey colormap for one channel, nearest interpolation, no axes. Returns the axes.
    """
    grid = make_grid(x, nrow, padding)
    if ax is None:
        import matplotlib.pyplot as plt

        height = min(6.0, max(2.0, grid.shape[0] / 12))
        _, ax = plt.subplots(figsize=(height * grid.shape[1] / grid.shape[0], height))
    _imshow(ax, grid)
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title)
    return ax


def _image_table(n_rows: int, n_cols: int, image_size: float, title: str | None) -> tuple:
    """A figure with an [n_rows, n_cols] array of axes, one image each."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        n_rows,
        n_cols,
        figsize=(n_cols * image_size + 0.6, n_rows * image_size + (0.6 if title else 0.3)),
        squeeze=False,
        layout="constrained",
    )
    fig.get_layout_engine().set(w_pad=0.01, h_pad=0.01, wspace=0.02, hspace=0.02)
    if title is not None:
        fig.suptitle(title)
    return fig, axes


def _step_label(t: int, paper_steps: bool) -> str:
    return f"t = {t + 1}" if paper_steps else f"t = {t}"


def progressive_figure(
    trajectory: dict,
    indices: Sequence[int] | None = None,
    *,
    max_steps: int | None = None,
    paper_steps: bool = True,
    image_size: float = 0.8,
    title: str | None = None,
) -> Figure:
    """The paper's Fig. 6: x_t and the predicted x_0 along the reverse chain, for a few samples.

    ``trajectory`` is the dict from ``GaussianDiffusion.sample(..., return_trajectory=True)``
    (``t`` [K] code indices, ``xt`` and ``pred_x0`` [K, B, C, H, W]). For each sample in
    ``indices`` (default: the first four) there are two rows, x_t and x̂_0, and one column per
    recorded step (at most ``max_steps``, evenly spaced, keeping the first and last). Columns are
    labelled with the paper's step t = code index + 1 (``paper_steps=True``) or the code index.
    The x_t shown at paper step t is the chain's input there; x̂_0 is predicted from it.
    """
    xt = _as_tensor(trajectory["xt"], "trajectory['xt']")
    pred = _as_tensor(trajectory["pred_x0"], "trajectory['pred_x0']")
    steps = [int(t) for t in trajectory["t"]]
    if xt.ndim != 5 or xt.shape != pred.shape or xt.shape[0] != len(steps) or not steps:
        raise ValueError(
            "trajectory must hold 't' [K] and 'xt', 'pred_x0' [K, B, C, H, W] of one shape, got "
            f"{len(steps)} steps, xt {tuple(xt.shape)}, pred_x0 {tuple(pred.shape)}"
        )
    _as_images(xt[0], "trajectory['xt'][0]")
    batch = xt.shape[1]
    indices = list(range(min(batch, 4))) if indices is None else [int(i) for i in indices]
    if not indices or any(not 0 <= i < batch for i in indices):
        raise ValueError(f"indices must be a non-empty list of samples in 0..{batch - 1}")
    columns = _subsample(len(steps), max_steps)
    fig, axes = _image_table(2 * len(indices), len(columns), image_size, title)
    for r, b in enumerate(indices):
        for half, (label, data) in enumerate(((r"$x_t$", xt), (r"$\hat{x}_0$", pred))):
            row = 2 * r + half
            for c, k in enumerate(columns):
                ax = axes[row, c]
                _imshow(ax, make_grid(data[k, b], padding=0))
                _bare(ax)
                if row == 0:
                    ax.set_title(_step_label(steps[k], paper_steps), fontsize=8)
            axes[row, 0].set_ylabel(f"{label} #{b}" if len(indices) > 1 else label, fontsize=9)
    return fig


def interpolation_figure(
    rows,
    lambdas: Sequence[float],
    row_labels: Sequence[str] | None = None,
    *,
    sources=None,
    image_size: float = 0.8,
    title: str | None = None,
) -> Figure:
    """A table of interpolations, the paper's Figs. 8-9: rows (e.g. steps t) by lambda values.

    ``rows`` is [R, L, C, H, W], one row [L, C, H, W], or a sequence of R tensors [L, C, H, W]
    (e.g. ``GaussianDiffusion.interpolate`` outputs for several t); column j is ``lambdas[j]``.
    ``sources=(x1, x2)`` adds the two interpolated images as a first and last column; each is
    [C, H, W] (shared by all rows) or [R, C, H, W]. Save it with :func:`save_figure`.
    """
    table = _stack(rows, "rows")
    if table.ndim == 4:
        table = table.unsqueeze(0)
    if table.ndim != 5:
        raise ValueError(f"rows must be [R, L, C, H, W] or [L, C, H, W], got {tuple(table.shape)}")
    _as_images(table[0], "rows[0]")
    n_rows, n_lam = table.shape[:2]
    lambdas = [float(v) for v in lambdas]
    if len(lambdas) != n_lam:
        raise ValueError(f"got {len(lambdas)} lambdas for {n_lam} columns")
    if row_labels is not None and len(row_labels) != n_rows:
        raise ValueError(f"got {len(row_labels)} row labels for {n_rows} rows")
    ends = None
    if sources is not None:
        ends = []
        for name, s in zip(("x1", "x2"), sources, strict=True):
            s = _as_images(s, f"sources {name}")
            if s.shape[0] not in (1, n_rows) or s.shape[1:] != table.shape[2:]:
                raise ValueError(
                    f"sources {name} must be [C, H, W] or [{n_rows}, C, H, W] matching the "
                    f"images {tuple(table.shape[2:])}, got {tuple(s.shape)}"
                )
            ends.append(s.expand(n_rows, *s.shape[1:]))
    offset = 0 if ends is None else 1
    fig, axes = _image_table(n_rows, n_lam + 2 * offset, image_size, title)
    for r in range(n_rows):
        cells = [(offset + j, table[r, j], f"λ = {lam:.2g}") for j, lam in enumerate(lambdas)]
        if ends is not None:
            cells += [(0, ends[0][r], r"$x_0$"), (n_lam + 1, ends[1][r], r"$x_0'$")]
        for c, image, label in cells:
            ax = axes[r, c]
            _imshow(ax, make_grid(image, padding=0))
            _bare(ax)
            if r == 0:
                ax.set_title(label, fontsize=8)
        if row_labels is not None:
            axes[r, 0].set_ylabel(row_labels[r], fontsize=9)
    return fig


def save_figure(fig: Figure, path, dpi: int = 150) -> Path:
    """Save a figure atomically (format from the suffix, default PNG), then close it."""
    import matplotlib.pyplot as plt

    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    try:
        return atomic_write(
            path, lambda f: fig.savefig(f, format=fmt, dpi=dpi, bbox_inches="tight")
        )
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------- animations
def _frame_grids(frames, max_frames, nrow, padding) -> tuple[list[np.ndarray], list[int], int]:
    """Frames [K, B, C, H, W] (each a grid) or [K, C, H, W] (one image each) -> uint8 pictures."""
    stack = _stack(frames, "frames")
    if stack.ndim not in (4, 5):
        raise ValueError(
            f"frames must be [K, B, C, H, W] or [K, C, H, W], got shape {tuple(stack.shape)}"
        )
    if stack.shape[0] == 0:
        raise ValueError("frames is empty")
    if stack.ndim == 4:  # one image per frame: no padding around it
        stack, padding = stack.unsqueeze(1), 0
    _as_images(stack[0], "frames[0]")
    keep = _subsample(stack.shape[0], max_frames)
    return [make_grid(stack[k], nrow, padding) for k in keep], keep, stack.shape[0]


def animate_frames(
    frames,
    interval: int = 100,
    title: str | None = None,
    *,
    labels: Sequence[str] | None = None,
    max_frames: int | None = 50,
    nrow: int | None = None,
    padding: int = 1,
) -> FuncAnimation:
    """An animation of image frames, e.g. a trajectory's ``xt`` or ``pred_x0`` (the paper's Fig. 6
    as a movie).

    ``frames`` is [K, B, C, H, W] (each frame shown as a grid), [K, C, H, W], or a sequence of
    equally shaped tensors; at most ``max_frames`` frames are kept, evenly spaced, first and last
    included. ``labels`` ([K] strings, e.g. ``[f"t = {t + 1}" for t in traj["t"]]``) are shown
    under the ``title``. ``interval`` is milliseconds per frame. The figure is not registered with
    pyplot (nothing to close, no stray static picture in notebooks); render the animation with
    :func:`animation_html`.
    """
    from matplotlib.animation import FuncAnimation
    from matplotlib.figure import Figure

    grids, keep, n_frames = _frame_grids(frames, max_frames, nrow, padding)
    if labels is not None:
        if len(labels) != n_frames:
            raise ValueError(f"got {len(labels)} labels for {n_frames} frames")
        labels = [str(labels[k]) for k in keep]
    h, w = grids[0].shape[:2]
    height = min(5.0, max(2.5, h / 25))
    fig = Figure(figsize=(max(2.5, height * w / h), height + (0.4 if title or labels else 0)))
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.86 if title or labels else 0.96))
    image = _imshow(ax, grids[0])
    ax.set_axis_off()

    def heading(i: int) -> str:
        parts = [p for p in (title, labels[i] if labels else None) if p]
        return "\n".join(parts)

    text = ax.set_title(heading(0), fontsize=10)

    def update(i: int):
        image.set_data(grids[i])
        text.set_text(heading(i))
        return [image, text]

    return FuncAnimation(fig, update, frames=len(grids), interval=interval, blit=False)


def animation_html(anim: FuncAnimation, default_mode: str = "loop") -> str:
    """The animation as self-contained HTML/JavaScript (``to_jshtml``), frames embedded, so the
    static book plays it: ``IPython.display.HTML(animation_html(anim))``."""
    return anim.to_jshtml(default_mode=default_mode)


def save_gif(
    frames,
    path,
    duration_ms: int = 100,
    scale: int = 1,
    loop: int | None = 0,
    *,
    max_frames: int | None = 50,
    nrow: int | None = None,
    padding: int = 1,
) -> Path:
    """Save frames (as in :func:`animate_frames`) as an animated GIF with Pillow, atomically.

    ``duration_ms`` per frame, integer nearest-neighbour ``scale``, ``loop=0`` repeats forever
    (``None``: play once). At most ``max_frames`` frames, evenly spaced, first and last kept.
    Pillow merges identical consecutive frames into one longer frame. RGB frames are reduced to
    a 256-colour palette (the GIF format); grey frames are exact.
    """
    from PIL import Image

    grids, _, _ = _frame_grids(frames, max_frames, nrow, padding)
    images = [Image.fromarray(_upscale(g, scale)) for g in grids]
    options = {"save_all": True, "append_images": images[1:], "duration": duration_ms}
    if loop is not None:
        options["loop"] = loop
    return atomic_write(path, lambda f: images[0].save(f, format="GIF", **options))
