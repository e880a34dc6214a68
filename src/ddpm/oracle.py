"""The exact optimal denoiser for Gaussian and Gaussian-mixture data: a "network" that needs no training.

For data x0 ~ N(mu, Sigma), or a mixture of such Gaussians, everything a denoiser is trained to predict has a
closed form, so samplers, losses and likelihood bounds can be checked against an exact answer, independently
of any trained network (``scripts/sampler_leaderboard.py`` ranks the samplers this way).

Derivation. The forward process in closed form (Ho et al. 2020, DDPM eq. 4) is

    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,    eps ~ N(0, I) independent of x0,

a linear map of independent Gaussians, so (x0, eps, x_t) are jointly Gaussian with

    q(x_t) = N(sqrt(abar_t) mu, C_t),    C_t = abar_t Sigma + (1 - abar_t) I,
    Cov(eps, x_t) = sqrt(1 - abar_t) I.

Conditioning a joint Gaussian (Bishop 2006, PRML eq. 2.81: E[a | b] = mu_a + S_ab S_bb^{-1} (b - mu_b)) gives

    eps*(x_t, t) = E[eps | x_t] = sqrt(1 - abar_t) C_t^{-1} (x_t - sqrt(abar_t) mu),
    x0*(x_t, t)  = E[x0 | x_t]  = (x_t - sqrt(1 - abar_t) eps*(x_t, t)) / sqrt(abar_t).

A conditional mean minimises the expected squared error, so eps* minimises DDPM's L_simple (DDPM eq. 14)
over every function of (x_t, t): it is what a perfectly trained eps-network computes. The x0 and v targets
are linear in (x0, eps), so their optimal predictions are the same linear maps of x0* and eps*
(v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0; Salimans & Ho 2022, sec. 4). Equivalently
eps* = -sqrt(1 - abar_t) grad log q(x_t): Tweedie's formula (Efron 2011, "Tweedie's formula and selection
bias", JASA 106) applied to x_t given sqrt(abar_t) x0.

Mixtures. For x0 ~ sum_k w_k N(mu_k, Sigma_k) the forward process acts on each component alone, so
q(x_t) = sum_k w_k N(sqrt(abar_t) mu_k, C_k), C_k = abar_t Sigma_k + (1 - abar_t) I, and by Tweedie's formula

    eps*(x_t, t) = -sqrt(1 - abar_t) grad log q(x_t)
                 = sqrt(1 - abar_t) sum_k r_k(x_t) C_k^{-1} (x_t - sqrt(abar_t) mu_k),

with r_k(x_t) the posterior probability of component k given x_t (Bishop 2006, PRML eq. 9.13). One component
gives the Gaussian formula above.

Labelled mixtures. When each component k carries a class c(k), the class-conditional data distribution is
the mixture of that class's components alone, q(x0 | y) = sum_{c(k) = y} w_k N(mu_k, Sigma_k) / sum_{c(k) = y}
w_k, and the forward process acts on it the same way, so eps*(x_t, t, y) is the formula above with r_k
restricted to (and renormalised over) the components of class y: exactly what a perfectly trained
class-conditional network computes, and with the null label (y = num_classes) the unconditional eps*.
Classifier-free guidance (:mod:`ddpm.samplers.guidance`) is checked against these.

Timesteps may be fractional (the Heun sampler's Karras noise levels): abar_t is then
``GaussianDiffusion.alphas_cumprod_at``. Any other process (EDM's x = x0 + sigma n) is the same one after
dividing x_t by sqrt(alpha^2 + sigma^2) (EDM table 1): its abar is alpha^2 / (alpha^2 + sigma^2), and for
EDM's process the oracle outputs x0*, the ideal denoiser D(x; sigma) (EDM eq. 3 at its optimum), and for the
flow's straight path (alpha = 1 - t, sigma = t) the exact velocity E[n - x0 | x_t] (:meth:`velocity`).
Plain PyTorch: no Lightning or Hydra import.
"""

from __future__ import annotations

import math

import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.process import Process

__all__ = ["GaussianMixtureOracle", "GaussianOracle"]


