"""Datasets: the in-memory container, the safe on-disk format, public pickle layouts, and synthetic data."""

from mmcl.data.dataset import Dataset, Split, load_dataset, save_dataset

__all__ = ["Dataset", "Split", "load_dataset", "save_dataset"]
