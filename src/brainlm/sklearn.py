"""scikit-learn transformers of BrainLM, for ``Pipeline``, ``cross_val_score`` and
``GridSearchCV`` (they clone and pickle like any estimator):

* :class:`BrainLMEmbedding`: recordings -> ``(n_recordings, D)`` encoder embeddings;
* :class:`LatentConnectivity`: recordings -> parcels' co-fluctuation in the model's latent space,
  vectorised like nilearn's ``ConnectivityMeasure(vectorize=True)``;
* :func:`masker_atlas`: the atlas of a nilearn ``NiftiLabelsMasker``, for ``atlas=``.

A fitted transformer refits nothing: ``fit`` loads the frozen pretrained encoder and checks the
checkpoint, the atlas and the TR, and learns nothing from the data, so the features of a recording
do not depend on the training fold (see :mod:`brainlm.tasks.prediction.estimator`). Examples:
docs/python.md.
"""

from brainlm.tasks.prediction.estimator import BrainLMEmbedding, LatentConnectivity, masker_atlas

__all__ = ["BrainLMEmbedding", "LatentConnectivity", "masker_atlas"]
