"""brainlm: a foundation model of parcellated fMRI (BOLD) activity.

The package is laid out in the direction data flows:
``brainlm.data`` (atlases, recordings, readers, preprocessing, corpus, windows) ->
model -> train -> tasks -> report.
"""

from brainlm.data.atlas import Atlas, load_atlas
from brainlm.data.recording import Recording
from brainlm.errors import BrainLMInputError

__version__ = "0.1.0"

__all__ = ["Atlas", "Recording", "BrainLMInputError", "load_atlas", "__version__"]
