"""scripts/benchmark.py in its tiny mode: every table is produced and the report has its sections."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.helpers import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


@pytest.fixture(scope="module")
def benchmark_module():
    yield from load_script(SCRIPT, "ddpm_benchmark_script")


def test_tiny_benchmark_writes_its_report(benchmark_module, tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    # the whole-command section starts a dozen processes: the slow test below runs it
    result = benchmark_module.run(["--tiny", "--out", str(out), "--device", "cpu", "--no-startup"])
    report = out.read_text()
    assert report == result["report"]
    for line in ("# Benchmarks", "- Command: `", "- Device: ", "- Date: ", "## Targets"):
        assert line in report
    titles = [t.title for t in result["tables"]]
    assert any(t.startswith("Training throughput: toy MLP") for t in titles)
    assert any(t.startswith("Sampling throughput: toy MLP") for t in titles)
    toy = next(t for t in result["tables"] if t.title.startswith("Training throughput: toy MLP"))
    assert [row[0] for row in toy.rows] == [
        "plain PyTorch loop",
        "Lightning, minimal module",
        "Lightning, ddpm-lab DiffusionModule",
    ]
    split = next(t for t in result["tables"] if t.title.startswith("Where the real app's extra time goes"))
    for table in result["tables"]:
        header = "| " + " | ".join(table.columns) + " |"
        assert header in report
        assert all(len(row) == len(table.columns) for row in table.rows)
        for row in table.rows:  # every figure is a real number, positive but for the split's differences
            assert all(math.isfinite(v) and (v > 0 or table is split) for v in row if isinstance(v, float))
    assert toy.rows[0][3] == 1.0 and result["lightning_ratio"] > 0
    assert any(t.startswith("One EMA update") for t in titles)
    threads = next(t for t in result["tables"] if t.title.startswith("CPU threads"))
    assert threads.rows[0][0] == 1 and all(len(row) == 3 for row in threads.rows)
    # No GPU here: the GPU targets say so instead of showing a number.
    if result["gpu"] is None:
        assert report.count("pending: no GPU was lent to this task") >= 3
    assert "Lightning (ddpm-lab's DiffusionModule) within 10% of the plain loop on CPU" in report
    app = result["app"]  # the real app in this process, against the plain loop
    assert [row[0] for row in app.rows] == [
        "plain PyTorch loop",
        "the real app: training steps (default callbacks, logging)",
        "the real app (default callbacks, logging, validation)",
        "the real app with the CSV logger only (W&B off): training steps",
    ]
    assert app.rows[1][1] <= app.rows[2][1]  # validation only adds time
    for round_ in result["app_rounds"]:  # the plain loop ran in blocks beside the app, as many steps
        assert len(round_.plain) == sum(1 for kind, _ in round_.app if kind != "validation") == 6
        assert len(round_.no_wandb_plain) == sum(1 for kind, _ in round_.no_wandb if kind != "validation")
        assert sum(1 for kind, _ in round_.app if kind == "validation") == 2
    labels = [row[0] for row in split.rows]
    assert labels[0].startswith("the median step (app ") and labels[-1] == "the validations"
    for word, label in zip(("checkpoint steps", "logging steps", "other steps"), labels[1:4], strict=True):
        assert word in label
    assert "The real app (default callbacks, logging, validation) within 1.2x of the plain loop" in report


@pytest.mark.slow
def test_startup_section_times_every_command(benchmark_module) -> None:
    whole, phases = benchmark_module.startup_tables(repeats=1, tiny=True)
    commands = [row[0] for row in whole.rows]
    for prefix in ("`ddpm-train`", "`ddpm-sample", "`ddpm-eval", "`ddpm-viz reverse", "`ddpm-viz schedules"):
        assert any(c.startswith(prefix) for c in commands), prefix
    assert all(row[1] > 0 for row in whole.rows)
    by_phase = {row[0]: row[1] for row in phases.rows}
    for phase in ("start-up", "imports", "set-up", "training", "validation", "final samples", "loggers"):
        assert by_phase[phase] >= 0, phase
    parts = sum(v for k, v in by_phase.items() if k != "in-process total")
    assert parts == pytest.approx(by_phase["in-process total"], rel=1e-6)
    train = next(row[1] for row in whole.rows if row[0].startswith("`ddpm-train`"))
    assert by_phase["in-process total"] < train  # the process also starts the interpreter


def test_the_app_split_adds_up_to_the_whole_difference(benchmark_module) -> None:
    """The parts of the app's extra time sum to its steps and validations minus the plain loop's steps."""
    app = [("other", 0.012), ("logging", 0.015), ("checkpoint", 0.040), ("other", 0.011), ("validation", 0.3)]
    app += [("other", 0.013)]
    round_ = benchmark_module.AppRound(
        app=app, plain=[0.010, 0.011, 0.010, 0.012, 0.010], no_wandb=[("other", 0.02)], no_wandb_plain=[0.01]
    )
    assert round_.median_steps() == pytest.approx((0.013, 0.010))  # the validation is not a step
    parts = round_.gap_parts()
    whole = sum(t for _, t in app) - sum(round_.plain)
    assert sum(parts.values()) == pytest.approx(whole)
    assert parts["validations"] == pytest.approx(0.3)
    assert parts["checkpoint steps"] == pytest.approx(0.040 - 0.013)  # over the app's median step
    assert parts["logging steps"] == pytest.approx(0.015 - 0.013)
    assert parts["median step"] == pytest.approx(5 * 0.013 - 5 * 0.010)
    assert round_.ratio(validation=True) == pytest.approx(sum(t for _, t in app) / sum(round_.plain))
    assert round_.ratio(validation=False) == pytest.approx((sum(t for _, t in app) - 0.3) / sum(round_.plain))
    assert round_.ratio(validation=False, wandb=False) == pytest.approx(2.0)


def test_plain_blocks_run_between_the_apps_steps(benchmark_module) -> None:
    """A block of the plain loop after the fit's steps 1, 3, 5 (every 2, phase 1), as many plain steps as
    the fit's in all; the app's step times leave the blocks out."""
    import lightning as L
    import torch

    order: list[str] = []

    def plain_loop():
        while True:
            order.append("plain")
            yield

    class Steps(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            order.append("app")
            return (self.w - batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    plain = benchmark_module.PlainBlocks(plain_loop(), every=2, phase=1)
    records: list[tuple[str, float]] = []
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(8, 1)), batch_size=1)
    trainer = L.Trainer(
        max_steps=5,
        callbacks=[benchmark_module.step_timer(records, plain)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Steps(), train_dataloaders=loader)
    assert order == ["app", "plain", "plain", "app", "app", "plain", "plain", "app", "app", "plain"]
    assert len(records) == len(plain.seconds) == 5 and all(kind == "other" for kind, _ in records)
