"""Stacked training: K runs of one model and one batch size trained together in one process."""
