"""Downstream tasks on a pretrained BrainLM: embeddings (:mod:`~brainlm.tasks.embed`), masked
reconstruction (:mod:`~brainlm.tasks.reconstruction`), phenotype prediction
(:mod:`~brainlm.tasks.prediction`), forecasting (:mod:`~brainlm.tasks.forecasting`), attention
maps (:mod:`~brainlm.tasks.attention`), network identification (:mod:`~brainlm.tasks.networks`)
and group attention differences (:mod:`~brainlm.tasks.group_attention`).

Every task reads data through :mod:`brainlm.tasks.model_input`, returns its results and writes
numbers only (JSON, TSV, Parquet); the figures are drawn by :mod:`brainlm.report` from those files.
"""
