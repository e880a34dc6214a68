"""Exact checks of samplers on the oracles of :mod:`ddpm.oracle`: errors with no network and, where the math
allows, no Monte-Carlo noise.

* Gaussian data N(mu, Sigma): the oracle's eps is affine in x_t and every deterministic sampler's step is
  linear in x_t and the network output, so a deterministic sampler is an affine map x_T -> A x_T + b. Running
  it on the probes x_T in {0, e_1, ..., e_D} gives A and b (``sampler_affine_map``), hence the exact moments
  of its samples C = A A^T, m = b (``affine_moments``) and the relative covariance error
  ``covariance_error``; ``verify_affine`` checks the affine claim on random draws. DDPM is stochastic: its
  moments propagate exactly through its own ``step`` (``ddpm_moments``).
* Mixtures: the energy distance to held-out data as a multiple of the data-vs-data floor and the mode-weight
  error (``mixture_quality``), and the band that exact samples fall in (``null_band``).
* ``fit_slope``: the log-log slope of an error against NFE, to compare with a sampler's ``order``.
* ``distil_gaussian_oracle``: progressive distillation (:mod:`ddpm.distillation`) with the Gaussian oracle as
  the first teacher and an affine student per timestep (``AffineStudent``: the oracle's probability-flow map
  is affine, so the student can match each round's teacher exactly); the student's covariance error.

``scripts/sampler_leaderboard.py`` ranks the samplers with these; ``tests/test_exact.py``,
``tests/test_solvers.py`` and ``tests/test_guidance.py`` use them. Plain PyTorch: no Lightning.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ddpm.metrics import energy_distance
from ddpm.oracle import GaussianMixtureOracle, GaussianOracle
from ddpm.process import Process
from ddpm.samplers import DDPMSampler, Sampler, alpha_sigma
from ddpm.samplers.base import Model, require_chain

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "FIT_CEILING",
    "FIT_FLOOR_FACTOR",
    "AffineStudent",
    "CovarianceResult",
    "DataDraws",
    "MixtureResult",
    "OracleDenoiser",
    "SlopeFit",
    "affine_map",
    "affine_moments",
    "bootstrap_se",
    "covariance_error",
    "covariance_sampling_noise",
    "data_draws",
    "ddpm_moments",
    "distil_gaussian_oracle",
    "final_step_error",
    "fit_slope",
    "marginal_cov",
    "mixture_quality",
    "mode_weight_error",
    "null_band",
    "probe_points",
    "relative_frobenius",
    "sampler_affine_map",
    "verify_affine",
]

#: resamples of ``bootstrap_se``
BOOTSTRAP_RESAMPLES = 200
#: ``fit_slope`` uses errors in (FIT_FLOOR_FACTOR x floor, FIT_CEILING]: above the ceiling a sampler is not
#: yet in its asymptotic regime (errors of order one), near the floor another error dominates
FIT_FLOOR_FACTOR = 3.0
FIT_CEILING = 0.1


# ---------------------------------------------------------------------------------------------- Gaussian
def relative_frobenius(c: torch.Tensor, ref: torch.Tensor) -> float:
    """||C - ref||_F / ||ref||_F, in float64: the relative covariance error."""
    c, ref = c.double(), ref.double()
    # the leaderboard's metric (docs/samplers.md): ||C - Sigma||_F / ||Sigma||_F
    return float((c - ref).norm() / ref.norm())


def marginal_cov(diffusion: Process, sigma: torch.Tensor, t: float) -> torch.Tensor:
    """Cov[x_t] for x0 with covariance ``sigma`` (float64), at a timestep ``t`` (fractional allowed)."""
    a, s = alpha_sigma(diffusion, t)
    # DDPM eq. 4: Cov[x_t] = abar_t Sigma + (1 - abar_t) I
    return a * a * sigma + s * s * torch.eye(len(sigma), dtype=torch.float64)


def final_step_error(diffusion: Process, sigma: torch.Tensor, t: float) -> float:
    """The covariance error of E[x0 | x_t] when x_t ~ q(x_t) exactly: what every sampler's last step (the
    jump from its last timestep ``t`` to the clean data, which returns the x0 prediction) leaves behind."""
    a, _ = alpha_sigma(diffusion, t)
    c_t = marginal_cov(diffusion, sigma, t)
    # E[x0 | x_t] = mu + a Sigma C_t^{-1} (x_t - a mu) (PRML eq. 2.81), so Cov = a^2 Sigma C_t^{-1} Sigma
    cov = a * a * sigma @ torch.linalg.solve(c_t, sigma)
    return relative_frobenius(cov, sigma)


def probe_points(dim: int) -> torch.Tensor:
    """The probes x_T in {0, e_1, ..., e_D}, [D + 1, D]: enough to read off an affine map of R^D."""
    return torch.cat([torch.zeros(1, dim), torch.eye(dim)])


def affine_map(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, b), float64, from an affine map's outputs at x_T = 0, e_1, ..., e_D (the rows of ``y``)."""
    y = y.double()
    b = y[0]
    return (y[1:] - b).T, b  # f(e_i) - f(0) = A e_i, the i-th column of A


