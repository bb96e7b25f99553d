"""Extraction: the one pass over the corpus that keeps, per sentence group, what the signals need."""
