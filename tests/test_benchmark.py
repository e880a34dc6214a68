"""scripts/benchmark.py in its tiny mode: every table is produced and the report has its sections."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


@pytest.fixture(scope="module")
def benchmark_module():
    yield from load_script(SCRIPT, "ddpm_benchmark_script")


def test_tiny_benchmark_writes_its_report(benchmark_module, tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    result = benchmark_module.run(["--tiny", "--out", str(out), "--device", "cpu"])
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
    for table in result["tables"]:
        header = "| " + " | ".join(table.columns) + " |"
        assert header in report
        assert all(len(row) == len(table.columns) for row in table.rows)
        for row in table.rows:  # every figure is a real, positive number
            assert all(v > 0 for v in row if isinstance(v, float))
    assert toy.rows[0][3] == 1.0 and result["lightning_ratio"] > 0
    assert any(t.startswith("One EMA update") for t in titles)
    # No GPU here: the GPU targets say so instead of showing a number.
    if result["gpu"] is None:
        assert report.count("pending: no GPU was lent to this task") >= 3
    assert "Lightning (ddpm-lab's DiffusionModule) within 10% of the plain loop on CPU" in report
