"""ddpm.viz: exact pixels of grids and files, figure structure on a real sampling trajectory, and
animations whose rendered frames are decoded and checked."""

import base64
import io
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.animation import FuncAnimation  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from ddpm import viz  # noqa: E402
from ddpm.diffusion import GaussianDiffusion  # noqa: E402
from ddpm.schedules import linear_beta_schedule  # noqa: E402

P = 128  # pad_value 0.0 as a pixel
A, B, C, D = 0, 64, 191, 255  # the pixels of -1, -0.5, 0.5, 1
# four constant 2x2 images, 2 per row, padding 1: the grid, written out by hand
EXPECTED_GRID = np.array(
    [
        [P, P, P, P, P, P, P],
        [P, A, A, P, B, B, P],
        [P, A, A, P, B, B, P],
        [P, P, P, P, P, P, P],
        [P, C, C, P, D, D, P],
        [P, C, C, P, D, D, P],
        [P, P, P, P, P, P, P],
    ],
    dtype=np.uint8,
)


def four_constants():
    return torch.tensor([-1.0, -0.5, 0.5, 1.0]).reshape(4, 1, 1, 1).expand(4, 1, 2, 2)


def constant_frames(k, shape=(1, 4, 4)):
    """k frames, frame i constant at a distinct level; returns the frames and their pixels."""
    values = torch.linspace(-1, 1, k)
    frames = values.reshape(k, *([1] * len(shape))).expand(k, *shape).clone()
    return frames, viz.to_uint8(values).numpy()


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def trajectory():
    diffusion = GaussianDiffusion(linear_beta_schedule(50))
    gen = torch.Generator().manual_seed(0)

    def model(x, t):
        return torch.zeros_like(x)

    x0, traj = diffusion.sample(
        model, (2, 1, 8, 8), return_trajectory=True, progress=False, generator=gen
    )
    return diffusion, model, x0, traj


# ---------------------------------------------------------------------- to_uint8
def test_to_uint8_known_values_and_clamping():
    x = torch.tensor([[-1.0, 1.0, 0.0], [-3.0, 7.0, 1 / 127.5 - 1]])
    out = viz.to_uint8(x)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert out.tolist() == [[0, 255, 128], [0, 255, 1]]  # 127.5 rounds up to 128


def test_to_uint8_rounds_not_truncates_and_nan_is_grey():
    x = torch.tensor([0.999 / 127.5 - 1, float("nan"), float("inf"), -float("inf")])
    assert viz.to_uint8(x).tolist() == [1, 128, 255, 0]
    assert viz.to_uint8(np.zeros((2, 3), dtype=np.float32)).shape == (2, 3)


# ---------------------------------------------------------------------- make_grid
def test_make_grid_known_layout():
    grid = viz.make_grid(four_constants(), nrow=2, padding=1, pad_value=0.0)
    assert grid.dtype == np.uint8
    np.testing.assert_array_equal(grid, EXPECTED_GRID)


@pytest.mark.parametrize(
    ("b", "nrow", "padding", "rows", "cols"),
    [
        (5, 3, 2, 2, 3),
        (16, None, 1, 4, 4),
        (5, None, 0, 2, 3),
        (3, 10, 1, 1, 3),
        (1, None, 1, 1, 1),
    ],
)
def test_make_grid_shape(b, nrow, padding, rows, cols):
    h, w = 4, 6
    grey = viz.make_grid(torch.zeros(b, 1, h, w), nrow=nrow, padding=padding)
    rgb = viz.make_grid(torch.zeros(b, 3, h, w), nrow=nrow, padding=padding)
    shape = (rows * (h + padding) + padding, cols * (w + padding) + padding)
    assert grey.shape == shape
    assert rgb.shape == (*shape, 3)


