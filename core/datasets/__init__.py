"""Datasets: build, import, score, review, freeze and export training samples.

Modules: service (datasets, samples), importers, builder (from the corpus), review,
scoring (background quality runs), versions (freeze, diff), export. The quality library
itself lives in core.datasets.quality.
"""
