"""Class tables (`palettes`), datasets (ADE20K, Cityscapes, COCO-Stuff-10k, folders), paired transforms and
deterministic sampling."""

from .datasets import (
    DATASETS,
    SegmentationDataset,
    ade20k,
    build_dataset,
    cityscapes,
    coco_stuff10k,
    default_splits,
    folder,
    folder_splits,
    read_class_list,
)
from .loader import ResumableSampler, ShardSampler, TransformedDataset, collate
from .palettes import CITYSCAPES_CLASSES
from .synthetic import SYNTHETIC_CLASSES, write_synthetic_dataset
from .transforms import train_transforms

__all__ = ["CITYSCAPES_CLASSES", "DATASETS", "SYNTHETIC_CLASSES", "ResumableSampler", "SegmentationDataset",
           "ShardSampler", "TransformedDataset", "ade20k", "build_dataset", "cityscapes", "coco_stuff10k", "collate",
           "default_splits", "folder", "folder_splits", "read_class_list", "train_transforms",
           "write_synthetic_dataset"]
