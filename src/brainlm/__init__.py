"""brainlm: a foundation model of parcellated fMRI (BOLD) activity.

The package is laid out in the direction data flow, each layer importing only from those below:
``brainlm.data`` and ``brainlm.simulate`` -> ``brainlm.model`` -> ``brainlm.train`` ->
``brainlm.tasks`` -> ``brainlm.report`` -> ``brainlm.commands`` (see docs/architecture.md).

The high-level API works on a checkpoint folder (or a loaded model) and raw recordings:

>>> import brainlm
>>> model = brainlm.load("run/model")
>>> emb = brainlm.encode(model, recordings)           # embeddings per window and recording
>>> rec = brainlm.reconstruct(model, recordings[0])   # masked reconstruction
>>> fut = brainlm.forecast(model, recordings[0], 20)  # the next 20 TRs
"""

from brainlm.data.atlas import Atlas, load_atlas
from brainlm.data.recording import Recording
from brainlm.errors import BrainLMInputError
from brainlm.version import __version__

#: High-level functions and where they live (all built on ``brainlm.tasks.model_input``).
_API = {
    "load": ("brainlm.tasks.model_input", "load_model"),
    "preprocess": ("brainlm.tasks.model_input", "preprocess"),
    "encode": ("brainlm.tasks.model_input", "encode"),
    "reconstruct": ("brainlm.tasks.model_input", "reconstruct"),
    "forecast": ("brainlm.tasks.forecasting.api", "forecast"),
}

__all__ = ["Atlas", "Recording", "BrainLMInputError", "load_atlas", "__version__", *_API]


def __getattr__(name: str):
    # Lazy on purpose: importing any submodule (``brainlm.data.readers``) runs this file first,
    # and importing the tasks layer here would load torch and every layer above ``data`` for a
    # user who only reads files, and make the lower layers import the upper ones at start-up.
    if name in _API:
        import importlib

        module, attr = _API[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'brainlm' has no attribute {name!r}")
