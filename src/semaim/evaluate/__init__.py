"""Evaluation protocols: frozen features (k-NN, linear probe) and end-to-end fine-tuning."""
