"""Evaluation beyond the training loss: toy quality with confidence, image metrics, likelihood.

Plain PyTorch (plus torchmetrics for feature accumulation): no Lightning, no Hydra.
"""