def sampler_affine_map(
    sampler: Sampler, model: Model, diffusion: Process, dim: int, **sample_kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, b) of a deterministic ``sampler`` driven by an affine ``model`` (the Gaussian oracle, or one class
    of a labelled mixture whose class is one Gaussian): its output is A x_T + b. ``sample_kwargs`` go to
    ``sampler.sample`` (labels: ``y`` of length ``dim + 1``)."""
    x_T = probe_points(dim)
    return affine_map(
        sampler.sample(model, diffusion, (dim + 1, dim), x_T=x_T, progress=False, **sample_kwargs)
    )


def affine_moments(
    sampler: Sampler, model: Model, diffusion: Process, dim: int, **sample_kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact (mean, covariance) of a deterministic ``sampler``'s samples from x_T = prior_std z, z ~ N(0, I)
    (:meth:`~ddpm.process.Process.prior_std`: 1 on DDPM's chain) under an affine ``model`` (see
    ``sampler_affine_map``), float64."""
    a_mat, b = sampler_affine_map(sampler, model, diffusion, dim, **sample_kwargs)
    scale = diffusion.prior_std(sampler.timesteps(diffusion)[0])
    return b, scale**2 * a_mat @ a_mat.T  # x_T ~ N(0, s^2 I): E[A x_T + b] = b, Cov(A x_T + b) = s^2 A A^T


def covariance_sampling_noise(cov: torch.Tensor, n: int) -> float:
    """||C_mc - C||_F expected from a covariance estimated on ``n`` Gaussian draws of covariance ``cov``."""
    # Wishart second moments: Var(C_mc[i, j]) = (C_ii C_jj + C_ij^2) / (n - 1) for Gaussian samples
    return math.sqrt(float((torch.outer(cov.diag(), cov.diag()) + cov**2).sum()) / (n - 1))


def bootstrap_se(
    x: torch.Tensor, stat: Callable[[torch.Tensor], float], seed: int, resamples: int = BOOTSTRAP_RESAMPLES
) -> float:
    """Bootstrap standard error of ``stat`` over the rows of ``x``, ``resamples`` resamples drawn with
    ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    # Efron & Tibshirani 1993, alg. 6.1: the standard deviation of stat over resamples with replacement
    values = [stat(x[torch.randint(len(x), (len(x),), generator=gen)]) for _ in range(resamples)]
    return statistics.stdev(values)


def ddpm_moments(
    sampler: DDPMSampler, diffusion: Process, oracle: GaussianOracle
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact mean and covariance of DDPM's samples on the Gaussian oracle, from x_T ~ N(0, I).

    Each ancestral step is x' = M x + c + G z with z ~ N(0, I) (the oracle is affine, the step linear in x,
    the output and z), so the moments propagate exactly; M, c and G are read off the sampler's own ``step``
    on probe inputs.
    """
    dim = oracle.dim
    ts = sampler.timesteps(diffusion)
    zeros, eye = torch.zeros(dim, dim), torch.eye(dim)
    probe_x = torch.cat([torch.zeros(1, dim), eye, zeros])  # x = 0, e_i (noise 0), then 0 (noise e_i)
    probe_z = torch.cat([torch.zeros(1, dim), zeros, eye])
    mean, cov = torch.zeros(dim, dtype=torch.float64), torch.eye(dim, dtype=torch.float64)
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        out = oracle(probe_x, torch.full((len(probe_x),), t, dtype=torch.long)).float()
        y = sampler.step(diffusion, out, t, t_prev, probe_x, noise=probe_z).prev_sample.double()
        c = y[0]
        m_mat, g_mat = (y[1 : dim + 1] - c).T, (y[dim + 1 :] - c).T
        # Cov(M x + c + G z) = M Cov(x) M^T + G G^T for z ~ N(0, I) independent of x
        mean, cov = m_mat @ mean + c, m_mat @ cov @ m_mat.T + g_mat @ g_mat.T
    return mean, cov


