"""Class names and colour palettes of the datasets the SeMask weights were trained on (the standard mmseg tables),
and a generated palette for any other class count.

Index i of `names` / `palette` is model output channel i (after `reduce_zero_label` for ADE20K / COCO-Stuff-10k).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel",
    "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
_ADE20K_RGB = """
120 120 120  180 120 120  6 230 230  80 50 50  4 200 3  120 120 80  140 140 140  204 5 255  230 230 230  4 250 7
224 5 255  235 255 7  150 5 61  120 120 70  8 255 51  255 6 82  143 255 140  204 255 4  255 51 7  204 70 3
0 102 200  61 230 250  255 6 51  11 102 255  255 7 71  255 9 224  9 7 230  220 220 220  255 9 92  112 9 255
8 255 214  7 255 224  255 184 6  10 255 71  255 41 10  7 255 255  224 255 8  102 8 255  255 61 6  255 194 7
255 122 8  0 255 20  255 8 41  255 5 153  6 51 255  235 12 255  160 150 20  0 163 255  140 140 140  250 10 15
20 255 0  31 255 0  255 31 0  255 224 0  153 255 0  0 0 255  255 71 0  0 235 255  0 173 255  31 0 255
11 200 200  255 82 0  0 255 245  0 61 255  0 255 112  0 255 133  255 0 0  255 163 0  255 102 0  194 255 0
0 143 255  51 255 0  0 82 255  0 255 41  0 255 173  10 0 255  173 255 0  0 255 153  255 92 0  255 0 255
255 0 245  255 0 102  255 173 0  255 0 20  255 184 184  0 31 255  0 255 61  0 71 255  255 0 204  0 255 194
0 255 82  0 10 255  0 112 255  51 0 255  0 194 255  0 122 255  0 255 163  255 153 0  0 255 10  255 112 0
143 255 0  82 0 255  163 255 0  255 235 0  8 184 170  133 0 255  0 255 92  184 0 255  255 0 31  0 184 255
0 214 255  255 0 112  92 255 0  0 224 255  112 224 255  70 184 160  163 0 255  153 0 255  71 255 0  255 0 163
255 204 0  255 0 143  0 255 235  133 255 0  255 0 235  245 0 255  255 0 122  255 245 0  10 190 212  214 255 0
0 204 255  20 0 255  255 255 0  0 153 255  0 41 255  0 255 204  41 0 255  41 255 0  173 0 255  0 245 255
71 0 255  122 0 255  0 255 184  0 92 255  184 255 0  0 133 255  255 214 0  25 194 194  102 255 0  92 0 255
"""

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
_CITYSCAPES_RGB = """
128 64 128  244 35 232  70 70 70  102 102 156  190 153 153  153 153 153  250 170 30  220 220 0  107 142 35
152 251 152  70 130 180  220 20 60  255 0 0  0 0 142  0 0 70  0 60 100  0 80 100  0 0 230  119 11 32
"""

COCO_STUFF_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis",
    "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush", "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet",
    "cage", "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter",
    "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble", "floor-other",
    "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit", "furniture-other", "grass",
    "gravel", "ground-other", "hill", "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss",
    "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow", "plant-other", "plastic", "platform",
    "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf",
    "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw", "structural-other", "table",
    "tent", "textile-other", "towel", "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other",
    "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other", "waterdrops", "window-blind",
    "window-other", "wood",
)
_COCO_STUFF_RGB = """
0 192 64  0 192 64  0 64 96  128 192 192  0 64 64  0 192 224  0 192 192  128 192 64  0 192 96  128 192 64
128 32 192  0 0 224  0 0 64  0 160 192  128 0 96  128 0 192  0 32 192  128 128 224  0 0 192  128 160 192
128 128 0  128 0 32  128 32 0  128 0 128  64 128 32  0 160 0  0 0 0  192 128 160  0 32 0  0 128 128
64 128 160  128 160 0  0 128 0  192 128 32  128 96 128  0 0 128  64 0 32  0 224 128  128 0 0  192 0 160
0 96 128  128 128 128  64 0 160  128 224 128  128 128 64  192 0 32  128 96 0  128 0 192  0 128 32  64 224 0
0 0 64  128 128 160  64 96 0  0 128 192  0 128 160  192 224 0  0 128 64  128 128 32  192 32 128  0 64 192
0 0 32  64 160 128  128 64 64  128 0 160  64 32 128  128 192 192  0 0 160  192 160 128  128 192 0  128 0 96
192 32 0  128 64 128  64 128 96  64 160 0  0 64 0  192 128 224  64 32 0  0 192 128  64 128 224  192 160 0
0 192 0  192 128 96  192 96 128  0 64 128  64 0 96  64 224 128  128 64 0  192 0 224  64 96 128  128 192 128
64 0 224  192 224 128  128 192 64  192 0 96  192 96 0  128 64 192  0 128 96  0 224 0  64 64 64  128 128 224
0 96 0  64 192 192  0 128 224  128 224 0  64 192 64  128 128 96  128 32 128  64 0 192  0 64 96  0 160 128
192 0 64  128 64 224  0 32 128  192 128 192  0 64 224  128 160 128  192 128 0  128 64 32  128 32 64  192 0 128
64 192 32  0 160 64  64 0 0  192 192 160  0 32 64  64 128 128  64 192 160  128 160 64  64 128 0  192 192 32
128 96 192  64 0 128  64 64 32  0 224 192  192 0 0  192 64 160  0 96 192  192 128 128  64 64 160  128 224 192
192 128 64  192 64 32  128 96 64  192 0 192  0 192 32  64 224 64  64 0 64  128 192 160  64 96 64  64 128 192
0 192 160  192 224 64  64 128 64  128 192 32  192 32 192  64 64 192  0 64 32  64 160 192  192 64 64  128 64 160
64 32 192  192 192 192  0 64 160  192 160 192  192 192 0  128 64 96  192 32 64  192 64 128  64 192 96  64 160 64
64 64 0
"""


def _rgb(text: str) -> np.ndarray:
    return np.array(text.split(), dtype=np.uint8).reshape(-1, 3)  # [K, 3]


@dataclass(frozen=True)
class ClassInfo:
    """Names and RGB colours ([K, 3] uint8) of a dataset's classes; `label_offset` is what to add to a model's
    output index to get the dataset's id (1 where the dataset reduces the zero label: ADE20K, COCO-Stuff-10k)."""

    name: str
    names: tuple[str, ...]
    palette: np.ndarray
    label_offset: int = 0

    def __post_init__(self) -> None:
        assert len(self.names) == len(self.palette), (self.name, len(self.names), len(self.palette))


