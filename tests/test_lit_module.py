"""The LightningModule's per-step bookkeeping: loss by quarter of t, and the foreach EMA callback."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn

from ddpm.callbacks import EMA
from ddpm.lit_module import BinnedMean


def test_binned_mean_matches_masked_means() -> None:
    gen = torch.Generator().manual_seed(0)
    metric = BinnedMean(4)
    values, bins = [], []
    for _ in range(5):  # several updates, as over the steps of an epoch
        v = torch.rand(64, generator=gen)
        b = torch.randint(0, 3, (64,), generator=gen)  # bin 3 never occurs
        metric.update(v, b)
        values.append(v)
        bins.append(b)
    v, b = torch.cat(values), torch.cat(bins)
    means = metric.compute()
    for k in range(3):
        assert means[k].item() == pytest.approx(v[b == k].double().mean().item(), rel=1e-12)
    assert torch.isnan(means[3])  # no data: NaN, not 0
    metric.reset()
    assert metric.update_count == 0
    with pytest.warns(UserWarning, match="called before the ``update``"):  # torchmetrics says so, rightly
        assert torch.isnan(metric.compute()).all()


def test_ema_callback_averages_like_lightnings_default() -> None:
    ours, lightnings = EMA(decay=0.9), EMAWeightAveraging(decay=0.9)
    assert ours.update_starting_at_step == lightnings.update_starting_at_step  # same options, same schedule
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    fast = AveragedModel(copy.deepcopy(net), use_buffers=True, **ours._kwargs)
    slow = AveragedModel(copy.deepcopy(net), use_buffers=True, avg_fn=get_ema_avg_fn(0.9))
    gen = torch.Generator().manual_seed(0)
    expected = [p.detach().clone() for p in net.parameters()]
    for step in range(6):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=gen))
        fast.update_parameters(net)
        slow.update_parameters(net)
        for e, p in zip(expected, net.parameters(), strict=True):  # avg <- 0.9 avg + 0.1 p (first: copy)
            e.copy_(p.detach() if step == 0 else 0.9 * e + 0.1 * p.detach())
    for a, b, e in zip(fast.module.parameters(), slow.module.parameters(), expected, strict=True):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, e)


class _TinyModule(L.LightningModule):
    """A linear model with a buffer, trained on fixed random batches (both EMA callbacks see the same)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 1))
        self.register_buffer("scale", torch.ones(1, dtype=torch.float64))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return ((self.net(x) - y) ** 2).mean()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val/loss", self.training_step(batch, batch_idx))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit_with(callback: L.Callback) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 3, generator=gen), torch.randn(64, 1, generator=gen)
    data = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    module = _TinyModule()
    trainer = L.Trainer(
        max_steps=12, val_check_interval=4, limit_val_batches=2, callbacks=[callback], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few dataloader workers: expected here
        trainer.fit(module, loader, loader)
    return [t.detach().clone() for t in (*module.parameters(), *module.buffers())]


def test_ema_callback_in_a_fit_equals_lightnings_own() -> None:
    # the cached foreach groups survive the validation swaps and give Lightning's average at the end
    ours, lightnings = _fit_with(EMA(decay=0.8)), _fit_with(EMAWeightAveraging(decay=0.8))
    for a, b in zip(ours, lightnings, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_ema_average_moves_to_the_device_the_module_trains_on() -> None:
    callback, module = EMA(decay=0.9), _TinyModule()
    callback.setup(None, module, "fit")  # type: ignore[arg-type]  # Lightning: before the module moves
    module.to("meta")
    callback.on_fit_start(None, module)  # type: ignore[arg-type]
    assert callback._average_model is not None
    assert {t.device.type for t in callback._average_model.module.parameters()} == {"meta"}


def test_ema_callback_rejects_a_bad_decay() -> None:
    with pytest.raises(ValueError, match=r"callbacks.ema.decay=1.5 must be in \[0, 1\]"):
        EMA(decay=1.5)


def _compile_eager(monkeypatch: pytest.MonkeyPatch) -> list[torch.nn.Module]:
    """torch.compile with the eager backend (no C++ build: seconds), recording what it was given."""
    compiled: list[torch.nn.Module] = []
    real = torch.compile

    def fake(model: torch.nn.Module, **kwargs: object) -> object:
        compiled.append(model)
        return real(model, backend="eager")

    monkeypatch.setattr(torch, "compile", fake)
    return compiled


def test_model_compile_trains_through_the_compiled_network(tmp_path, monkeypatch) -> None:
    from tests.helpers import SHORT, run_train

    compiled = _compile_eager(monkeypatch)
    metrics, run = run_train(tmp_path, [*SHORT, "module.compile=true", "reverse_gif=false"])
    assert metrics["global_step"] == 4 and len(compiled) == 1
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert any(k.startswith("net.") for k in state)
    assert not any("_orig_mod" in k for k in state)  # the checkpoint loads into a plain network
    from ddpm.build import build, load_run

    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["ddpm_config"]["module"][
        "compile"
    ]
    cfg = load_run(run).config  # a loaded run samples with the plain network: how to run it is the machine's
    assert "module" not in cfg
    cfg.module = {"compile": True}  # as today's config gives it to a resume
    _, module = build(cfg)
    assert module.compile_net


def test_channels_last_images(tmp_path) -> None:
    from tests.helpers import SHORT, run_train

    overrides = [*SHORT, "experiment=digits", "module.channels_last=true", "callbacks.samples=null"]
    quick = ["final_samples=4", "sampler.steps=2", "reverse_gif=false", "+trainer.limit_val_batches=1"]
    metrics, run = run_train(tmp_path, [*overrides, *quick])
    assert metrics["global_step"] == 4
    from ddpm.build import build, load_run

    cfg = load_run(run).config  # the run's identity; channels-last is how this machine runs it
    assert "module" not in cfg
    cfg.module = {"channels_last": True}
    _, module = build(cfg)  # the training module of the run's stored config
    assert module.channels_last
    module.setup("fit")
    conv = next(m for m in module.net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x, _ = module._batch((torch.randn(2, 1, 8, 8),))
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_loss_and_grad_norm_are_logged_on_the_loggers_steps(tmp_path) -> None:
    import csv

    from tests.helpers import SHORT, run_train

    overrides = [o for o in SHORT if not o.startswith(("trainer.max_steps", "trainer.log_every"))]
    quick = ["callbacks.samples=null", "final_samples=0", "reverse_gif=false"]
    _, run = run_train(tmp_path, [*overrides, *quick, "trainer.max_steps=20", "trainer.log_every_n_steps=5"])
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    for key in ("train/loss", "train/grad_norm"):  # computed only where Lightning writes: 4 of 20 steps
        assert [int(r["step"]) for r in rows if r.get(key)] == [4, 9, 14, 19], key


def test_loss_by_quarter_of_t_is_logged_each_epoch_and_plotted(tmp_path) -> None:
    import csv

    from PIL import Image

    from tests.helpers import SHORT, run_train

    overrides = [o for o in SHORT if not o.startswith(("trainer.max_steps", "trainer.val_check"))]
    small = ["data.n_train=512", "data.batch_size=128", "trainer.max_steps=12"]
    small.append("trainer.val_check_interval=4")
    quick = ["callbacks.samples=null", "final_samples=0", "reverse_gif=false"]
    _, run = run_train(tmp_path, [*overrides, *small, *quick])  # 4 batches an epoch: 3 epochs
    rows = [r for r in csv.DictReader((run / "csv" / "metrics.csv").open()) if r.get("train/loss_q1")]
    assert len(rows) == 3
    for r in rows:
        q = [float(r[f"train/loss_q{k}"]) for k in range(1, 5)]
        assert all(0 < v < 10 for v in q)  # (q1 > q4 takes longer: test_app checks it after 300 steps)
    assert Image.open(run / "plots" / "loss_by_timestep.png").size[0] > 400
