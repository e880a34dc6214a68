"""ddpm.viz and ddpm-viz: the plotted numbers match the closed forms, and every figure/GIF is written."""

from __future__ import annotations

import math
import subprocess
import sys
import types
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before anything imports pyplot: no test may open a window

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm import viz
from ddpm.cli.viz import main
from ddpm.diffusion import GaussianDiffusion
from ddpm.oracle import GaussianOracle
from ddpm.samplers import DDIMSampler, DDPMSampler, SampleResult
from ddpm.schedules import make_beta_schedule
from ddpm.viz.grid import image_grid, save_image_grid

DPI = 60  # small renders keep the file fast; sizes are checked at this dpi


@pytest.fixture(autouse=True)
def _headless(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)


def isotropic_oracle(
    diffusion: GaussianDiffusion, sample_shape: tuple[int, ...], mu: torch.Tensor | float, s: float
) -> GaussianOracle:
    """The exact eps-network for samples of ``sample_shape`` drawn from N(mu, s^2 I)."""
    d = math.prod(sample_shape)
    mean = torch.as_tensor(mu, dtype=torch.float64).expand(sample_shape).reshape(d)
    return GaussianOracle(diffusion, mean, s**2 * torch.eye(d, dtype=torch.float64))


def _diffusion(T: int, **kwargs: float) -> GaussianDiffusion:
    return GaussianDiffusion(make_beta_schedule("linear", T, warn=False, **kwargs))


def _reverse(
    shape: tuple[int, ...], mu: torch.Tensor | float, s: float, ddim: int | None = None
) -> SampleResult:
    diffusion = _diffusion(20, beta_start=1e-3, beta_end=0.3)
    sampler = DDIMSampler(steps=ddim) if ddim else DDPMSampler()
    gen = torch.Generator().manual_seed(0)
    out = sampler.sample(
        isotropic_oracle(diffusion, shape[1:], mu, s),
        diffusion,
        shape,
        gen,
        return_trajectory=True,
        progress=False,
    )
    assert isinstance(out, SampleResult)
    return out


def _check_png(path: Path, fig: object) -> None:
    w, h = fig.get_size_inches()  # type: ignore[attr-defined]
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == (round(w * DPI), round(h * DPI))


# ---------------------------------------------------------------------------- the numbers
def test_schedule_curves_equal_make_beta_schedule() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the figure states abar[T-1]; no NotPureNoiseWarning on top
        curves = viz.schedule_curves(["linear", "cosine", "quadratic", "sigmoid"], T=1000)
        short = viz.schedule_curves(["linear", "cosine"], T=50, beta_end=0.01)
    for name, c in curves.items():
        betas = make_beta_schedule(name, 1000, warn=False)
        abar = torch.cumprod(1 - betas, 0).numpy()
        np.testing.assert_array_equal(c["beta"], betas.numpy())
        np.testing.assert_allclose(c["abar"], abar, rtol=1e-12)
        np.testing.assert_allclose(c["log_snr"], np.log(abar / (1 - abar)), rtol=1e-9, atol=1e-9)
        np.testing.assert_array_equal(c["t"], np.arange(1000))
    assert curves["linear"]["abar"][-1] == pytest.approx(4.04e-5, rel=1e-2)  # the published figure
    # beta_end goes to the schedule that takes it; cosine keeps its own definition
    np.testing.assert_array_equal(
        short["linear"]["beta"], make_beta_schedule("linear", 50, warn=False, beta_end=0.01)
    )
    np.testing.assert_array_equal(short["cosine"]["beta"], make_beta_schedule("cosine", 50))
    with pytest.raises(ValueError, match="beta_start"):
        viz.schedule_curves(["cosine"], T=10, beta_start=0.1)


