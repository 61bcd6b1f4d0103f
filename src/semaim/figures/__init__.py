"""Figures: the orders on images (Fig. 2 / S1) and training curves."""
