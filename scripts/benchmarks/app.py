"""The real app: ``ddpm-train``'s default run in this process against the plain loop run in blocks between
its steps, and where its extra time goes."""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .common import Table
from .plain import in_memory_loader, plain_steps


def _compose_app(out_dir: Path, overrides: list[str]) -> Any:
    """conf/train.yaml composed as ``ddpm-train`` composes it, its run folder ``out_dir``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from ddpm.config import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[f"hydra.run.dir={out_dir}", f"paths.root_dir={out_dir.parent}", *overrides],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    return cfg


@dataclass
class PlainBlocks:
    """The plain loop (:func:`plain_steps`) run in blocks between the app's steps: ``every`` of its steps
    after the app's steps ``phase``, ``every + phase``, ``2 * every + phase`` ..., each step's seconds
    appended to ``seconds``. With ``every`` 10 and ``phase`` 3 a block never follows a step that logs or
    saves (multiples of 5 in the default run), whose work left to other threads (W&B's sender) or to the
    OS would otherwise fall into the plain loop's time."""

    steps: Iterator[None]
    every: int = 10
    phase: int = 3
    seconds: list[float] = field(default_factory=list)

    def run(self, n: int) -> None:
        """Run ``n`` plain steps (on CPU: no device sync needed around them)."""
        last = time.perf_counter()
        for _ in range(n):
            next(self.steps)
            now = time.perf_counter()
            self.seconds.append(now - last)
            last = now


def step_timer(records: list[tuple[str, float]], plain: PlainBlocks | None = None) -> Any:
    """A Lightning callback appending ``(kind, seconds)`` to ``records`` for every training step: the time
    from one step's end to the next (its batch's fetch and every hook included, validation excluded), of
    kind ``checkpoint`` on the steps ``LastCheckpoint`` saves at, ``logging`` on those the loggers write at
    (``log_every_n_steps``), ``other`` elsewhere; and ``("validation", seconds)`` for every validation but
    the sanity check. With ``plain``, its blocks run between the app's steps (their time is not the
    app's), up to as many plain steps as the app takes in all."""
    import lightning as L

    from ddpm.checkpointing import LastCheckpoint

    class StepTimer(L.Callback):
        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            saver = next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)
            self.every = saver.interval(trainer.max_steps) if saver is not None else None
            self.last, self.in_validation, self.steps = time.perf_counter(), 0.0, 0

        def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.validation_start = time.perf_counter()

        def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if not trainer.sanity_checking:
                seconds = time.perf_counter() - self.validation_start
                records.append(("validation", seconds))
                self.in_validation += seconds

        def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
            now, step = time.perf_counter(), trainer.global_step
            kind = "other"
            if self.every and step % self.every == 0:
                kind = "checkpoint"
            elif step % trainer.log_every_n_steps == 0:
                kind = "logging"
            records.append((kind, now - self.last - self.in_validation))
            self.steps += 1
            if plain is not None and self.steps % plain.every == plain.phase % plain.every:
                plain.run(min(plain.every, trainer.max_steps - len(plain.seconds)))
                now = time.perf_counter()
            self.last, self.in_validation = now, 0.0

        def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if plain is not None:  # the steps after the last block
                plain.run(max(0, self.steps - len(plain.seconds)))

    return StepTimer()


def app_train(
    steps: int,
    overrides: list[str],
    step_records: list[tuple[str, float]],
    plain: PlainBlocks | None = None,
) -> None:
    """``ddpm-train``'s default run, in this process, for ``steps`` steps with every default callback and
    logger on (W&B offline), its output swallowed. ``step_records`` receives :func:`step_timer`'s
    ``(kind, seconds)`` of every step, and ``plain`` runs in blocks between them."""
    import contextlib
    import io

    from ddpm.cli.train import finish, fit, prepare

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _compose_app(
            Path(tmp) / "run", [f"trainer.max_steps={steps}", "print_config=false", *overrides]
        )
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run = prepare(cfg)
            # before the last callback, the validation timer, which times the others' validation work
            run.trainer.callbacks.insert(len(run.trainer.callbacks) - 1, step_timer(step_records, plain))
            fit(run)
            finish(run)


@dataclass
class AppRound:
    """One round of :func:`compare_app`: the app's :func:`step_timer` records and the plain loop's step
    seconds from the blocks run between them, for the default run and for the run with W&B off."""

    app: list[tuple[str, float]]
    plain: list[float]
    no_wandb: list[tuple[str, float]]
    no_wandb_plain: list[float]

    def ratio(self, validation: bool, wandb: bool = True) -> float:
        """The app's seconds (its steps, and its validations with ``validation``) over the plain loop's
        for as many steps."""
        records, plain = (self.app, self.plain) if wandb else (self.no_wandb, self.no_wandb_plain)
        return sum(t for k, t in records if validation or k != "validation") / sum(plain)

    def median_steps(self) -> tuple[float, float]:
        """The app's and the plain loop's median step, in seconds (validations are not steps)."""
        app_steps = [t for k, t in self.app if k != "validation"]
        return statistics.median(app_steps), statistics.median(self.plain)

    def gap_parts(self) -> dict[str, float]:
        """The app's extra seconds over the plain loop (its steps and validations minus the plain loop's
        steps), by where they arise: the median step's difference over all steps, the excess over the
        app's median step of the checkpoint and logging steps, that of the other steps beyond the plain
        loop's own excess over its median, and the validations. They add up to the whole difference."""
        med_app, med_plain = self.median_steps()
        app_steps = sum(1 for k, _ in self.app if k != "validation")

        def excess(kind: str) -> float:
            return sum(t - med_app for k, t in self.app if k == kind)

        return {
            "median step": app_steps * med_app - len(self.plain) * med_plain,
            "checkpoint steps": excess("checkpoint"),
            "logging steps": excess("logging"),
            "other steps": excess("other") - sum(t - med_plain for t in self.plain),
            "validations": sum(t for k, t in self.app if k == "validation"),
        }