def test_make_grid_rgb_channels_and_empty_cells_are_padding():
    x = torch.full((3, 3, 2, 2), -1.0)
    x[0, 0] = 1.0  # red
    x[1, 1] = 1.0  # green
    x[2, 2] = 1.0  # blue
    grid = viz.make_grid(x, nrow=2, padding=1)  # 2 x 2 cells, the last one empty
    assert grid.shape == (7, 7, 3)
    np.testing.assert_array_equal(grid[1, 1], [255, 0, 0])
    np.testing.assert_array_equal(grid[2, 5], [0, 255, 0])
    np.testing.assert_array_equal(grid[5, 2], [0, 0, 255])
    np.testing.assert_array_equal(grid[4:6, 4:6], 255)  # empty cell = pad_value 1.0 (white)
    np.testing.assert_array_equal(grid[0], 255)
    np.testing.assert_array_equal(grid[:, 3], 255)


def test_make_grid_single_image_and_numpy_input():
    img = np.full((1, 2, 2), 1.0, dtype=np.float32)  # [C, H, W]
    np.testing.assert_array_equal(viz.make_grid(img, padding=0), [[255, 255], [255, 255]])


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.zeros(8, 8), "B, C, H, W"),
        (torch.zeros(2, 2, 1, 8, 8), "B, C, H, W"),
        (torch.zeros(2, 2, 8, 8), "1 or 3 channels"),
        (torch.zeros(0, 1, 8, 8), "empty batch"),
        ([1, 2], "tensor or numpy"),
    ],
)
def test_make_grid_rejects_bad_input(x, match):
    with pytest.raises(ValueError, match=match):
        viz.make_grid(x)


def test_make_grid_rejects_bad_nrow_and_padding():
    with pytest.raises(ValueError, match="nrow"):
        viz.make_grid(torch.zeros(4, 1, 2, 2), nrow=0)
    with pytest.raises(ValueError, match="padding"):
        viz.make_grid(torch.zeros(4, 1, 2, 2), padding=-1)


# ---------------------------------------------------------------------- files
def test_save_image_grid_reads_back_exactly(tmp_path):
    path = tmp_path / "deep" / "er" / "grid.png"
    out = viz.save_image_grid(four_constants(), path, nrow=2, scale=3, pad_value=0.0)
    assert out == path
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "L" and im.size == (21, 21)
        pixels = np.asarray(im)
    np.testing.assert_array_equal(pixels, EXPECTED_GRID.repeat(3, axis=0).repeat(3, axis=1))
    assert sorted(p.name for p in path.parent.iterdir()) == ["grid.png"]  # no temp file left
    assert plt.get_fignums() == []


def test_save_image_grid_rgb_and_overwrite(tmp_path):
    path = tmp_path / "rgb.png"
    viz.save_image_grid(torch.zeros(4, 1, 2, 2), path)
    x = torch.full((1, 3, 2, 2), -1.0)
    x[:, 2] = 1.0
    viz.save_image_grid(x, path, padding=0)
    with Image.open(path) as im:
        assert im.mode == "RGB" and im.size == (2, 2)
        assert im.getpixel((1, 1)) == (0, 0, 255)
    with pytest.raises(ValueError, match="scale"):
        viz.save_image_grid(x, path, scale=0)


def test_save_gif_subsamples_keeping_first_and_last(tmp_path):
    frames, levels = constant_frames(60, shape=(2, 1, 4, 4))
    path = tmp_path / "a" / "traj.gif"
    viz.save_gif(frames, path, duration_ms=80, scale=2, max_frames=10)
    keep = [0, 7, 13, 20, 26, 33, 39, 46, 52, 59]  # round(linspace(0, 59, 10))
    with Image.open(path) as im:
        assert im.n_frames == 10
        assert im.size == (2 * (2 * 5 + 1), 2 * (1 * 5 + 1))  # 2 images per row, padding 1
        assert im.info["duration"] == 80 and im.info["loop"] == 0
        for i, k in enumerate(keep):
            im.seek(i)
            pixels = np.asarray(im.convert("L"))
            assert pixels[2, 2] == levels[k], f"frame {i} should be input frame {k}"
            assert pixels[0, 0] == 255  # padding
    assert sorted(p.name for p in path.parent.iterdir()) == ["traj.gif"]
    assert plt.get_fignums() == []


