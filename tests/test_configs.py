"""Every config group's options build on their own with Hydra's instantiate, as docs/architecture.md says.

A node that needs another node's output is a partial (``_partial_: true``) completed by ``ddpm.build``; here
each is completed the same way, so a group whose node cannot be built alone fails.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from ddpm.config import CONF_DIR
from ddpm.diffusion import GaussianDiffusion
from ddpm.samplers import Sampler
from ddpm.schedules import NotPureNoiseWarning
from tests.helpers import compose_cfg


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.stem.startswith("_"))


def _built(tmp_path: Path, overrides: list[str], key: str) -> object:
    cfg = compose_cfg(tmp_path, overrides, run_folder=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotPureNoiseWarning)
        return instantiate(cfg[key])


def _experiment_of(model: str) -> str:
    """An experiment that trains ``model`` (its data gives the network's shape), else the default one."""
    for path in sorted((CONF_DIR / "experiment").glob("*.yaml")):
        if f"override /model: {model}\n" in path.read_text():
            return path.stem
    return "toy2d"


@pytest.mark.parametrize("option", _options("model"))
def test_every_model_builds_the_network_alone(option: str, tmp_path: Path) -> None:
    net = _built(tmp_path, [f"experiment={_experiment_of(option)}", f"model={option}"], "model")
    assert isinstance(net, torch.nn.Module) and sum(p.numel() for p in net.parameters()) > 0


@pytest.mark.parametrize("option", _options("schedule"))
def test_every_schedule_makes_T_betas_from_the_root_T(option: str, tmp_path: Path) -> None:
    betas = _built(tmp_path, [f"schedule={option}", "T=123"], "schedule")
    assert isinstance(betas, torch.Tensor) and betas.shape == (123,)


def test_the_diffusion_is_a_partial_the_schedules_betas_complete(tmp_path: Path) -> None:
    partial = _built(tmp_path, ["T=50"], "diffusion")
    assert isinstance(partial, functools.partial)
    betas = _built(tmp_path, ["T=50"], "schedule")
    assert isinstance(partial(betas=betas), GaussianDiffusion) and partial(betas=betas).num_timesteps == 50


@pytest.mark.parametrize("option", _options("sampler"))
def test_every_sampler_builds_alone(option: str, tmp_path: Path) -> None:
    assert isinstance(_built(tmp_path, [f"sampler={option}"], "sampler"), Sampler)


@pytest.mark.parametrize("option", _options("optimizer"))
def test_every_optimizer_is_a_partial_over_parameters(option: str, tmp_path: Path) -> None:
    optimizer = _built(tmp_path, [f"optimizer={option}"], "optimizer")(
        params=[torch.zeros(2, requires_grad=True)]
    )
    assert isinstance(optimizer, torch.optim.Optimizer)


@pytest.mark.parametrize("option", [o for o in _options("lr_scheduler") if o != "none"])
def test_every_lr_scheduler_is_a_partial_over_an_optimizer(option: str, tmp_path: Path) -> None:
    scheduler = _built(tmp_path, [f"lr_scheduler={option}"], "lr_scheduler")
    sgd = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    assert isinstance(scheduler(optimizer=sgd), torch.optim.lr_scheduler.LRScheduler)


#: the generated toy datasets (image data and the user's own files need files on disk: test_images / test_app)
TOY_DATA = [o for o in _options("data") if "- _toy" in (CONF_DIR / "data" / f"{o}.yaml").read_text()]


@pytest.mark.parametrize("option", TOY_DATA)
def test_every_toy_data_option_builds_alone(option: str, tmp_path: Path) -> None:
    dm = _built(tmp_path, [f"data={option}"], "data")
    assert dm.kind == "toy" and dm.held_out(10).shape == (10, dm.data_dim)


@pytest.mark.parametrize(
    ("option", "kind"), [("toy", "SampleQualityCallback"), ("images", "ImageSampleCallback")]
)
def test_each_samples_callback_option_builds_alone(option: str, kind: str, tmp_path: Path) -> None:
    callback = _built(tmp_path, [f"callbacks/samples={option}"], "callbacks")["samples"]
    assert type(callback).__name__ == kind


#: a notebook's session in a fresh interpreter: `import ddpm`, compose each experiment, instantiate its model
_NOTEBOOK = """\
import json, sys
import ddpm
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
assert "ddpm.config" not in sys.modules  # the resolver must come from `import ddpm` itself
conf_dir, experiments = sys.argv[1], json.loads(sys.argv[2])
built = {}
for name in experiments:
    with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={name}"])
    net = instantiate(cfg.model)
    # the network's outputs per input value, as built: what the resolver gave out_mult
    if type(net).__name__ == "UNet":
        mult = net.out_channels // net.in_channels
    else:
        mult = net.out.out_features // net.data_dim
    built[name] = [type(net).__name__, mult, cfg.diffusion.get("variance")]
    del net
print("BUILT=" + json.dumps(built))
"""


def test_import_ddpm_then_instantiate_builds_every_experiments_model() -> None:
    """`import ddpm` registers the configs' resolvers (``ddpm.out_mult`` in every model node): a config
    composed in a notebook builds its network without ``ddpm.config`` (issue 34)."""
    import json
    import subprocess
    import sys

    experiments = _options("experiment")
    proc = subprocess.run(
        [sys.executable, "-c", _NOTEBOOK, str(CONF_DIR), json.dumps(experiments)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("BUILT=")]
    built = json.loads(line.removeprefix("BUILT="))
    assert sorted(built) == experiments
    for name, (kind, out_mult, variance) in built.items():
        # a learned variance doubles the outputs (digits_iddpm, cifar10_iddpm: learned_range)
        assert out_mult == (2 if variance in ("learned", "learned_range") else 1), (name, variance)
        assert kind in ("UNet", "MLPDenoiser"), (name, kind)
    assert built["digits_iddpm"][1] == 2 and built["digits"][1] == 1
