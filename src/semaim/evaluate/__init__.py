"""Evaluation protocols: frozen features (``knn``, ``linear``), end-to-end fine-tuning (``finetune``) and
segmentation (``segmentation``); both trained protocols run through the one supervised ``trainer``."""
