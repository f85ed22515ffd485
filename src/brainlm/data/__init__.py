"""The data stage: how fMRI enters brainlm.

``atlas`` and ``recording`` (core types) -> ``readers`` and ``participants`` (files) ->
``sources`` (what to ingest) -> ``contract`` and ``scaling`` (preprocessing) -> ``splits`` ->
``prepare`` (writes a corpus) -> ``corpus`` (reads it) -> ``windows`` (PyTorch / Lightning).
``samples`` loads the real data shipped with the package.
"""