@dataclass
class CovarianceResult:
    """What ``covariance_error`` measured for one sampler.

    Attributes:
        cov_error: ||C - Sigma||_F / ||Sigma||_F of the samples.
        mean_error: ||m - mu||_2.
        nfe: network evaluations per sample.
        method: ``affine`` (exact) or ``monte carlo``.
        cov_error_se: bootstrap standard error of ``cov_error`` (Monte Carlo only).
        exact_cov_error: the exact figure (affine map, or DDPM's propagated moments).
        solver_error: relative covariance error of the state at the last timestep the network sees, against
            the exact probability-flow ODE from the same x_T (deterministic samplers only): the integration
            error alone, without the final jump to the clean data.
        final_step_error: the covariance error an exact solver would still have after that final jump from
            the same last timestep (the x0 prediction E[x0 | x_t] has less variance than x0).
        t_min: that last timestep.
    """

    cov_error: float
    mean_error: float
    nfe: int
    method: str
    cov_error_se: float | None = None
    exact_cov_error: float | None = None
    solver_error: float | None = None
    final_step_error: float | None = None
    t_min: float | None = None


def covariance_error(
    sampler: Sampler,
    diffusion: Process,
    mu: torch.Tensor,
    sigma: torch.Tensor,
    mc_n: int = 20_000,
    seed: int = 0,
) -> CovarianceResult:
    """The covariance and mean error of ``sampler`` on the Gaussian oracle N(mu, Sigma).

    Deterministic samplers: exactly, from their affine map x_T -> A x_T + b (C = A A^T, m = b). Stochastic
    ones (DDPM): Monte Carlo on ``mc_n`` samples (seeded) with a bootstrap standard error, and the exact
    figure from the propagated moments for DDPM.
    """
    mu, sigma = torch.as_tensor(mu).double(), torch.as_tensor(sigma).double()
    oracle = GaussianOracle(diffusion, mu, sigma)
    dim = len(mu)
    nfe = sampler.nfe(diffusion)
    if sampler.stochastic:
        gen = torch.Generator().manual_seed(seed)
        x = sampler.sample(oracle, diffusion, (mc_n, dim), generator=gen, progress=False).double()
        err = relative_frobenius(torch.cov(x.T), sigma)
        se = bootstrap_se(x, lambda s: relative_frobenius(torch.cov(s.T), sigma), seed)
        exact = None
        if isinstance(sampler, DDPMSampler):
            _, exact_cov = ddpm_moments(sampler, diffusion, oracle)
            exact = relative_frobenius(exact_cov, sigma)
        return CovarianceResult(err, float((x.mean(0) - mu).norm()), nfe, "monte carlo", se, exact)
    res = sampler.sample(
        oracle, diffusion, (dim + 1, dim), x_T=probe_points(dim), progress=False, return_trajectory=True
    )
    a_mat, b = affine_map(res.samples)
    ts = res.timesteps
    scale = diffusion.prior_std(ts[0])  # x_T = scale z: 1 on DDPM's chain, sigma_max on EDM's process
    err = relative_frobenius(scale**2 * a_mat @ a_mat.T, sigma)  # Cov(A x_T + b) = scale^2 A A^T
    t_min, t_start = float(ts[-1]), float(ts[0])
    # the state when the network is called for the last time: trajectory[-2] (trajectory[0] is x_T)
    a_last, _ = affine_map(res.trajectory[-2])
    c_start, c_min = marginal_cov(diffusion, sigma, t_start), marginal_cov(diffusion, sigma, t_min)
    # the exact probability-flow ODE (Song et al. 2021, eq. 13) with the Gaussian score maps x_s - a_s mu to
    # C_t^{1/2} C_s^{-1/2} (x_s - a_s mu) (all C_t commute: functions of Sigma); from x_T ~ N(0, I) at s the
    # state at t then has covariance C_t C_s^{-1}, the reference that leaves N(0, I) vs q(x_T) out
    target = c_min @ torch.linalg.inv(c_start)
    solver = relative_frobenius(a_last @ a_last.T, target)
    return CovarianceResult(
        cov_error=err,
        mean_error=float((b - mu).norm()),
        nfe=nfe,
        method="affine",
        exact_cov_error=err,
        solver_error=solver,
        final_step_error=final_step_error(diffusion, sigma, t_min),
        t_min=t_min,
    )