def compare_app(
    data: torch.Tensor, steps: int, val_every: int, rounds: int, block: int = 10
) -> tuple[Table, Table, list[AppRound]]:
    """The default run (``experiment=toy2d``: moons, MLP 128 x 3, batch 256) against the plain loop doing
    the same steps in blocks of ``block`` between the app's (:class:`PlainBlocks`): per-step time of the
    app's training alone and with its validations (EMA sampling, the quality figure and its plot, the best
    checkpoint) counted in, and of the app with the CSV logger alone (W&B off). The second table splits the
    app's extra time by where it arises, from every step's time (:func:`step_timer`)."""
    from ddpm.models import MLPDenoiser

    overrides = [
        f"trainer.val_check_interval={val_every}",
        "final_samples=0",  # final sampling and figures are phases of their own (start-up section)
        f"cpu_threads={torch.get_num_threads()}",  # the plain loop's thread count
    ]
    results: list[AppRound] = []
    for _ in range(rounds):
        measured: dict[str, tuple[list[tuple[str, float]], list[float]]] = {}
        for variant, extra in (("app", []), ("no W&B", ["logger=csv"])):
            net = MLPDenoiser(data_dim=2, hidden=128, depth=3)
            loop = plain_steps(net, in_memory_loader(data, 256), 1000, torch.device("cpu"))
            plain = PlainBlocks(loop, every=block, phase=3)
            plain.run(1)  # builds the optimizer and the average before the first timed step
            plain.seconds.clear()
            records: list[tuple[str, float]] = []
            app_train(steps, [*overrides, *extra], records, plain)
            measured[variant] = (records, plain.seconds)
        results.append(AppRound(*measured["app"], *measured["no W&B"]))

    plain_s = [sum(r.plain) for r in results]
    table = Table(
        f"The real app vs the plain loop: ddpm-train's default run, {steps} steps (CPU)",
        [
            "variant",
            "ms/step (median)",
            "time / plain loop (median of rounds)",
            "overhead",
            "range of rounds",
        ],
    )
    table.rows.append(["plain PyTorch loop", 1000 * statistics.median(plain_s) / steps, 1.0, "+0.0%", "-"])
    for name, validation, wandb in (
        ("the real app: training steps (default callbacks, logging)", False, True),
        ("the real app (default callbacks, logging, validation)", True, True),
        ("the real app with the CSV logger only (W&B off): training steps", False, False),
    ):
        ratios = [r.ratio(validation, wandb) for r in results]
        ratio = statistics.median(ratios)
        per_step = statistics.median(p * x for p, x in zip(plain_s, ratios, strict=True)) / steps
        table.rows.append(
            [
                name,
                1000 * per_step,
                ratio,
                f"{100 * (ratio - 1):+.1f}%",
                f"{min(ratios):.2f}-{max(ratios):.2f}",
            ]
        )
    table.notes.append(
        f"{rounds} rounds. The app is `ddpm-train` in this process with its default callbacks (EMA, "
        f"checkpoints every {max(50, min(5000, steps // 10))} steps and the best at validations, progress "
        "bar, learning-rate monitor, loss by timestep, validation samples and plot) and loggers (W&B "
        f"offline, CSV), validating every {val_every} steps. The plain loop does the same math (L_simple, "
        "clipping, fused AdamW, foreach EMA) on the same data, in the same process and at the same time: "
        f"a callback runs {block} steps of the plain loop after every {block} steps of the app (after its "
        "steps 3, 13, 23 ..., not after one that logs or saves), so that both see the same load on a shared "
        "machine. The app's time is every step's from the end of the one "
        "before (hooks, logging, checkpoints and the batch's fetch included, the plain block excluded), "
        "plus its validations; the fit's set-up and the final samples are not counted."
    )

    parts = [r.gap_parts() for r in results]
    med_app, med_plain = zip(*(r.median_steps() for r in results), strict=True)
    counts = {kind: sum(1 for k, _ in results[0].app if k == kind) for kind in ("checkpoint", "logging")}
    split = Table(
        f"Where the real app's extra time goes ({steps} steps, median of rounds)",
        ["part", "seconds per run", "ms per step", "% of the plain loop's time"],
    )
    app_ms, plain_ms = 1000 * statistics.median(med_app), 1000 * statistics.median(med_plain)
    step_ratio = statistics.median(a / p for a, p in zip(med_app, med_plain, strict=True))
    labels = {
        "median step": f"the median step (app {app_ms:.2f} ms vs plain {plain_ms:.2f} ms: {step_ratio:.2f}x)",
        "checkpoint steps": f"the {counts['checkpoint']} checkpoint steps' excess over the median step",
        "logging steps": f"the {counts['logging']} logging steps' excess over the median step",
        "other steps": "the other steps' excess over the median, beyond the plain loop's own",
        "validations": "the validations",
    }
    for key, label in labels.items():
        seconds = statistics.median(p[key] for p in parts)
        share = statistics.median(p[key] / b for p, b in zip(parts, plain_s, strict=True))
        split.rows.append([label, seconds, 1000 * seconds / steps, f"{100 * share:+.1f}%"])
    split.notes.append(
        "From every step's time in the rounds above (the default run with W&B). Checkpoint steps save "
        "`last.ckpt`; logging steps write to the loggers (every `trainer.log_every_n_steps`). In each round "
        "the parts add up to the app's steps and validations minus the plain loop's steps; each figure is "
        "the median over rounds."
    )
    return table, split, results