def test_save_gif_of_a_trajectory_and_bad_frames(tmp_path, trajectory):
    _, _, _, traj = trajectory
    path = viz.save_gif(traj["xt"], tmp_path / "xt.gif", scale=4)
    with Image.open(path) as im:
        assert im.n_frames == len(traj["t"])  # 11 distinct noisy frames, under the cap
        assert im.size == (4 * (2 * 9 + 1), 4 * (1 * 9 + 1))
    with pytest.raises(ValueError, match="inconsistent shapes"):
        viz.save_gif([torch.zeros(1, 4, 4), torch.zeros(1, 4, 5)], tmp_path / "bad.gif")
    with pytest.raises(ValueError, match="empty"):
        viz.save_gif([], tmp_path / "bad.gif")
    with pytest.raises(ValueError, match="K, B, C, H, W"):
        viz.save_gif(torch.zeros(3, 4, 4), tmp_path / "bad.gif")
    assert not (tmp_path / "bad.gif").exists()


# ---------------------------------------------------------------------- figures
def test_show_images_draws_the_grid(trajectory):
    _, _, x0, _ = trajectory
    ax = viz.show_images(x0, title="samples")
    assert isinstance(ax, Axes) and len(ax.images) == 1
    np.testing.assert_array_equal(ax.images[0].get_array(), viz.make_grid(x0))
    assert ax.get_title() == "samples" and not ax.axison
    assert ax.images[0].get_interpolation() == "nearest"
    _, given = plt.subplots()
    assert viz.show_images(x0, ax=given) is given


def test_progressive_figure_on_a_real_trajectory(trajectory):
    _, _, _, traj = trajectory
    k = len(traj["t"])
    assert traj["t"][0] == 49 and traj["t"][-1] == 0
    fig = viz.progressive_figure(traj)
    assert isinstance(fig, Figure)
    axes = np.array(fig.axes).reshape(4, k)  # (x_t, x0-hat) for each of the 2 samples
    assert all(len(ax.images) == 1 for ax in fig.axes)
    assert axes[0, 0].get_title() == "t = 50" and axes[0, -1].get_title() == "t = 1"
    assert "x_t" in axes[0, 0].get_ylabel() and "hat{x}_0" in axes[1, 0].get_ylabel()
    for row, data, b in ((0, "xt", 0), (1, "pred_x0", 0), (2, "xt", 1), (3, "pred_x0", 1)):
        for col in (0, k - 1):
            shown = axes[row, col].images[0].get_array()
            np.testing.assert_array_equal(shown, viz.make_grid(traj[data][col, b], padding=0))


def test_progressive_figure_options(trajectory):
    _, _, _, traj = trajectory
    fig = viz.progressive_figure(traj, indices=[1], max_steps=4, paper_steps=False)
    axes = np.array(fig.axes).reshape(2, 4)
    assert [ax.get_title() for ax in axes[0]] == ["t = 49", "t = 35", "t = 15", "t = 0"]
    shown = axes[1, -1].images[0].get_array()
    np.testing.assert_array_equal(shown, viz.make_grid(traj["pred_x0"][-1, 1], padding=0))
    with pytest.raises(ValueError, match="indices"):
        viz.progressive_figure(traj, indices=[2])
    with pytest.raises(ValueError, match="trajectory"):
        viz.progressive_figure({**traj, "t": traj["t"][:-1]})