def verify_affine(
    sampler: Sampler,
    diffusion: Process,
    mu: torch.Tensor,
    sigma: torch.Tensor,
    n: int = 20_000,
    seed: int = 0,
) -> dict[str, float]:
    """Check that a deterministic sampler is the affine map the exact covariance assumes, on ``n`` draws.

    Returns the largest pointwise gap |f(x_T) - (A x_T + b)| over the draws, the covariance error of the
    affine map and of the Monte-Carlo samples with its bootstrap standard error, and ||C_mc - A A^T||_F
    against the expected sampling noise of a covariance estimated from ``n`` Gaussian draws.
    """
    mu, sigma = torch.as_tensor(mu).double(), torch.as_tensor(sigma).double()
    oracle = GaussianOracle(diffusion, mu, sigma)
    dim = len(mu)
    a_mat, b = sampler_affine_map(sampler, oracle, diffusion, dim)
    x_t = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    x = sampler.sample(oracle, diffusion, (n, dim), x_T=x_t, progress=False).double()
    gap = float((x - (x_t.double() @ a_mat.T + b)).abs().max())
    c_aff, c_mc = a_mat @ a_mat.T, torch.cov(x.T)
    return {
        "n": n,
        "max_gap": gap,
        "cov_error_affine": relative_frobenius(c_aff, sigma),
        "cov_error_mc": relative_frobenius(c_mc, sigma),
        "cov_error_mc_se": bootstrap_se(x, lambda s: relative_frobenius(torch.cov(s.T), sigma), seed),
        "mc_vs_affine": float((c_mc - c_aff).norm()),
        "mc_noise": covariance_sampling_noise(c_aff, n),
    }


# ---------------------------------------------------------------------------------------------- mixtures
def mode_weight_error(oracle: GaussianMixtureOracle, x: torch.Tensor) -> float:
    """Total variation between the fraction of ``x`` per component and the mixture's weights."""
    # total variation between the mode fractions f_k and the weights w_k: 0.5 sum_k |f_k - w_k|
    return 0.5 * float((oracle.mode_weights(x) - oracle.weights).abs().sum())


@dataclass
class DataDraws:
    """Two independent data draws and their energy distance: the floor a sample of the same size meets."""

    held_out: torch.Tensor
    second: torch.Tensor
    floor: float
    tv: float


def data_draws(oracle: GaussianMixtureOracle, n: int, seed: int) -> DataDraws:
    """``n`` held-out and ``n`` second data draws for ``seed`` (a stream apart from the samplers' x_T)."""
    gen = torch.Generator().manual_seed(1_000_000 + seed)
    held_out, second = oracle.sample(n, gen), oracle.sample(n, gen)
    # metrics.quality_report's energy_floor: the energy distance between two data draws of size n; and the
    # mode-weight error that n exact draws show
    return DataDraws(held_out, second, energy_distance(second, held_out), mode_weight_error(oracle, held_out))


@dataclass
class MixtureResult:
    """One sampler, one seed: the energy distance to held-out data, its floor, and the mode-weight error."""

    energy: float
    floor: float
    tv: float
    nfe: int

    @property
    def ratio(self) -> float:
        """Energy distance / data-vs-data floor (``QualityReport.ratio``)."""
        return self.energy / self.floor


def null_band(
    oracle: GaussianMixtureOracle, draws: Sequence[DataDraws], replicates: int, seed: int
) -> list[float]:
    """Pooled ratios that exact samples reach: ``replicates`` times, a fresh data draw per seed is scored
    against that seed's held-out set and floor like a sampler's samples. Sorted ascending."""
    gen = torch.Generator().manual_seed(seed)
    floors = sum(d.floor for d in draws)
    out = []
    for _ in range(replicates):
        # an exact sampler's samples are one more data draw: sum of energies / sum of floors, as a sampler's
        out.append(
            sum(energy_distance(oracle.sample(len(d.held_out), gen), d.held_out) for d in draws) / floors
        )
    return sorted(out)


def mixture_quality(
    sampler: Sampler, oracle: GaussianMixtureOracle, n: int, seed: int, data: DataDraws | None = None
) -> MixtureResult:
    """``n`` samples from x_T drawn with ``seed`` (the same x_T for every sampler: paired comparisons),
    scored against data draws of the same seed (``data``, or drawn here)."""
    data = data or data_draws(oracle, n, seed)
    gen = torch.Generator().manual_seed(seed)
    x = sampler.sample(oracle, oracle.diffusion, (n, oracle.dim), generator=gen, progress=False)
    # the energy figure of metrics.quality_report(x, held_out, second): energy_distance(x, held_out)
    energy = energy_distance(x, data.held_out)
    return MixtureResult(energy, data.floor, mode_weight_error(oracle, x), sampler.nfe(oracle.diffusion))


# ---------------------------------------------------------------------------------------------- slopes
@dataclass
class SlopeFit:
    """A least-squares line through log(error) against log(NFE)."""

    slope: float
    points: int
    nfe_lo: int
    nfe_hi: int


