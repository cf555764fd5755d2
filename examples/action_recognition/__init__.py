"""HM-AN for video action recognition (Yan et al., arXiv 1708.07590), built on stochrnn.

Data side: :mod:`.datasets` (HMDB51, UCF Sports, Olympic Sports layouts and
splits), :mod:`.decode` (video files, JPEG frame folders, Norpix SEQ),
:mod:`.backbones` and :mod:`.extract` (per-frame ResNet-152 features, the
``python -m examples.action_recognition.extract`` CLI) and :mod:`.features`
(the features directory format and :class:`~.features.ClipDataset`). The
model, training, evaluation and synthetic data are in the other modules of
this package.
"""