def test_interpolation_figure_on_real_interpolations(trajectory):
    diffusion, model, x0, _ = trajectory
    lambdas = [0.0, 0.5, 1.0]
    gen = torch.Generator().manual_seed(1)
    rows = [
        diffusion.interpolate(model, x0[:1], x0[1:], torch.tensor(lambdas), t, generator=gen)
        for t in (4, 9)
    ]
    fig = viz.interpolation_figure(rows, lambdas, ["t = 5", "t = 10"])
    assert isinstance(fig, Figure) and len(fig.axes) == 6
    axes = np.array(fig.axes).reshape(2, 3)
    assert [ax.get_title() for ax in axes[0]] == ["λ = 0", "λ = 0.5", "λ = 1"]
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["t = 5", "t = 10"]
    np.testing.assert_array_equal(
        axes[1, 2].images[0].get_array(), viz.make_grid(rows[1][2], padding=0)
    )
    with_sources = viz.interpolation_figure(torch.stack(rows), lambdas, sources=(x0[0], x0[1]))
    axes = np.array(with_sources.axes).reshape(2, 5)
    assert all(len(ax.images) == 1 for ax in with_sources.axes)
    np.testing.assert_array_equal(axes[1, 0].images[0].get_array(), viz.make_grid(x0[0], padding=0))
    np.testing.assert_array_equal(axes[0, 4].images[0].get_array(), viz.make_grid(x0[1], padding=0))
    one_row = viz.interpolation_figure(rows[0], lambdas)
    assert len(one_row.axes) == 3
    with pytest.raises(ValueError, match="lambdas"):
        viz.interpolation_figure(rows, [0.0, 1.0])
    with pytest.raises(ValueError, match="row labels"):
        viz.interpolation_figure(rows, lambdas, ["only one"])


def test_save_figure_writes_and_closes(tmp_path, trajectory):
    _, _, _, traj = trajectory
    fig = viz.progressive_figure(traj)  # 4 rows, 11 columns
    path = viz.save_figure(fig, tmp_path / "figs" / "fig6.png", dpi=50)
    assert plt.get_fignums() == []
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1] > 0
    assert sorted(p.name for p in path.parent.iterdir()) == ["fig6.png"]


# ---------------------------------------------------------------------- animations
def decoded_frames(html):
    """The PNG frames embedded by to_jshtml, as arrays."""
    data = re.findall(r'frames\[\d+\] = "data:image/png;base64,([^"]+)"', html)
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(d))).convert("L")) for d in data]


def test_animation_caps_frames_and_embeds_them_in_html():
    frames, levels = constant_frames(120)
    anim = viz.animate_frames(frames, interval=50, title="noise")
    assert isinstance(anim, FuncAnimation)
    assert len(list(anim.new_frame_seq())) == 50  # max_frames default
    small = viz.animate_frames(frames, max_frames=3, labels=[f"t = {i}" for i in range(120)])
    html = viz.animation_html(small)
    assert isinstance(html, str) and "<script" in html
    pictures = decoded_frames(html)
    assert len(pictures) == 3
    for picture, k in zip(pictures, (0, 60, 119), strict=True):  # first, middle, last input frame
        h, w = picture.shape
        assert abs(int(picture[h // 2, w // 2]) - int(levels[k])) <= 1
    assert plt.get_fignums() == []  # the animation's figure never joins pyplot
    viz.animation_html(anim)  # render it too (no "deleted without rendering" warning)


def test_animate_a_real_trajectory_as_grids(trajectory):
    _, _, _, traj = trajectory
    labels = [f"t = {t + 1}" for t in traj["t"]]
    anim = viz.animate_frames(traj["pred_x0"], labels=labels, max_frames=2)
    pictures = decoded_frames(viz.animation_html(anim))
    assert len(pictures) == 2 and pictures[0].shape == pictures[1].shape
    assert not np.array_equal(pictures[0], pictures[1])
    with pytest.raises(ValueError, match="labels"):
        viz.animate_frames(traj["xt"], labels=labels[:-1])
    with pytest.raises(ValueError, match="max_frames"):
        viz.animate_frames(traj["xt"], max_frames=1)
