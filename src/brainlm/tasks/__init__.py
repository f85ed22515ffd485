"""Downstream tasks on a pretrained BrainLM: embeddings (and, later, evaluation, forecasting,
attention)."""