DATASETS: dict[str, ClassInfo] = {
    "ade20k": ClassInfo("ade20k", ADE20K_CLASSES, _rgb(_ADE20K_RGB), label_offset=1),
    "cityscapes": ClassInfo("cityscapes", CITYSCAPES_CLASSES, _rgb(_CITYSCAPES_RGB)),
    "coco_stuff10k": ClassInfo("coco_stuff10k", COCO_STUFF_CLASSES, _rgb(_COCO_STUFF_RGB), label_offset=1),
}
_BY_COUNT = {len(info.names): info for info in DATASETS.values()}


def generate_palette(num_classes: int) -> np.ndarray:
    """A deterministic palette for any class count: the PASCAL VOC bit-interleaving colour map ([K, 3] uint8),
    distinct colours for up to 2^24 classes."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    ids = np.arange(num_classes, dtype=np.int64)
    rgb = np.zeros((num_classes, 3), dtype=np.int64)
    for shift in range(7, -1, -1):  # the high bit of each channel from the lowest three bits of the id, and so on
        for c in range(3):
            rgb[:, c] |= ((ids >> c) & 1) << shift
        ids = ids >> 3
    return rgb.astype(np.uint8)


def get_class_info(dataset: str | None = None, num_classes: int | None = None) -> ClassInfo:
    """Class names and palette of `dataset` ('ade20k', 'cityscapes', 'coco_stuff10k'); without a dataset, the
    dataset whose class count is `num_classes` (150, 19, 171), else generated names `class_i` and colours."""
    if dataset is not None:
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; choose from {sorted(DATASETS)}")
        info = DATASETS[dataset]
        if num_classes is not None and num_classes != len(info.names):
            raise ValueError(f"{dataset} has {len(info.names)} classes, the model {num_classes}")
        return info
    if num_classes is None:
        raise ValueError("pass a dataset name or a class count")
    if num_classes in _BY_COUNT:
        return _BY_COUNT[num_classes]
    return ClassInfo("custom", tuple(f"class_{i}" for i in range(num_classes)), generate_palette(num_classes))