def fit_slope(
    points: Sequence[tuple[int, float]], floor: float, ceiling: float = FIT_CEILING
) -> SlopeFit | None:
    """The log-log slope of error against NFE over the points with FIT_FLOOR_FACTOR x floor < error <=
    ceiling (None with fewer than two such points at distinct NFE)."""
    use = sorted((nfe, e) for nfe, e in points if FIT_FLOOR_FACTOR * floor < e <= ceiling)
    if len({nfe for nfe, _ in use}) < 2:
        return None
    xs = [math.log(nfe) for nfe, _ in use]
    ys = [math.log(e) for _, e in use]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    # ordinary least squares: slope = sum (x - mx)(y - my) / sum (x - mx)^2
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return SlopeFit(slope, len(use), use[0][0], use[-1][0])


# ------------------------------------------------------------------------------------------ distillation
class OracleDenoiser(torch.nn.Module):
    """The Gaussian oracle's E[x0 | x_t] as a network (an x0-prediction in float32): a distillation's
    teacher."""

    def __init__(self, oracle: GaussianMixtureOracle) -> None:
        super().__init__()
        self.oracle = oracle
        self.anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)  # where the copies live

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0*(x_t, t)."""
        return self.oracle.x0(x_t.double(), t).float()


class AffineStudent(torch.nn.Module):
    """An affine map of x_t per integer timestep, ``A_t x_t + b_t``: enough capacity to match a Gaussian
    teacher's DDIM steps exactly (every one is affine), nothing more."""

    def __init__(self, T: int, dim: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(T, dim, dim))
        self.bias = torch.nn.Parameter(torch.zeros(T, dim))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """A_t x_t + b_t per sample."""
        t = t.long()
        return torch.einsum("bij,bj->bi", self.weight[t], x_t) + self.bias[t]


def distil_gaussian_oracle(
    diffusion: Process,
    mu: torch.Tensor,
    sigma: torch.Tensor,
    teacher_steps: int,
    student_steps: int,
    round_steps: int,
    batch: int = 512,
    lr: float = 0.05,
    seed: int = 0,
) -> dict[str, float]:
    """Progressive distillation of the Gaussian oracle N(mu, Sigma) on ``diffusion`` (a chain; its objective
    is the student's) into an :class:`AffineStudent`, each round a fresh Adam; the covariance errors
    (relative Frobenius) of DDIM-``student_steps`` on the student against the first teacher's
    DDIM-``teacher_steps`` (``student_vs_teacher``) and, as the teacher's and plain DDIM-``student_steps``'s
    own, against the converged ODE, DDIM with every one of the T steps (``student``, ``teacher``, ``plain``).
    """
    from ddpm.distillation import ProgressiveDistillationLoss
    from ddpm.samplers import DDIMSampler
    from ddpm.timestep_sampling import GridTimes, check_loss

    torch.manual_seed(seed)
    oracle = GaussianOracle(diffusion, mu, sigma)
    loss = ProgressiveDistillationLoss(
        diffusion, teacher_steps=teacher_steps, student_steps=student_steps, round_steps=round_steps
    )
    loss.use_teacher(OracleDenoiser(oracle))
    times = GridTimes(diffusion)
    check_loss(times, loss)
    dim = len(oracle.mu)
    T = require_chain(diffusion, "distil_gaussian_oracle").num_timesteps
    net = AffineStudent(T, dim)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for step in range(loss.total_steps):
        loss.prepare(step, net)
        if step % round_steps == 0:  # each round a fresh optimizer, as each round starts a new fit
            opt = torch.optim.Adam(net.parameters(), lr=lr)
        x0 = oracle.sample(batch, generator=gen).float()
        t, _ = times.sample(batch, generator=gen)
        losses = loss(net, x0, t, torch.randn(x0.shape, generator=gen))
        opt.zero_grad()
        losses.mean().backward()
        opt.step()
    converged = affine_moments(DDIMSampler(steps=T), oracle, diffusion, dim)[1]
    teacher = affine_moments(DDIMSampler(steps=teacher_steps), oracle, diffusion, dim)[1]
    plain = affine_moments(DDIMSampler(steps=student_steps), oracle, diffusion, dim)[1]
    student = affine_moments(DDIMSampler(steps=student_steps), net, diffusion, dim)[1]
    return {
        "student_vs_teacher": relative_frobenius(student, teacher),
        "student": relative_frobenius(student, converged),
        "teacher": relative_frobenius(teacher, converged),
        "plain": relative_frobenius(plain, converged),
    }