def test_forward_1d_is_the_closed_form_of_seed_000() -> None:
    data = viz.forward_1d()
    assert data["timesteps"].tolist() == [0, 100, 250, 500, 750, 999]
    np.testing.assert_allclose(data["x0"], np.sin(np.linspace(0, 4 * np.pi, 100)))
    abar = torch.cumprod(1 - make_beta_schedule("linear", 1000), 0).numpy()[data["timesteps"]]
    np.testing.assert_allclose(data["abar"], abar, rtol=1e-5)
    # x_t = sqrt(abar) x0 + sqrt(1 - abar) eps: the implied eps must look like N(0, 1)
    eps = (data["xt"] - np.sqrt(abar)[:, None] * data["x0"]) / np.sqrt(1 - abar)[:, None]
    assert abs(eps.mean()) < 5 / math.sqrt(eps.size)
    assert eps.std() == pytest.approx(1.0, abs=0.15)
    np.testing.assert_array_equal(viz.forward_1d(seed=0)["xt"], data["xt"])  # seeded
    assert not np.array_equal(viz.forward_1d(seed=1)["xt"], data["xt"])


def test_forward_1d_draws_one_panel_per_t_with_the_clean_signal_faint() -> None:
    """The issue's complaint: six noisy sines overlaid in one axes cannot be read t by t. The default is one
    panel per t (as forward-2d), each with its own x_t and the clean x0 faint behind it."""
    data = viz.forward_1d()
    fig = viz.plot_forward_1d(data)
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(shown) == len(data["timesteps"]) == 6
    for ax, t, xt in zip(shown, data["timesteps"], data["xt"], strict=True):
        assert ax.get_title().startswith(f"t = {t},")
        noisy, clean = ax.get_lines()
        np.testing.assert_array_equal(noisy.get_ydata(), xt)  # this panel's t, and only it
        np.testing.assert_array_equal(clean.get_ydata(), data["x0"])
        assert (clean.get_alpha() or 1.0) < 0.5 <= (noisy.get_alpha() or 1.0)  # faint behind, x_t in front
        assert clean.get_zorder() < noisy.get_zorder()
    # the panels share their axes, so the noise levels compare across t at a glance
    assert shown[0].get_shared_y_axes().joined(shown[0], shown[-1])
    # the tutorial's overlay is still there on request: one axes, six x_t and x0
    overlay = viz.plot_forward_1d(data, layout="overlay")
    assert len(overlay.axes) == 1 and len(overlay.axes[0].get_lines()) == 7


def test_forward_2d_moments_match_the_closed_form() -> None:
    n = 20_000
    data = viz.forward_2d(n=n)
    assert data["timesteps"].tolist() == [0, 25, 50, 75, 99]  # seed 003's, 0-based
    abar = torch.cumprod(1 - make_beta_schedule("linear", 100, warn=False, beta_start=1e-3, beta_end=0.02), 0)
    np.testing.assert_allclose(data["abar"], abar.numpy()[[0, 25, 50, 75, 99]], rtol=1e-5)
    assert data["abar"][-1] == pytest.approx(0.347, abs=1e-3)  # the reference's figure for seed 003
    for i, a in enumerate(data["abar"]):
        mean_t = math.sqrt(a) * np.array([2.0, 2.0])
        var_t = a * 0.25 + 1 - a
        np.testing.assert_allclose(data["mean_t"][i], mean_t)
        assert data["var_t"][i] == pytest.approx(var_t)
        pts = data["xt"][i]
        assert pts.shape == (n, 2)
        np.testing.assert_allclose(pts.mean(0), mean_t, atol=5 * math.sqrt(var_t / n))
        np.testing.assert_allclose(pts.var(0), var_t, rtol=5 * math.sqrt(2 / n))


def test_forward_chain_matches_the_closed_form() -> None:
    draws = 4000
    data = viz.forward_chain(x0=5.0, T=50, n_draws=draws, seed=4)
    paths, mean, std = data["paths"], data["mean"], data["std"]
    assert paths.shape == (draws, 51)
    assert np.all(paths[:, 0] == 5.0)
    abar = np.concatenate([[1.0], torch.cumprod(1 - torch.linspace(1e-4, 0.01, 50, dtype=torch.float64), 0)])
    np.testing.assert_allclose(mean, np.sqrt(abar) * 5.0, rtol=1e-6)
    np.testing.assert_allclose(std, np.sqrt(1 - abar), rtol=1e-4, atol=1e-7)
    assert data["abar"][-1] == pytest.approx(0.776, abs=1e-3)  # seed 001's chain ends far from noise
    k = np.arange(1, 51)
    np.testing.assert_array_less(np.abs(paths[:, k].mean(0) - mean[k]), 5 * std[k] / math.sqrt(draws) + 1e-4)
    np.testing.assert_allclose(paths[:, k].std(0), std[k], rtol=5 * math.sqrt(1 / (2 * draws)), atol=1e-4)


