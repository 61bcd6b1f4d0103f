"""Running things: the pretraining loop (Algorithm 1, ``pretrain``), checkpoints, the run log, the
optimizer pieces, torchrun plumbing, and the run-folder utilities every command shares (``run``)."""
