"""From a composed config to a run's objects, and from a finished run folder back to them.

This is the one place that knows how the config groups combine: the ``schedule`` node builds the betas
the ``diffusion`` node takes, the ``loss`` and ``timestep_sampler`` nodes take the diffusion, ``data``
says the shape ``model`` and the module see, ``optimizer`` and ``lr_scheduler`` are partials the module
calls. :func:`build` makes a new run's DataModule and
DiffusionModule (Lightning, for training); :func:`load_run` rebuilds a trained one from its checkpoint with
its own config (never today's defaults) in plain PyTorch, a :class:`~ddpm.sampling_model.SamplingModel`
and the run's data class (:data:`ddpm.data.PLAIN_DATA`), with its sampler and any ``sampler=...``
overrides applied. Loading a run imports neither Lightning nor torchmetrics, so the commands that only
sample and evaluate start in seconds.

A run folder (``outputs/<task>/runs/<timestamp>/``) holds ``.hydra/config.yaml`` (the composed config),
``checkpoints/`` (``last.ckpt``, ``best.ckpt``), the loggers' files, and what :mod:`ddpm.results` writes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from ddpm import registry
from ddpm.config import ConfigError, first_line, root_cause
from ddpm.data.kinds import RunData
from ddpm.losses import Loss, default_loss
from ddpm.process import Process
from ddpm.run_folder import find_checkpoint, run_dir_of
from ddpm.safe_loading import load_checkpoint, read_safetensors_run
from ddpm.sampler_overrides import sampler_config
from ddpm.samplers import Sampler
from ddpm.sampling_model import SamplingModel
from ddpm.stored_config import (
    RunIdentity,
    StoredConfigError,
    read_json,
    read_yaml,
    require_regular_file,
    run_identity,
)
from ddpm.timestep_sampling import TimestepDistribution, check_loss, default_timesteps

if TYPE_CHECKING:  # Lightning: imported by build() only, so that loading a run does not pay for it
    from ddpm.lit_module import DiffusionModule

__all__ = [
    "LoadedRun",
    "build",
    "build_data",
    "build_diffusion",
    "build_for_sampling",
    "build_model",
    "build_training",
    "check_network",
    "check_stored_network",
    "fitted_schedule",
    "load_run",
    "sampler_for",
    "stored_identity",
]


def _instantiate(cfg: DictConfig, key: str, node: Any = None, plain: bool = False, **completion: Any) -> Any:
    """``cfg[key]`` (or ``node`` in its place) built; a partial node is then called with ``completion``
    (what other nodes built).

    ddpm-lab's own options are built by :mod:`ddpm.registry` from values checked against their classes'
    signatures. Any other ``_target_`` can only come from the user's own composition (``conf/`` and the
    command line: a stored config naming one is refused before it gets here), and is built the Hydra way.
    """
    node = cfg[key] if node is None else node
    target = node.get("_target_") if isinstance(node, DictConfig | dict) else None
    if registry.find(key, target) is not None:
        try:
            # a DictConfig's container is a dict
            plain_node = (
                cast(dict[str, Any], OmegaConf.to_container(node, resolve=True))
                if isinstance(node, DictConfig)
                else node
            )
        except OmegaConfBaseException as err:
            raise ConfigError(f"{key}: {first_line(err)}") from None
        return registry.build_option(key, plain_node, key, plain=plain, **completion)
    try:
        built = instantiate(node)
        return built(**completion) if completion else built
    except (InstantiationException, ValueError, TypeError, FileNotFoundError, OmegaConfBaseException) as err:
        raise ConfigError(f"{key}: {first_line(root_cause(err))}") from err


def build_data(cfg: DictConfig, plain: bool = False) -> Any:
    """The data of a config's ``data`` node: its DataModule, or with ``plain`` the DataModule's data class
    (the same arguments, no loaders, no Lightning: :attr:`ddpm.registry.Option.plain`). A target of your
    own composition is built as it is named.

    ``data.data_dim: null`` is filled in with the dimension the data has (a user's file).

    Raises:
        ConfigError: a bad value, with the key it came from.
    """
    data = _instantiate(cfg, "data", plain=plain)
    if "data_dim" in cfg.data and cfg.data.data_dim is None:
        with open_dict(cfg):
            cfg.data.data_dim = data.data_dim  # inferred from the user's file
    return data


def build_model(cfg: DictConfig, data: Any = None) -> torch.nn.Module:
    """The network of a config's ``model`` node; with ``conditional=true``, class-conditional on the
    ``data``'s labels (``model.num_classes`` is set to the data's number of classes and stored so).

    Raises:
        ConfigError: a bad value, with the key it came from, or ``conditional=true`` on data without labels.
    """
    if cfg.get("conditional"):
        classes = int(getattr(data, "num_classes", 0) or 0)
        if not classes:
            raise ConfigError(
                f"conditional=true but data.dataset={cfg.data.get('dataset')!r} has no class labels; "
                "labelled data: eight_gaussians, gaussian_mixture, moons, circles, checkerboard, "
                "array with labels (an .npz 'labels' array or data.label_column), digits, mnist, cifar10"
            )
        with open_dict(cfg):
            cfg.model.num_classes = classes
    return _instantiate(cfg, "model")


def build_diffusion(cfg: DictConfig) -> Process:
    """The process of a config: DDPM's chain (the ``schedule`` node's betas completing the ``diffusion``
    partial), or a continuous process that needs no schedule (``diffusion=edm``).

    Raises:
        ConfigError: a bad value, with the key it came from (the schedule's own errors name the schedule).
    """
    option = registry.find("diffusion", cfg.diffusion.get("_target_"))
    if option is not None and "betas" not in option.completed:
        return _instantiate(cfg, "diffusion")  # continuous: T and the schedule are not used
    betas = _instantiate(cfg, "schedule")  # on its own first, so an error names the schedule
    return _instantiate(cfg, "diffusion", betas=betas)  # a partial: the schedule's betas complete it


def build_training(cfg: DictConfig, diffusion: Process) -> tuple[Loss, TimestepDistribution]:
    """The loss and the timestep sampler of a config, each completed with the diffusion (a run stored
    before they were groups of their own has them in its identity, moved out of ``diffusion``).

    Raises:
        ConfigError: a bad value, with the key it came from.
    """
    # a config composed by hand without these groups gets conf/'s defaults: L_simple, uniform t
    loss = _instantiate(cfg, "loss", diffusion=diffusion) if cfg.get("loss") else default_loss(diffusion)
    timestep_sampler = (
        _instantiate(cfg, "timestep_sampler", process=diffusion)
        if cfg.get("timestep_sampler")
        else default_timesteps(diffusion)
    )
    try:
        check_loss(timestep_sampler, loss)
    except ValueError as err:
        raise ConfigError(f"timestep_sampler: {first_line(err)}") from None
    return loss, timestep_sampler


def check_network(net: torch.nn.Module, diffusion: Process, data_shape: Sequence[int]) -> None:
    """One forward pass of one zero sample: the network's output must be what the diffusion reads
    (twice the data's channels with a learned variance), before any training or sampling.

    Raises:
        ConfigError: in one line, naming the shapes and the setting that fits.
    """
    shape = (1, *(int(s) for s in data_shape))
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    was_training = net.training
    net.eval()
    # the cleanest time the process trains at: index 0 of a chain, sigma_min of EDM's
    t = torch.full((1,), diffusion.time_range[0], device=device)
    try:
        with torch.no_grad():
            out = net(torch.zeros(shape, device=device), t if not diffusion.discrete else t.long())
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"model: {first_line(err)}") from err
    finally:
        net.train(was_training)
    try:
        diffusion.check_output(tuple(out.shape), shape)
    except ValueError as err:
        raise ConfigError(f"model: {first_line(err)}") from None


def _open_teacher(cfg: DictConfig) -> LoadedRun:
    """``teacher=RUN`` opened as any run folder is: weights only, its config data."""
    try:
        return load_run(str(cfg.teacher))
    except (FileNotFoundError, ConfigError, OSError) as err:
        raise ConfigError(f"teacher={str(cfg.teacher)!r}: {first_line(err)}") from None


def _learn_from_teacher(
    cfg: DictConfig, net: torch.nn.Module, diffusion: Process, loss: Loss, sampler: Sampler, datamodule: Any
) -> None:
    """``teacher=RUN``: a distillation (its loss, :mod:`ddpm.distill`) or a reflow (:mod:`ddpm.reflow`: the
    student trains on the teacher's ODE pairs, from the teacher's weights unless ``reflow.init=scratch``);
    each student is checked before the teacher is read, and against it before any pair is drawn."""
    from ddpm import distill

    if not cfg.get("teacher"):
        if distill.is_distillation(loss):
            raise ConfigError(f"loss={loss!r} distils a trained run: give teacher=RUN")
        return
    if distill.is_distillation(loss):
        distill.check_student(cfg, loss, sampler)
        teacher = _open_teacher(cfg)
        distill.check_teacher(cfg, teacher.config, str(cfg.teacher))
        distill.attach_teacher(net, loss, teacher)
        return
    from ddpm import reflow

    reflow.check_student(cfg, diffusion)
    if getattr(datamodule, "kind", None) != "toy":
        raise ConfigError("teacher=... (reflow) is built for toy data; this run's data are images")
    teacher = _open_teacher(cfg)
    from_teacher = reflow.options(cfg)["init"] == "teacher"
    if from_teacher:  # its weights will be the student's: its process and network must be the student's
        try:
            distill.check_teacher(cfg, teacher.config, str(cfg.teacher))
        except ConfigError as err:
            raise ConfigError(f"{err} (reflow.init=teacher; reflow.init=scratch starts afresh)") from None
    datamodule.use_pairs(*reflow.teacher_pairs(cfg, teacher))
    if from_teacher:
        net.load_state_dict(teacher.model.net.state_dict())  # the reference's 2-rectified flow fine-tunes


def build(cfg: DictConfig) -> tuple[Any, DiffusionModule]:
    """Instantiate the DataModule and the DiffusionModule (net, diffusion, sampler, optimizer) of a config,
    for training (this imports Lightning; :func:`build_for_sampling` does not).

    Raises:
        ConfigError: a bad value, with the config key it came from.
    """
    from ddpm.lit_module import DiffusionModule

    datamodule = build_data(cfg)
    net = build_model(cfg, datamodule)
    if (
        cfg.optimizer.get("fused")
        and "mixed" in str(cfg.trainer.get("precision"))
        and cfg.trainer.get("gradient_clip_val")
    ):
        with open_dict(cfg):  # Lightning cannot clip a fused optimizer's gradients under mixed precision
            cfg.optimizer.fused = None  # torch's default: foreach on GPUs
    diffusion = build_diffusion(cfg)
    net = diffusion.wrap_network(net)  # EDM: its preconditioning around the model
    check_network(net, diffusion, datamodule.data_shape)
    loss, timestep_sampler = build_training(cfg, diffusion)
    try:
        loss.check_data((1, *datamodule.data_shape))
    except ValueError as err:
        raise ConfigError(f"loss: {first_line(err)}") from None
    sampler = _instantiate(cfg, "sampler")
    try:  # the sampler against this chain (e.g. a spacing that a zero-terminal-SNR schedule cannot take)
        sampler.timesteps(diffusion)
    except ValueError as err:
        raise ConfigError(f"sampler: {first_line(err)}") from None
    _learn_from_teacher(cfg, net, diffusion, loss, sampler, datamodule)
    optimizer = _instantiate(cfg, "optimizer")
    lr_scheduler = _instantiate(cfg, "lr_scheduler") if cfg.get("lr_scheduler") else None
    if lr_scheduler is not None:  # the partial's own checks run now, not after the trainer starts
        try:
            lr_scheduler(optimizer=torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0))
        except (ValueError, TypeError) as err:
            raise ConfigError(f"lr_scheduler: {first_line(err)}") from err
    module_node = cfg.get("module")  # how this machine runs the network; none in a loaded run's identity
    module_options = (
        cast(dict[str, Any], OmegaConf.to_container(module_node, resolve=True)) if module_node else {}
    )
    module = DiffusionModule(
        net=net,
        diffusion=diffusion,
        sampler=sampler,
        optimizer=optimizer,
        loss=loss,
        timestep_sampler=timestep_sampler,
        lr_scheduler=lr_scheduler,
        data_shape=datamodule.data_shape,
        max_nonfinite_skips=int(cfg.get("max_nonfinite_skips", 0)),
        **module_options,
    )
    # a DictConfig's container is a dict
    module.run_config = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))
    return datamodule, module


def build_for_sampling(cfg: DictConfig) -> tuple[Any, SamplingModel]:
    """The data class and the :class:`~ddpm.sampling_model.SamplingModel` (net, diffusion, sampler) of a
    config, in plain PyTorch: what sampling and evaluating a trained run need (no optimizer, no loaders,
    no Lightning). The weights are the network's initial ones; :func:`load_run` loads the trained ones.

    Raises:
        ConfigError: a bad value, with the config key it came from.
    """
    data = build_data(cfg, plain=True)
    diffusion = build_diffusion(cfg)
    net = diffusion.wrap_network(build_model(cfg, data))
    # no check_network here: a run's config trained its network, and a checkpoint whose output layer does
    # not fit is refused by load_run's state_dict check
    sampler = _instantiate(cfg, "sampler")
    return data, SamplingModel(net, diffusion, sampler, data.data_shape)


def _root_dir() -> str:
    return os.environ.get("DDPM_ROOT", os.getcwd())


def stored_identity(ckpt: dict[str, Any], ckpt_path: Path, run_dir: Path) -> RunIdentity:
    """The identity of the run a checkpoint was trained with (:func:`ddpm.stored_config.run_identity`),
    each group checked against ddpm-lab's options (:func:`ddpm.registry.checked_identity`).

    From the checkpoint itself (``ddpm_config``, written by every ``ddpm-train``), else from the run
    folder's ``.hydra/config.yaml`` (read as plain YAML: no tags, no aliases, no interpolation; its
    ``paths`` are today's, as Hydra saved them as interpolations that only a Hydra job resolves).

    Raises:
        ConfigError: no config found, or it is not plain data of ddpm-lab's options.
    """
    if isinstance(ckpt.get("ddpm_config"), dict):
        identity = run_identity(ckpt["ddpm_config"], f"the config stored in {str(ckpt_path)!r}")
    else:
        hydra_yaml = run_dir / ".hydra" / "config.yaml"
        if not hydra_yaml.is_file():
            raise ConfigError(f"checkpoint {str(ckpt_path)!r} carries no config and {hydra_yaml} is missing")
        stored = read_yaml(hydra_yaml)
        root = _root_dir()
        stored["paths"] = {  # ddpm-lab's own values: where the run and the data are today
            "root_dir": root,
            "data_dir": str(Path(root) / "data"),
            "log_dir": str(Path(root) / "outputs"),
            "output_dir": str(run_dir),
        }
        identity = run_identity(stored, str(hydra_yaml), references=True)  # Hydra saves it unresolved
    registry.checked_identity(identity)
    return identity


def check_stored_network(model: dict[str, Any]) -> None:
    """Refuse, before building it, a stored network whose weights would not fit in memory (its parameters
    counted from its arguments: :func:`ddpm.network_size.check_network_size`).

    Raises:
        ConfigError: naming the count, the bytes and the memory available.
    """
    from ddpm.network_size import NETWORKS, check_network_size

    target = str(model.get("_target_"))
    if target.rsplit(".", 1)[-1] in NETWORKS:
        check_network_size(target, model, "model")


@dataclass
class LoadedRun:
    """A trained run rebuilt from its own config, with EMA weights loaded when the run had EMA.

    ``model`` samples (:meth:`~ddpm.sampling_model.SamplingModel.sample`); ``data`` is the run's data
    class (:class:`~ddpm.data.toy.ToyData` or :class:`~ddpm.data.images.ImageData`: ``kind``,
    ``normalize`` / ``denormalize``, ``held_out``); ``sampler`` is the run's own sampler, or the one the
    overrides given to :func:`load_run` chose.
    """

    model: SamplingModel
    data: RunData
    config: DictConfig
    checkpoint: Path
    run_dir: Path
    sampler: Sampler
    #: the run's logger options (``csv``, ``wandb``, ``tensorboard``): their settings are today's
    loggers: tuple[str, ...] = ()

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one sample."""
        return self.model.data_shape

    def make_sampler(self, overrides: Sequence[str]) -> Sampler:
        """Another sampler for this run: its own sampler config with ``sampler=<option>`` /
        ``sampler.<key>=<value>`` applied (none: the run's sampler), without reading the checkpoint again.

        Raises:
            ConfigError: an override that does not fit the run's sampler or chain (steps > T).
        """
        return sampler_for(self.config, overrides, self.model, self.run_dir)


def fitted_schedule(run_dir: Path | None, steps: object) -> list:
    """The schedule ``ddpm-eval RUN --fit-steps N`` wrote to ``<run>/eval/fitted_<N>.json``, read as plain
    data and checked as a custom list.

    Raises:
        ConfigError: no such file (naming the schedules the run has), or one that is not a schedule.
    """
    from ddpm.samplers.spacing import check_custom_timesteps

    if run_dir is None:
        raise ConfigError("sampler.spacing=fitted needs a run folder (its eval/fitted_<N>.json)")
    path = run_dir / "eval" / f"fitted_{steps}.json"
    if not path.is_file():
        have = sorted(p.stem.removeprefix("fitted_") for p in (run_dir / "eval").glob("fitted_*.json"))
        known = f"it has fitted {', '.join(have)} steps" if have else "it has none yet"
        raise ConfigError(
            f"sampler.spacing=fitted with steps={steps}: {path} does not exist ({known}); fit one with "
            f"ddpm-eval {run_dir} --fit-steps {steps}, or set sampler.steps"
        )
    try:
        stored = read_json(require_regular_file(path, "fitted schedule").read_text(), str(path))
        return check_custom_timesteps(stored.get("timesteps"))
    except (OSError, ValueError, StoredConfigError) as err:
        raise ConfigError(f"sampler.spacing=fitted: {first_line(err)}") from None


def sampler_for(
    cfg: DictConfig, overrides: Sequence[str], model: SamplingModel, run_dir: Path | None = None
) -> Sampler:
    """The run's sampler with ``sampler=<option>`` / ``sampler.<key>=<value>`` applied, checked against
    the run's chain (steps > T fails here, before any sampling); ``sampler.spacing=fitted`` takes the run's
    fitted schedule of ``sampler.steps`` evaluations (:func:`fitted_schedule`)."""
    if not overrides:
        return model.sampler
    node = sampler_config(cast(dict[str, Any], OmegaConf.to_container(cfg.sampler)), list(overrides))
    if node.get("spacing") == "fitted" and node.get("timesteps") is None:
        node["timesteps"] = fitted_schedule(run_dir, node.get("steps"))
    sampler = registry.build_option("sampler", node)  # a run's sampler is one of ddpm-lab's
    try:
        sampler.timesteps(model.diffusion)
    except ValueError as err:
        raise ConfigError(f"sampler: {err}") from err
    return sampler


def load_run(
    path: str | Path, map_location: str | torch.device = "cpu", sampler_overrides: Sequence[str] = ()
) -> LoadedRun:
    """Rebuild a run from a run folder or a checkpoint written by ``ddpm-train``.

    The config comes from the checkpoint (``ddpm_config``) or the run folder's ``.hydra/config.yaml``; the
    checkpoint is read with ``weights_only=True`` and the config as plain data, of which only the run's
    identity is used, built by :mod:`ddpm.registry` from checked values, so loading runs none of the run's
    code. The run comes back in plain PyTorch (:func:`build_for_sampling`):
    Lightning, torchmetrics and W&B are not imported.

    Args:
        path: a run folder (its ``checkpoints/last.ckpt``), a checkpoint file, or the ``.safetensors`` file
            ``ddpm-export RUN --format safetensors`` wrote (read without pickle).
        map_location: the device the model is put on.
        sampler_overrides: ``sampler=<option>`` / ``sampler.<key>=<value>`` for :attr:`LoadedRun.sampler`
            (see :mod:`ddpm.sampler_overrides`); none keeps the run's sampler.

    Raises:
        FileNotFoundError: no checkpoint there.
        ConfigError: the checkpoint does not match its config (e.g. another model's weights), or a
            sampler override does not fit the run's sampler or chain.
    """
    ckpt_path = find_checkpoint(path)
    run_dir = run_dir_of(ckpt_path) or ckpt_path.parent
    if ckpt_path.suffix == ".safetensors":  # ddpm-export's file: the config rides in its metadata
        stored, state = read_safetensors_run(ckpt_path)
        identity = run_identity(stored, f"the config stored in {str(ckpt_path)!r}")
        registry.checked_identity(identity)
    else:
        ckpt = load_checkpoint(ckpt_path, map_location=map_location)  # weights only: runs no code
        if "state_dict" not in ckpt:
            raise ConfigError(f"checkpoint {str(ckpt_path)!r} is not a Lightning checkpoint (no state_dict)")
        identity = stored_identity(ckpt, ckpt_path, run_dir)
        state = ckpt["state_dict"]
    check_stored_network(identity.config["model"])
    cfg = OmegaConf.create(identity.config)  # checked plain values: no ${ anywhere, nothing interpolates
    data, model = build_for_sampling(cfg)
    try:  # the model's names are the training module's (net.*, diffusion.*): its state_dict fits as is
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # same names, other shapes
        detail = str(err).strip().splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise ConfigError(
            f"checkpoint {str(ckpt_path)!r} does not match its config's model: {detail}"
        ) from None
    if missing or unexpected:
        raise ConfigError(
            f"checkpoint {str(ckpt_path)!r} does not match its config's model: "
            f"missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}"
        )
    model.to(map_location).eval()
    sampler = sampler_for(cfg, sampler_overrides, model, run_dir)
    return LoadedRun(model, data, cfg, ckpt_path, run_dir, sampler, identity.loggers)
