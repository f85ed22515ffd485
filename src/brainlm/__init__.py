"""brainlm: a foundation model of parcellated fMRI (BOLD) activity.

The package is laid out in the direction data flow, each layer importing only from those below:
``brainlm.data`` and ``brainlm.simulate`` -> ``brainlm.model`` -> ``brainlm.train`` ->
``brainlm.tasks`` -> ``brainlm.report`` -> ``brainlm.commands`` (see docs/architecture.md).

The high-level API works on a checkpoint (a folder, a shipped model's name or a Hugging Face
Hub id ``hf://ORG/REPO[/SUBFOLDER]``), or a loaded model, and raw recordings; it mirrors the
command line (``list_models``: ``brainlm models --json``; ``info``: ``brainlm info --json``;
``embed``: ``brainlm embed``)::

    import brainlm
    brainlm.list_models()                          # the shipped checkpoints and their cards
    model = brainlm.load("run/model")              # or "hcp-small", or "hf://vandijklab/brainlm/old_13M"
    brainlm.info("run/model")                      # what it is and expects, as a dict
    df = brainlm.embed(model, recordings)          # one row of embeddings per recording (DataFrame)
    emb = brainlm.encode(model, recordings)        # embeddings per window and recording
    rec = brainlm.reconstruct(model, recordings[0])   # masked reconstruction
    fut = brainlm.forecast(model, recordings[0], 20)  # the next 20 TRs

scikit-learn transformers are in :mod:`brainlm.sklearn`.
"""

from brainlm.data.atlas import Atlas, load_atlas
from brainlm.data.recording import Recording
from brainlm.errors import BrainLMInputError
from brainlm.version import __version__

#: High-level functions and where they live (all built on ``brainlm.tasks.model_input`` and
#: ``brainlm.tasks.inference``).
_API = {
    "list_models": ("brainlm.tasks.api", "list_models"),
    "load": ("brainlm.tasks.api", "load"),
    "info": ("brainlm.tasks.api", "info"),
    "embed": ("brainlm.tasks.api", "embed"),
    "preprocess": ("brainlm.tasks.model_input", "preprocess"),
    "encode": ("brainlm.tasks.inference", "encode"),
    "reconstruct": ("brainlm.tasks.inference", "reconstruct"),
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
