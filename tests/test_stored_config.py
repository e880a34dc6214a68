"""A stored config is plain data: the readers, the legacy references and the run's identity, unit by unit.

(The gadget corpus, tests/test_gadgets.py, drives the same rules through every command.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ddpm.config import ConfigError
from ddpm.stored_config import (
    StoredConfigError,
    check_plain,
    load_yaml,
    read_json,
    read_wandb_id,
    read_yaml,
    require_regular_file,
    run_identity,
    substitute_references,
)

GROUPS = {
    "model": {"_target_": "ddpm.models.MLPDenoiser", "data_dim": 2},
    "schedule": {"_target_": "ddpm.schedules.make_beta_schedule", "name": "linear", "T": 10},
    "diffusion": {"_target_": "ddpm.diffusion.GaussianDiffusion", "_partial_": True},
    "sampler": {"_target_": "ddpm.samplers.DDIMSampler", "steps": 5},
    "data": {"_target_": "ddpm.data.ToyDataModule", "dataset": "moons", "num_workers": 3, "cache_dir": "/x"},
    "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.01},
    "lr_scheduler": None,
}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("model: !!python/object/apply:os.system ['true']", "uses the YAML tag"),
        ("model: !!binary aGVsbG8=", "uses the YAML tag"),
        ("model: !custom {a: 1}", "uses the YAML tag"),
        ("a: &x [1, 2]\nb: *x", "anchor or alias"),
        ("a: " + "[" * 40 + "]" * 40, "nested more than"),
        ("a: [1, 2", "not valid YAML"),
    ],
)
def test_yaml_with_tags_aliases_or_depth_is_refused(text: str, match: str, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(StoredConfigError, match=match):
        read_yaml(path)


def test_plain_yaml_reads_as_plain_values_and_a_list_only_through_load_yaml(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("T: 50\nmodel: {hidden: 8, name: '${oc.env:HOME}'}\n")
    assert read_yaml(path) == {"T": 50, "model": {"hidden": 8, "name": "${oc.env:HOME}"}}  # text, unresolved
    path.write_text("- T=5\n- seed=1\n")
    assert load_yaml(path) == ["T=5", "seed=1"]
    with pytest.raises(StoredConfigError, match="not a run config"):
        read_yaml(path)


def test_a_fifo_is_refused_before_it_is_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        read_yaml(fifo)  # a reader would block forever on a FIFO nobody writes
    with pytest.raises(ConfigError, match="is a folder"):
        require_regular_file(tmp_path)


def test_json_depth_and_types_are_bounded() -> None:
    with pytest.raises(StoredConfigError, match="nested more than"):
        read_json("[" * 100_000 + "]" * 100_000, "meta")
    assert read_json('{"T": 5, "model": {"x": [1, 2.5, null, true]}}', "meta")["model"]["x"][1] == 2.5
    with pytest.raises(StoredConfigError, match="is a bytes"):
        check_plain({"model": {"w": b"raw"}}, "ckpt")
    with pytest.raises(StoredConfigError, match="key 3 under model"):
        check_plain({"model": {3: 1}}, "ckpt")


def test_only_plain_references_to_ddpm_labs_keys_are_followed() -> None:
    tree = {"T": 50, "seed": 3, "trainer": {"max_steps": 9}, "notes": "x", "paths": {"data_dir": "/d"}}
    assert substitute_references({"T": "${T}", "n": "${trainer.max_steps}"}, tree, "k", "s") == {
        "T": 50,
        "n": 9,
    }
    assert substitute_references("${paths.data_dir}/mnist", tree, "k", "s") == "/d/mnist"
    for bad, why in [
        ("${oc.env:HOME}", "never resolved"),
        ("\\${T}", "never resolved"),
        ("${oc.create:${T}}", "never resolved"),
        ("${notes}", "outside the keys"),
        ("${nope.x}", "outside the keys"),
        ("${trainer.missing}", "does not hold"),
    ]:
        with pytest.raises(StoredConfigError, match=why):
            substitute_references(bad, tree, "model.hidden", "s")
    loop = {"T": "${seed}", "seed": "${T}"}
    with pytest.raises(StoredConfigError, match="refers to itself"):
        substitute_references("${T}", loop, "k", "s")


@pytest.mark.parametrize(
    ("earlier", "loss", "timestep_sampler"),
    [
        ({}, {"_target_": "ddpm.losses.SimpleLoss", "distance": "mse"}, "UniformTimesteps"),
        (
            {"loss": "l1", "loss_weighting": "min_snr", "min_snr_gamma": 3.0, "offset_noise": 0.1},
            {
                "_target_": "ddpm.losses.SimpleLoss",
                "distance": "l1",
                "weighting": "min_snr",
                "min_snr_gamma": 3.0,
                "offset_noise": 0.1,
            },
            "UniformTimesteps",
        ),
        (
            {"loss": "hybrid", "vlb_weight": 0.01, "vlb_decoder": "gaussian", "cond_drop_prob": 0.2},
            {
                "_target_": "ddpm.losses.HybridLoss",
                "vlb_weight": 0.01,
                "decoder": "gaussian",
                "cond_drop_prob": 0.2,
            },
            "UniformTimesteps",
        ),
        (
            # an earlier vlb run stored loss_weighting: none, which VLBLoss does not take (it had no effect)
            {"loss": "vlb", "loss_weighting": "none", "timestep_sampler": "loss_second_moment"},
            {"_target_": "ddpm.losses.VLBLoss"},
            "LossSecondMomentTimesteps",
        ),
    ],
)
def test_a_run_stored_before_the_loss_was_a_group_reads_in_todays_layout(
    earlier: dict, loss: dict, timestep_sampler: str
) -> None:
    diffusion = {"_target_": "ddpm.diffusion.GaussianDiffusion", "objective": "v", "T": 10, **earlier}
    run = run_identity({"T": 10, "seed": 1, **GROUPS, "diffusion": diffusion}, "ckpt")
    assert run.config["diffusion"] == {
        "_target_": "ddpm.diffusion.GaussianDiffusion",
        "objective": "v",
        "_partial_": True,
    }
    assert run.config["loss"] == {**loss, "_partial_": True}
    assert run.config["timestep_sampler"] == {
        "_target_": f"ddpm.timestep_sampling.{timestep_sampler}",
        "_partial_": True,
    }
    # and the registry builds them (every value checked against the classes' signatures)
    from ddpm.diffusion import GaussianDiffusion
    from ddpm.registry import build_option

    d = GaussianDiffusion(torch.linspace(1e-4, 0.02, 10), objective="v", variance="learned_range")
    built = build_option("loss", run.config["loss"], diffusion=d)
    assert type(built).__name__ == loss["_target_"].rsplit(".", 1)[1]
    assert type(build_option("timestep_sampler", run.config["timestep_sampler"], process=d)).__name__ == (
        timestep_sampler
    )


def test_the_identity_keeps_what_defines_the_model_and_drops_the_machine() -> None:
    stored = {
        "T": 10,
        "seed": 1,
        **GROUPS,
        "trainer": {"max_steps": 7, "devices": 8, "strategy": "ddp", "default_root_dir": "/elsewhere"},
        "logger": {"csv": {"save_dir": "/elsewhere"}, "evil": {"_target_": "os.system"}},
        "callbacks": {
            "ema": {"_target_": "ddpm.callbacks.EMA", "decay": 0.9},
            "samples": {
                "_target_": "ddpm.callbacks.ImageSampleCallback",
                "num_samples": 4,
                "cache_dir": "/x",
            },
            "evil": {"_target_": "lightning.pytorch.callbacks.ModelCheckpoint", "dirpath": "/other"},
        },
        "paths": {"output_dir": "/elsewhere"},
        "notes": "${oc.env:SECRET}",  # never read
    }
    run = run_identity(stored, "ckpt")
    # the loss and the timestep sampler, absent from this config, get conf/'s defaults (upgrade_layout)
    assert set(run.config) == {*GROUPS, "loss", "timestep_sampler", "T", "seed", "trainer", "callbacks"}
    assert run.config["trainer"] == {"max_steps": 7}
    assert "num_workers" not in run.config["data"] and "cache_dir" not in run.config["data"]
    assert run.config["callbacks"] == {"ema": {"decay": 0.9, "update_starting_at_step": None}}
    assert run.loggers == ("csv",) and run.samples == "images"
    assert run.callbacks == {"ema": {"decay": 0.9}, "samples": {"num_samples": 4}}
    with pytest.raises(
        StoredConfigError, match=r"model\.hidden='\$\{oc\.env:SECRET\}' in ckpt is an interpolation"
    ):
        run_identity({**stored, "model": {**GROUPS["model"], "hidden": "${oc.env:SECRET}"}}, "ckpt")
    with pytest.raises(StoredConfigError, match=r"trainer\.max_steps='7' in ckpt is invalid"):
        run_identity({**stored, "trainer": {"max_steps": "7"}}, "ckpt")
    with pytest.raises(StoredConfigError, match="holds no T"):
        run_identity({k: v for k, v in stored.items() if k != "T"}, "ckpt")


def test_a_wandb_id_is_an_id_or_refused(tmp_path: Path) -> None:
    assert read_wandb_id(tmp_path) is None
    (tmp_path / ".wandb_id").write_text("abc-123_x\n")
    assert read_wandb_id(tmp_path) == "abc-123_x"
    (tmp_path / ".wandb_id").write_text("${oc.env:SECRET}\n")
    with pytest.raises(StoredConfigError, match="not a W&B run id"):
        read_wandb_id(tmp_path)
