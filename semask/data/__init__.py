"""Datasets, transforms and class tables (palettes, names)."""