class GaussianMixtureOracle:
    """The exact optimal network for x0 ~ sum_k w_k N(mu_k, Sigma_k) under ``diffusion``'s objective.

    Call it as a model, ``oracle(x_t, t)`` (or ``oracle(x_t, t, y)`` with class labels, like a conditional
    network whose ``num_classes`` is the null label), wherever a trained network goes (samplers,
    ``training_loss``, ``variational_bound``). The closed forms are computed in float64; see the module
    docstring for their derivation. Data of any shape [B, *S] with prod(S) = D is accepted and flattened to
    [B, D] per sample.

    Args:
        diffusion: the forward process (its ``alphas_cumprod`` and ``objective`` are used).
        means: the component means, [K, D].
        covs: the component covariances, [K, D, D], symmetric positive semi-definite.
        weights: the mixture weights, K positive values (normalised to sum to 1).
        classes: the class of each component, K integers in 0 .. C - 1 with every class used (default: each
            component its own class, C = K); ``num_classes`` is C.
    """

    def __init__(
        self,
        diffusion: Process,
        means: torch.Tensor,
        covs: torch.Tensor,
        weights: torch.Tensor | None = None,
        classes: torch.Tensor | None = None,
    ) -> None:
        means = torch.as_tensor(means).double()
        covs = torch.as_tensor(covs).double()
        if means.ndim != 2:
            raise ValueError(f"means has shape {tuple(means.shape)}; it must be [K, D]")
        k, d = means.shape
        if covs.shape != (k, d, d):
            raise ValueError(
                f"covs has shape {tuple(covs.shape)}; for means of shape ({k}, {d}) "
                f"it must be ({k}, {d}, {d})"
            )
        weights = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(weights).double()
        if weights.shape != (k,) or not bool((weights > 0).all()):
            raise ValueError(f"weights must be {k} positive values, got {weights.tolist()}")
        self.diffusion = diffusion
        self.means = means
        self.covs = covs
        self.weights = weights / weights.sum()
        classes = torch.arange(k) if classes is None else torch.as_tensor(classes)
        if classes.shape != (k,) or classes.is_floating_point() or int(classes.min()) < 0:
            raise ValueError(f"classes must be {k} integers >= 0, one per component, got {classes.tolist()}")
        self.classes = classes.long()
        self.num_classes = int(self.classes.max()) + 1
        if len(self.classes.unique()) != self.num_classes:
            raise ValueError(
                f"classes {classes.tolist()} leave a class in 0 .. {self.num_classes - 1} unused"
            )

    @classmethod
    def eight_gaussians(
        cls, diffusion: Process, radius: float = 2.0, std: float = 0.1
    ) -> GaussianMixtureOracle:
        """Eight equal Gaussians on a circle: the layout of the ``eight_gaussians`` toy data set."""
        angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
        return cls(diffusion, means, (std**2) * torch.eye(2, dtype=torch.float64).expand(8, 2, 2))

    @classmethod
    def anisotropic(cls, diffusion: Process) -> GaussianMixtureOracle:
        """Three unequal, elongated and correlated components with weights 0.5, 0.3, 0.2."""
        means = torch.tensor([[-1.5, 0.0], [1.5, 1.0], [0.5, -1.5]], dtype=torch.float64)
        covs = torch.tensor(
            [[[0.30, 0.20], [0.20, 0.20]], [[0.05, 0.0], [0.0, 0.40]], [[0.20, -0.12], [-0.12, 0.10]]],
            dtype=torch.float64,
        )
        return cls(diffusion, means, covs, torch.tensor([0.5, 0.3, 0.2]))

    @property
    def dim(self) -> int:
        """D, the number of values in one sample."""
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None, y: int | None = None) -> torch.Tensor:
        """n draws of x0 from the data distribution, float64 [n, D]; from class ``y``'s alone when given."""
        weights = self.weights if y is None else self.weights * (self.classes == y)
        k = torch.multinomial(weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        # Sigma_k may be singular (a point mass): eigen-decomposition rather than Cholesky
        vals, vecs = torch.linalg.eigh(self.covs)
        roots = vecs * vals.clamp(min=0).sqrt()[:, None, :]
        return self.means[k] + (roots[k] @ z[:, :, None])[:, :, 0]

    def mode_weights(self, x0: torch.Tensor) -> torch.Tensor:
        """The fraction of samples x0 [N, D] each component most probably drew (PRML eq. 9.13 at t = 0)."""
        log_r = self._component_log_density(x0)
        return torch.bincount(log_r.argmax(1), minlength=len(self.weights)).double() / len(x0)

    def _component_log_density(self, x0: torch.Tensor) -> torch.Tensor:
        """log w_k + log N(x0; mu_k, Sigma_k), float64 [N, K] (Sigma_k jittered: it may be singular)."""
        x = x0.reshape(x0.shape[0], -1).double()
        covs = self.covs + 1e-9 * torch.eye(self.dim, dtype=torch.float64)
        return torch.stack(
            [
                torch.distributions.MultivariateNormal(m, c).log_prob(x) + w.log()
                for m, c, w in zip(self.means, covs, self.weights, strict=True)
            ],
            dim=1,
        )

    def class_log_prob(self, x0: torch.Tensor, y: torch.Tensor | int) -> torch.Tensor:
        """log p(y | x0) [N] under the labelled mixture: Bayes' rule over the components of class y."""
        log_p = self._component_log_density(x0)
        y = torch.as_tensor(y).expand(len(log_p)).long()
        mine = self.classes[None, :] == y[:, None]
        return torch.logsumexp(log_p.masked_fill(~mine, -math.inf), 1) - torch.logsumexp(log_p, 1)

    def _abar(self, t: torch.Tensor | int | float, batch: int, device: torch.device) -> torch.Tensor:
        """abar_t per sample, float64, shape [B] (fractional t interpolated as the diffusion does); for
        another process, the abar of equal SNR, alpha^2 / (alpha^2 + sigma^2) (:meth:`_scale`)."""
        t = torch.as_tensor(t, device=device)
        if t.ndim == 0:
            t = t.expand(batch)
        if not isinstance(self.diffusion, GaussianDiffusion):
            alpha, sigma = self.diffusion.alpha(t.double()), self.diffusion.sigma(t.double())
            return (alpha.square() / (alpha.square() + sigma.square())).double().to(device)
        if t.is_floating_point():
            return self.diffusion.alphas_cumprod_at(t.cpu()).to(device)
        return self.diffusion.alphas_cumprod.to(device).double()[t.long()]

    def _scale(self, t: torch.Tensor | int | float, batch: int, device: torch.device) -> torch.Tensor:
        """sqrt(alpha^2 + sigma^2) per sample, float64 [B]: x_t divided by it is the variance-preserving
        sample of equal SNR (EDM table 1), on which the closed forms are written; 1 on DDPM's chain."""
        if isinstance(self.diffusion, GaussianDiffusion):
            return torch.ones(batch, dtype=torch.float64, device=device)
        t = torch.as_tensor(t, device=device).double()
        t = t.expand(batch) if t.ndim == 0 else t
        alpha, sigma = self.diffusion.alpha(t), self.diffusion.sigma(t)
        return (alpha.square() + sigma.square()).sqrt().double().to(device)

    def _component_moments(self, abar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Means [U, K, D] and covariances [U, K, D, D] of each component of q(x_t), for abar of shape [U]."""
        a = abar[:, None, None, None]
        eye = torch.eye(self.dim, dtype=torch.float64, device=abar.device)
        mean = a[..., 0].sqrt() * self.means.to(abar.device)  # DDPM eq. 4: E[x_t | k] = sqrt(abar_t) mu_k
        cov = a * self.covs.to(abar.device) + (1 - a) * eye  # DDPM eq. 4: Cov[x_t | k] = C_k
        return mean, cov

    def _eps_and_x0(
        self, x_t: torch.Tensor, t: torch.Tensor | int | float, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps*, x0*) as float64 [B, D], given class labels ``y`` [B] (num_classes or None: no label)."""
        x = x_t.reshape(x_t.shape[0], -1).double()
        if x.shape[1] != self.dim:
            raise ValueError(f"x_t has {x.shape[1]} values per sample; this oracle's data has {self.dim}")
        abar = self._abar(t, len(x), x.device)
        x = x / self._scale(t, len(x), x.device)[:, None]  # the variance-preserving sample of equal SNR
        # a sampler asks at one timestep for the whole batch: factor each distinct C_k once
        levels, which = torch.unique(abar, return_inverse=True)
        mean, cov = self._component_moments(levels)
        chol = torch.linalg.cholesky(cov)  # C_k is symmetric positive definite (1 - abar_t > 0)
        precision = torch.cholesky_inverse(chol)  # [U, K, D, D]
        diff = x[:, None, :] - mean[which]  # [B, K, D]
        if len(levels) == 1:  # D x D products over the batch instead of B tiny gathered ones
            sol = torch.einsum("kij,bkj->bki", precision[0], diff)  # C_k^{-1} (x_t - E[x_t | k])
        else:
            sol = torch.einsum("bkij,bkj->bki", precision[which], diff)
        if len(self.weights) == 1:
            r = torch.ones(len(x), 1, dtype=torch.float64, device=x.device)
        else:
            # PRML eq. 9.13: r_k proportional to w_k N(x_t; sqrt(abar_t) mu_k, C_k)
            log_det = 2 * torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)[which]  # [B, K]
            log_r = self.weights.to(x.device).log() - 0.5 * ((diff * sol).sum(-1) + log_det)
            if y is not None:
                # q(x0 | y): only class y's components; the null label keeps them all (module docstring)
                y = torch.as_tensor(y, device=x.device).long().reshape(-1).expand(len(x))
                if int(y.min()) < 0 or int(y.max()) > self.num_classes:
                    raise ValueError(
                        f"y holds labels outside 0 .. {self.num_classes} (num_classes: no label)"
                    )
                classes = self.classes.to(x.device)
                keep = (classes[None, :] == y[:, None]) | (y[:, None] == self.num_classes)
                log_r = log_r.masked_fill(~keep, -math.inf)
            r = torch.softmax(log_r, dim=1)
        abar = abar[:, None]
        eps = (1 - abar).sqrt() * (r[:, :, None] * sol).sum(1)  # Tweedie: -sqrt(1 - abar_t) grad log q(x_t)
        x0 = (x - (1 - abar).sqrt() * eps) / abar.sqrt()  # DDPM eq. 4 solved for x0, in expectation (Tweedie)
        pure = abar[:, 0] == 0
        if bool(pure.any()):
            # zero terminal SNR: the form above is 0 / 0 at abar = 0, where x_t says nothing of x0 and
            # E[x0 | x_t] is the data mean (PRML eq. 2.81: E[x0 | x_t, k] = mu_k + sqrt(abar) Sigma_k ...)
            x0[pure] = (r[pure, :, None] * self.means.to(x.device)[None]).sum(1)
        return eps, x0

    def eps(
        self, x_t: torch.Tensor, t: torch.Tensor | int | float, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """eps*(x_t, t) = E[eps | x_t] (E[eps | x_t, y] given labels), float64, shaped like ``x_t``."""
        return self._eps_and_x0(x_t, t, y)[0].reshape(x_t.shape)

    def x0(
        self, x_t: torch.Tensor, t: torch.Tensor | int | float, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x0*(x_t, t) = E[x0 | x_t] (Tweedie's formula; E[x0 | x_t, y] given labels), float64, shaped like
        ``x_t``."""
        return self._eps_and_x0(x_t, t, y)[1].reshape(x_t.shape)

    def velocity(
        self, x_t: torch.Tensor, t: torch.Tensor | int | float, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """v*(x_t, t) = E[n - x0 | x_t], float64, shaped like ``x_t``: the marginal velocity of the straight
        path (flow matching, Lipman et al. 2023 eq. 8: the conditional velocities n - x0 averaged over the
        pairs through x_t), what a perfectly trained flow network computes on
        :class:`~ddpm.flow.FlowProcess`; linear in (x0*, eps*), so Tweedie's formula gives it exactly."""
        eps, x0 = self._eps_and_x0(x_t, t, y)
        return (eps - x0).reshape(x_t.shape)  # rectified flow eq. 1's drift, in expectation given x_t

    def __call__(
        self, x_t: torch.Tensor, t: torch.Tensor | int | float, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The network output under the diffusion's parameterisation (eps*, x0* or v*), in ``x_t``'s
        dtype; given labels ``y`` [B], class-conditional (``num_classes``: the null label)."""
        eps, x0 = (v.reshape(x_t.shape) for v in self._eps_and_x0(x_t, t, y))
        shape = (-1, *([1] * (x_t.ndim - 1)))
        a = self._abar(t, x_t.shape[0], x_t.device).reshape(shape)
        scale = self._scale(t, x_t.shape[0], x_t.device).reshape(shape)
        # the targets are linear in (x0, eps), so the optimal target is the target of (x0*, eps*), at the
        # process's alpha = sqrt(abar) and sigma = sqrt(1 - abar) (DDPM eq. 4; another process: times its
        # scale). EDM's denoiser outputs x0* itself.
        target = self.diffusion.parameterization.target(x0, eps, a.sqrt() * scale, (1 - a).sqrt() * scale)
        return target.to(x_t.dtype)


class GaussianOracle(GaussianMixtureOracle):
    """The exact optimal network for x0 ~ N(mu, Sigma): the one-component mixture.

    Args:
        diffusion: the forward process (its ``alphas_cumprod`` and ``objective`` are used).
        mu: the data mean; D values (any shape, flattened).
        sigma: the data covariance, [D, D], symmetric positive semi-definite.
    """

    def __init__(self, diffusion: Process, mu: torch.Tensor, sigma: torch.Tensor) -> None:
        mu = torch.as_tensor(mu).double().reshape(-1)
        sigma = torch.as_tensor(sigma).double()
        d = mu.numel()
        if sigma.shape != (d, d):
            raise ValueError(
                f"sigma has shape {tuple(sigma.shape)}; for a mean of {d} values it must be ({d}, {d})"
            )
        super().__init__(diffusion, mu[None], sigma[None])
        self.mu = mu
        self.sigma = sigma

    def marginal(
        self, t: torch.Tensor | int | float, batch: int = 1, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean [B, D] and covariance [B, D, D] of q(x_t), float64 (B = len(t), or ``batch`` for a
        scalar t)."""
        mean, cov = self._component_moments(self._abar(t, batch, torch.device(device)))
        return mean[:, 0], cov[:, 0]