def test_reverse_positions_and_bad_inputs() -> None:
    assert viz.reverse_positions([2, 1, 0]).tolist() == [3, 2, 1, 0]
    assert viz.reverse_positions([999, 888, 0]).tolist() == [1000, 889, 1, 0]
    assert viz.default_timesteps(1000) == [0, 100, 250, 500, 750, 999]
    assert viz.default_timesteps(3) == [0, 1, 2]
    with pytest.raises(ValueError, match="t=100 is outside"):
        viz.forward_2d(timesteps=[0, 100])
    with pytest.raises(ValueError, match="states but timesteps"):
        viz.plot_reverse_2d(np.zeros((4, 3, 2)), [1, 0])
    with pytest.raises(ValueError, match="same item shape"):
        viz.plot_samples_vs_data(np.zeros((5, 2)), np.zeros((5, 3)))


# ---------------------------------------------------------------------------- the package, grid and checks
def test_every_public_name_resolves_and_the_grid_loads_no_matplotlib() -> None:
    for name in viz.__all__:
        assert getattr(viz, name) is not None, name
    code = (
        "import sys, ddpm.viz.grid; from ddpm.viz import save_image_grid, to_uint8; "
        "sys.exit('matplotlib' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_image_grid_scales_enlarges_and_saves(tmp_path: Path) -> None:
    images = torch.linspace(-1, 1, 4).reshape(4, 1, 1, 1).expand(4, 1, 8, 8)
    grid = image_grid(images, nrow=2, value_range=(-1.0, 1.0))
    assert grid.shape == (2 + 2 * (8 + 2), 2 + 2 * (8 + 2), 3)  # 2 px padding around every tile
    assert grid[2, 2].tolist() == [0.0, 0.0, 0.0] and grid[-3, -3].tolist() == [1.0, 1.0, 1.0]
    assert grid[0, 0].tolist() == [1.0, 1.0, 1.0]  # white padding
    path = save_image_grid((images + 1) / 2, tmp_path / "a" / "g.png")  # 8 px tiles enlarged to 64 px
    with Image.open(path) as im:
        assert im.size == (2 * 66 + 2, 2 * 66 + 2)
    with pytest.raises(ValueError, match="N >= 1"):
        image_grid(torch.zeros(0, 1, 8, 8))


def test_a_check_names_the_value_as_the_caller_knows_it() -> None:
    with pytest.raises(ValueError, match=r"^n_draws=0 is invalid; give at least 1 chain$"):
        viz.forward_chain(n_draws=0)
    with pytest.raises(ValueError, match=r"^--draws=0 is invalid; give at least 1 chain$"):
        viz.check_arguments({"n_draws": 0}, labels={"n_draws": "--draws"})
    with pytest.raises(ValueError, match=r"layout='x' is unknown; choose one of \['overlay', 'panels'\]"):
        viz.plot_forward_1d(viz.forward_1d(T=10), layout="x")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- the files
def _fig_cases() -> dict[str, object]:
    scalar = _reverse((64,), 5.0, 0.0)
    signal = _reverse((4, 32), torch.sin(torch.linspace(0, 6, 32)), 0.1, ddim=8)
    points = _reverse((300, 2), torch.tensor([2.0, 2.0]), 0.5)
    images = _reverse((5, 3, 8, 8), 0.0, 0.5, ddim=6)
    rng = np.random.default_rng(0)
    steps = np.arange(0, 1000, 100)
    losses = [np.exp(-steps / 500) / (q + 1) + 0.01 for q in range(4)]
    return {
        "schedules": lambda: viz.plot_schedules(viz.schedule_curves()),
        "forward-1d": lambda: viz.plot_forward_1d(viz.forward_1d()),
        "forward-1d-overlay": lambda: viz.plot_forward_1d(viz.forward_1d(), layout="overlay"),
        "forward-2d": lambda: viz.plot_forward_2d(viz.forward_2d()),
        "forward-chain": lambda: viz.plot_forward_chain(viz.forward_chain()),
        "reverse-1d-scalar": lambda: viz.plot_reverse_1d(scalar.trajectory, scalar.timesteps, target=5.0),
        "reverse-1d-signal": lambda: viz.plot_reverse_1d(signal.trajectory, signal.timesteps),
        "reverse-2d": lambda: viz.plot_reverse_2d(
            points.trajectory, points.timesteps, data=rng.normal(2, 0.5, (300, 2))
        ),
        "strip-pred-x0": lambda: viz.plot_denoising_strip(images.pred_x0, images.timesteps),
        "strip-x_t": lambda: viz.plot_denoising_strip(images.trajectory, images.timesteps, steps=[0, 3, 6]),
        "vs-scalar": lambda: viz.plot_samples_vs_data(scalar.samples, torch.full((64,), 5.0)),
        "vs-signal": lambda: viz.plot_samples_vs_data(signal.samples, signal.samples + 0.1),
        "vs-points": lambda: viz.plot_samples_vs_data(points.samples, rng.normal(2, 0.5, (300, 2))),
        "vs-images": lambda: viz.plot_samples_vs_data(images.samples, images.samples.flip(-1)),
        "loss-by-quarter": lambda: viz.plot_loss_by_quarter(steps, losses, T=1000),
    }


def test_every_figure_writes_a_png_of_the_expected_size(tmp_path: Path) -> None:
    for name, make in _fig_cases().items():
        fig = make()  # type: ignore[operator]
        path = viz.save_figure(fig, tmp_path / "nested" / f"{name}.png", dpi=DPI)
        assert path.is_file(), name
        _check_png(path, fig)


@pytest.mark.parametrize(
    ("kind", "shape", "mu", "ddim", "max_frames", "size"),
    [
        ("scalar", (16,), 5.0, None, 8, (6.4, 4.8)),  # scalar chains, 21 states -> 8 frames
        ("signal", (3, 24), 0.0, 5, 30, (6.4, 4.8)),  # signals, 6 states -> 6 frames
        ("points", (200, 2), 1.0, None, 6, (6.4, 4.8)),
        ("image", (4, 1, 8, 8), 0.0, 6, 30, (5.0, 5.4)),
    ],
)
def test_reverse_gif_frames_and_size(
    tmp_path: Path,
    kind: str,
    shape: tuple[int, ...],
    mu: float,
    ddim: int | None,
    max_frames: int,
    size: tuple[float, float],
) -> None:
    result = _reverse(shape, mu, 0.5, ddim=ddim)
    assert viz.item_kind(result.trajectory.shape[1:]) == kind  # how the GIF draws the items
    path = viz.save_reverse_gif(
        result.trajectory,
        result.timesteps,
        tmp_path / "a" / "r.gif",
        max_frames=max_frames,
        dpi=40,  # type: ignore[arg-type]
    )
    expected = min(len(result.timesteps) + 1, max_frames)
    with Image.open(path) as im:
        assert im.format == "GIF"
        assert im.size == (round(size[0] * 40), round(size[1] * 40))
        assert im.n_frames == expected
        assert im.info.get("loop") == 0


def test_show_figure_without_a_display_does_nothing() -> None:
    assert viz.show_figure(viz.plot_forward_chain(viz.forward_chain(T=5))) is False


# ---------------------------------------------------------------------------- the CLI
@pytest.mark.parametrize(
    ("args", "name"),
    [
        (["schedules", "--schedule", "linear", "cosine", "--T", "200"], "schedules"),
        (["forward-1d", "--T", "300", "--timesteps", "0", "150", "299", "--layout", "panels"], "forward-1d"),
        (["forward-2d", "--n", "200"], "forward-2d"),
        (["forward-chain", "--draws", "5", "--beta-end", "0.02"], "forward-chain"),
    ],
)
def test_cli_writes_the_png(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], name: str
) -> None:
    out = tmp_path / "figs" / f"{name}.png"
    assert main([*args, "--out", str(out), "--dpi", str(DPI), "--show"]) == 0
    with Image.open(out) as im:
        assert im.format == "PNG"
    captured = capsys.readouterr()
    assert f"wrote {out}" in captured.out
    assert "no display" in captured.err


