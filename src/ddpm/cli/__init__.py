"""Console entry points: ddpm-train, ddpm-sample, ddpm-viz."""
