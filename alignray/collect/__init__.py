"""Collecting human feedback: which pairs to label next (selection)."""
