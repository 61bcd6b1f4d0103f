"""Semantic segmentation with the encoder as a ViTDet backbone, in one place: the images and masks
(``masks``), the pyramid and heads with their scores (``heads``), and the ``semaim segment`` run
(``segment``), which trains through the shared :mod:`semaim.evaluate.trainer`."""
