"""The data stage: how fMRI enters brainlm.

``atlas`` and ``recording`` (core types) -> ``readers`` and ``participants`` (files) ->
``sources`` (what to ingest) -> ``contract`` and ``scaling`` (preprocessing) -> ``splits`` ->
``prepare`` (writes a corpus, driven by ``prepare_settings``; its outlier screen and scaler fit
live in ``scale_outliers`` and ``scaler_fit``, beside ``scaling``) -> ``corpus`` (reads it) ->
``windows`` (PyTorch / Lightning).
``samples`` loads the real data shipped with the package.
Scans (4-D NIfTI, GIfTI, CIFTI; fMRIPrep derivatives) enter through ``volumes`` and ``surfaces``
(atlas images, nilearn maskers), ``fmriprep`` (finding scans, confounds) and ``extraction`` (one
scan -> a parcel series, run by ``prepare``); ``example_scans`` writes a small example dataset.
"""
