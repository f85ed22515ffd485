"""Pretraining with Lightning: the LightningModule and the `brainlm pretrain` run."""
