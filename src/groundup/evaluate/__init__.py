"""Evaluation: language-modelling metrics (more tasks build on these)."""