def test_cli_default_output_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["forward-chain", "--T", "10", "--dpi", str(DPI)]) == 0
    assert (tmp_path / "outputs" / "viz" / "forward-chain.png").is_file()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["forward-1d", "--schedule", "foo"], "schedule='foo' is unknown; choose one of ['cosine', 'linear'"),
        (["schedules", "--schedule", "linear", "bar"], "schedule='bar' is unknown"),
        (["forward-2d", "--T", "0"], "T=0 is invalid; T must be an integer >= 1"),
        (["forward-chain", "--T", "-3"], "T=-3 is invalid"),
        (["forward-1d", "--timesteps", "0", "1000"], "t=1000 is outside [0, 999]"),
        (["forward-2d", "--T", "50", "--timesteps", "-1"], "t=-1 is outside [0, 49]"),
        (
            ["forward-1d", "--schedule", "cosine", "--beta-start", "0.01"],
            "'cosine' has no option 'beta_start'",
        ),
        (["forward-chain", "--beta-end", "1.5"], "beta_end=1.5 is outside (0, 1)"),
        (["forward-chain", "--draws", "0"], "--draws=0 is invalid"),
        (["forward-1d", "--T", "abc"], "invalid int value: 'abc'"),
        (["reverse", "/no/such/run"], "'/no/such/run' does not exist"),
    ],
)
def test_cli_rejects_bad_input(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    needle: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists()  # nothing was written


class _FakeModule:
    """Stands in for a trained module: the exact oracle for N(mu, s^2 I) behind the real sampler."""

    device = torch.device("cpu")

    def __init__(self, shape: tuple[int, ...], mu: float, s: float) -> None:
        self.shape = shape
        self.data_shape = shape
        self.diffusion = _diffusion(20, beta_start=1e-3, beta_end=0.3)
        self.oracle = isotropic_oracle(self.diffusion, shape, mu, s)

    def sample(
        self, n: int, return_trajectory: bool = False, generator: torch.Generator | None = None
    ) -> object:
        return DDPMSampler().sample(
            self.oracle,
            self.diffusion,
            (n, *self.shape),
            generator,
            return_trajectory=return_trajectory,
            progress=False,
        )


@pytest.mark.parametrize(("shape", "mu"), [((2,), 2.0), ((1, 8, 8), 0.0)])
def test_cli_reverse_writes_png_and_gif(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    shape: tuple[int, ...],
    mu: float,
) -> None:
    run_dir = tmp_path / "run1"
    run_dir.mkdir()
    loaded: list[Path] = []

    def load_run(path: Path) -> object:
        loaded.append(Path(path))
        kind = "image" if len(shape) == 3 else "toy"
        data = types.SimpleNamespace(kind=kind, denormalize=lambda x: x)
        model = _FakeModule(shape, mu, 0.5)
        return types.SimpleNamespace(model=model, data=data, data_shape=shape)

    monkeypatch.setattr("ddpm.build.load_run", load_run)
    out = tmp_path / "rev.png"
    assert (
        main(["reverse", str(run_dir), "--n", "6", "--frames", "5", "--out", str(out), "--dpi", str(DPI)])
        == 0
    )
    assert loaded == [run_dir]
    with Image.open(out) as im:
        assert im.format == "PNG"
        assert im.info["dpi"] == pytest.approx((DPI, DPI), abs=0.5)  # --dpi reaches the PNG
    with Image.open(out.with_suffix(".gif")) as im:
        assert im.format == "GIF"
        assert im.n_frames == 5
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed
    assert f"wrote {out.with_suffix('.gif')}" in printed
