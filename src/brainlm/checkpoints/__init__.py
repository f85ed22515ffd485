"""Checkpoints on disk: saving and strict loading of a model folder (:mod:`.folder`), the models
shipped with the package (:mod:`.shipped`), Hugging Face Hub ids (:mod:`.hub`) and the import of
the original BrainLM weights (:mod:`.upstream_import`).

This is the layer that may do file I/O for models; :mod:`brainlm.model` below it may not
(import-linter enforces it)."""
