"""Segmentation datasets: ADE20K, Cityscapes, COCO-Stuff-10k (mmseg layouts) and a folder dataset for custom data.

A dataset is a list of (image, mask) file pairs plus a label mapping; `load(i)` returns
{"image": uint8 [H, W, 3] RGB, "label": uint8 [H, W] (class ids, 255 = ignore), "path": str}. Bad data raises a
ValueError naming the file: unreadable images, masks that are not single-channel, image/mask size mismatches,
label values outside [0, num_classes) other than 255; missing pairs and empty datasets are reported when the
dataset is built, never skipped silently. `verify()` checks every pair at once and lists all bad files; the trainer
runs it on the masks and the images' headers before the first iteration. Images are read with their EXIF orientation
applied (as at inference), masks as stored.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .palettes import ClassInfo, generate_palette, get_class_info

IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
EXIF_ORIENTATION = 0x0112  # 1 = stored upright; 2-8 = flip / rotate when displayed
_MAX_LISTED = 20  # bad files listed by name in one `verify` error (the rest are counted)
# Cityscapes labelIds -> the 19 train ids (cityscapesScripts `labels.py`); every other id is ignored.
_CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                         26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def reduce_zero_label_lut() -> np.ndarray:
    """ADE20K / COCO-Stuff: 0 (unlabelled) -> 255, k -> k - 1."""
    lut = np.arange(256, dtype=np.int64) - 1
    lut[0] = IGNORE_INDEX
    lut[255] = IGNORE_INDEX
    return lut.astype(np.uint8)


def cityscapes_lut() -> np.ndarray:
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    for label_id, train_id in _CITYSCAPES_TRAIN_IDS.items():
        lut[label_id] = train_id
    return lut


def read_image(path: str | Path) -> np.ndarray:
    """An RGB uint8 [H, W, 3] array, EXIF orientation applied; a ValueError naming the file if it cannot be decoded.

    The orientation is applied as `semask.infer.load_image` (and mmseg's cv2 reading) does, so a phone photo is
    trained the way it is segmented; masks (`read_mask`) are read as stored, as in mmseg."""
    return _read_image(path)[0]


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> [H, W, 3] uint8 RGB (16/32-bit and float grey scaled to 8 bits, alpha dropped); the one
    conversion of training, `semask eval` and the `Predictor`, so each sees the same pixels."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255):
            arr = arr / 257.0  # 16-bit -> 8-bit, 65535 -> 255
        elif img.mode == "F" and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0  # float images in [0, 1] (scientific TIFFs), as float tensors are read
        arr = np.clip(np.round(arr), 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=-1)
    return np.asarray(img.convert("RGB"))  # L, LA, P, PA, RGBA, CMYK, YCbCr, 1, ...


def _read_image(path: str | Path) -> tuple[np.ndarray, int]:
    """`read_image` and the image's EXIF orientation tag (1 when untagged), for the size-mismatch error."""
    try:
        with Image.open(path) as im:
            orientation = im.getexif().get(EXIF_ORIENTATION, 1)
            upright = ImageOps.exif_transpose(im) if orientation != 1 else im  # untagged: no extra copy
            return pil_to_rgb(upright), orientation
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def _image_size(path: str | Path) -> tuple[tuple[int, int], int]:
    """((H, W) as `read_image` returns the image, EXIF orientation tag) from the file's header, without decoding."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            # A PNG's getexif() decodes the whole image when no eXIf chunk precedes the pixels: one that has none
            # there is untagged (eXIf must come before IDAT).
            tagged = im.format != "PNG" or "exif" in im.info
            orientation = im.getexif().get(EXIF_ORIENTATION, 1) if tagged else 1
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err
    return ((w, h) if orientation in (5, 6, 7, 8) else (h, w)), orientation  # 5-8 transpose on reading


def _value_ranges(values: Iterable[int]) -> str:
    """[0, 1, 2, 255] -> '0..2, 255'."""
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in runs)


def read_mask(path: str | Path) -> np.ndarray:
    """A single-channel label map (mode L / P / I) as uint8 [H, W]; errors name the file."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16", "1"):
                raise ValueError(f"mask {path} has mode {im.mode}; masks must be single-channel images of class ids "
                                 "(PNG mode L or P), not colour pictures")
            mask = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"cannot read mask {path}: {err}") from err
    if mask.max(initial=0) > 255 or mask.min(initial=0) < 0:
        bad = np.unique(mask[(mask > 255) | (mask < 0)])[:10].tolist()
        raise ValueError(f"mask {path} has label values {bad} outside 0..255")
    return mask.astype(np.uint8)


def _listdir(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(tuple(suffixes)))


class SegmentationDataset:
    """(image, mask) pairs with a label mapping (`lut`: 256-entry table applied to raw mask values).

    `class_info` (names, palette, label offset; see `semask.data.palettes`) is what the Predictor and the pictures
    use: the standard table for ADE20K / Cityscapes / COCO-Stuff-10k, a generated palette for custom classes.
    """

    def __init__(self, pairs: Sequence[tuple[Path, Path | None]], classes: Sequence[str], *,
                 lut: np.ndarray | None = None, name: str = "dataset", palette: np.ndarray | None = None,
                 label_offset: int = 0) -> None:
        if not pairs:
            raise ValueError(f"{name} is empty: no images found")
        self.pairs = [(Path(i), Path(m) if m is not None else None) for i, m in pairs]
        self.classes = tuple(classes)
        if not self.classes:
            raise ValueError(f"{name}: the class list is empty")
        if len(set(self.classes)) != len(self.classes):
            dup = sorted({c for c in self.classes if self.classes.count(c) > 1})
            raise ValueError(f"{name}: the class list has duplicate names {dup}")
        self.lut = lut
        self.name = name
        palette = generate_palette(len(self.classes)) if palette is None else np.asarray(palette, np.uint8)
        if palette.shape != (len(self.classes), 3):
            raise ValueError(f"{name}: the palette has shape {palette.shape}, expected ({len(self.classes)}, 3)")
        self.class_info = ClassInfo(name, self.classes, palette, label_offset)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        return self.load(index)

    def load(self, index: int) -> dict:
        image_path, mask_path = self.pairs[index]
        image, orientation = _read_image(image_path)
        sample = {"image": image, "path": str(image_path)}
        if mask_path is None:
            return sample
        raw = read_mask(mask_path)
        if raw.shape != image.shape[:2]:
            raise ValueError(_size_mismatch(image_path, image.shape[:2], mask_path, raw.shape, orientation))
        label = self.lut[raw] if self.lut is not None else raw
        bad = self._invalid_values(raw)
        if bad.size:
            raise ValueError(f"mask {mask_path} has label values {bad[:10].tolist()} outside the {self.num_classes} "
                             f"classes of {self.name} (valid after mapping: 0..{self.num_classes - 1} and "
                             f"{IGNORE_INDEX} = ignore); fix the mask or the class list")
        sample["label"] = label
        return sample

    def _mapped(self) -> np.ndarray:
        """Each of the 256 stored mask values as a training label (the `lut`, or the identity)."""
        return self.lut if self.lut is not None else np.arange(256, dtype=np.uint8)

    def _invalid_values(self, raw: np.ndarray) -> np.ndarray:
        """The stored values of mask `raw` (sorted) that map outside the classes and are not ignored."""
        mapped = self._mapped()
        invalid = (mapped != IGNORE_INDEX) & (mapped >= self.num_classes)
        return np.flatnonzero((np.bincount(raw.ravel(), minlength=256) > 0) & invalid)

    def valid_mask_values(self) -> str:
        """The stored mask values this dataset accepts, e.g. '0..2, 255 (255 = ignore)'."""
        mapped = self._mapped()
        valid = np.flatnonzero((mapped == IGNORE_INDEX) | (mapped < self.num_classes))
        return f"{_value_ranges(valid)} ({_value_ranges(np.flatnonzero(mapped == IGNORE_INDEX))} = ignore)"

    def pair_problem(self, index: int, *, decode_images: bool = False) -> str | None:
        """What is wrong with pair `index` (a mask that is unreadable, not single-channel, not the image's size or
        with values outside the classes; an unreadable image), or None. Reads the mask, and the image's header only
        unless `decode_images`."""
        image_path, mask_path = self.pairs[index]
        try:
            if decode_images:
                image, orientation = _read_image(image_path)
                image_hw = image.shape[:2]
            else:
                image_hw, orientation = _image_size(image_path)
            if mask_path is None:
                return None
            raw = read_mask(mask_path)
        except ValueError as err:
            return str(err)
        if raw.shape != image_hw:
            return _size_mismatch(image_path, image_hw, mask_path, raw.shape, orientation)
        bad = self._invalid_values(raw)
        return f"mask {mask_path} has label values {bad[:10].tolist()}" if bad.size else None

    def pair_problems(self, indices: Iterable[int] | None = None, *, decode_images: bool = False) -> dict[int, str]:
        """{index: problem} over `indices` (default: every pair), as `pair_problem`; files are read by a few
        threads (decoding releases the GIL)."""
        indices = list(range(len(self)) if indices is None else indices)
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            found = pool.map(functools.partial(self.pair_problem, decode_images=decode_images), indices)
        return {i: p for i, p in zip(indices, found, strict=True) if p is not None}

    def describe_problems(self, problems: dict[int, str]) -> str:
        """One message for `pair_problems`' result: the dataset, the valid mask values, the first files by name."""
        lines = [f"  {problems[i]}" for i in sorted(problems)[:_MAX_LISTED]]
        if len(problems) > _MAX_LISTED:
            lines.append(f"  ... and {len(problems) - _MAX_LISTED} more")
        return (f"{self.name}: {len(problems)} of {len(self)} image/mask pair(s) are bad; valid mask values "
                f"{self.valid_mask_values()}:\n" + "\n".join(lines))

    def verify(self, indices: Iterable[int] | None = None, *, decode_images: bool = True) -> None:
        """Check every pair (or those of `indices`) as `pair_problems`: one ValueError lists all bad files.
        `decode_images=False` reads only the images' headers (the trainer's check before training: masks are
        small to decode, photos are not)."""
        problems = self.pair_problems(indices, decode_images=decode_images)
        if problems:
            raise ValueError(self.describe_problems(problems) + "\nfix or remove these files, or fix the class list")


def _size_mismatch(image_path: Path, image_hw: tuple[int, ...], mask_path: Path, mask_hw: tuple[int, ...],
                   orientation: int) -> str:
    """The size-mismatch message; it names EXIF when the image was rotated / flipped on reading."""
    msg = (f"size mismatch: image {image_path} is {image_hw[1]}x{image_hw[0]} (WxH) but mask {mask_path} is "
           f"{mask_hw[1]}x{mask_hw[0]}")
    if orientation != 1:  # the mask may have been drawn on the stored (unrotated) pixels
        msg += (f"; the image has EXIF orientation {orientation}, applied on reading (as at inference), so its size "
                "is the displayed one: a mask drawn on the stored pixels must be rotated/flipped the same way")
    return msg


def match_pairs(images: Sequence[Path], masks: Sequence[Path], *, image_key, mask_key, name: str
                ) -> list[tuple[Path, Path]]:
    """Pair files by key; images without masks and masks without images raise one error listing them."""
    by_key = {mask_key(m): m for m in masks}
    pairs, missing = [], []
    for img in images:
        key = image_key(img)
        if key in by_key:
            pairs.append((img, by_key.pop(key)))
        else:
            missing.append(str(img))
    if missing or by_key:
        lines = [f"  image without mask: {p}" for p in missing[:10]]
        lines += [f"  mask without image: {p}" for p in sorted(map(str, by_key.values()))[:10]]
        total = len(missing) + len(by_key)
        raise ValueError(f"{name}: {total} unpaired file(s) ({len(pairs)} pairs found):\n" + "\n".join(lines))
    return pairs


def _standard(dataset: str) -> dict:
    """Class names, palette and label offset of a standard dataset, from the one table in `palettes.py`."""
    info = get_class_info(dataset)
    return {"classes": info.names, "palette": info.palette, "label_offset": info.label_offset}


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what} folder {path} does not exist")
    return path


def ade20k(root: str | Path, split: str = "training") -> SegmentationDataset:
    """`ADEChallengeData2016/{images,annotations}/{training,validation}`; 150 classes, zero label reduced."""
    root = Path(root)
    imgs = _listdir(_require_dir(root / "images" / split, "ADE20K images"), (".jpg",))
    masks = _listdir(_require_dir(root / "annotations" / split, "ADE20K annotations"), (".png",))
    pairs = match_pairs(imgs, masks, image_key=lambda p: p.stem, mask_key=lambda p: p.stem, name=f"ADE20K {split}")
    return SegmentationDataset(pairs, lut=reduce_zero_label_lut(), name=f"ADE20K {split}", **_standard("ade20k"))


def cityscapes(root: str | Path, split: str = "train") -> SegmentationDataset:
    """`leftImg8bit/{split}/{city}/*_leftImg8bit.png` + `gtFine/.../*_gtFine_labelIds.png` -> 19 train ids."""
    root = Path(root)
    imgs = _listdir(_require_dir(root / "leftImg8bit" / split, "Cityscapes images"), ("_leftimg8bit.png",))
    masks = _listdir(_require_dir(root / "gtFine" / split, "Cityscapes annotations"), ("_gtfine_labelids.png",))
    pairs = match_pairs(imgs, masks, image_key=lambda p: p.name[: -len("_leftImg8bit.png")],
                        mask_key=lambda p: p.name[: -len("_gtFine_labelIds.png")], name=f"Cityscapes {split}")
    return SegmentationDataset(pairs, lut=cityscapes_lut(), name=f"Cityscapes {split}", **_standard("cityscapes"))


def coco_stuff10k(root: str | Path, split: str = "train2014") -> SegmentationDataset:
    """mmseg's converted layout: `images/{train2014,test2014}/*.jpg` + `annotations/.../*_labelTrainIds.png`;
    171 classes, zero label reduced (as the released configs)."""
    root = Path(root)
    imgs = _listdir(_require_dir(root / "images" / split, "COCO-Stuff images"), (".jpg",))
    masks = _listdir(_require_dir(root / "annotations" / split, "COCO-Stuff annotations"), ("_labeltrainids.png",))
    pairs = match_pairs(imgs, masks, image_key=lambda p: p.stem,
                        mask_key=lambda p: p.name[: -len("_labelTrainIds.png")], name=f"COCO-Stuff-10k {split}")
    return SegmentationDataset(pairs, lut=reduce_zero_label_lut(), name=f"COCO-Stuff-10k {split}",
                               **_standard("coco_stuff10k"))


def read_class_list(path: str | Path) -> list[str]:
    """One class name per line; the k-th name is class id k (`#` comment lines and trailing blank lines skipped).

    A blank line between names is an error: skipping it would silently give every later class the id of the one
    before it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class list {path} does not exist; write one class name per line (line k = id k)")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    blank = [i + 1 for i, ln in enumerate(lines) if not ln]
    if blank:
        raise ValueError(f"class list {path}: line {blank[0]} is blank; class ids follow the order of the names, so "
                         "name that class (e.g. 'unused') or delete the line")
    names = [ln for ln in lines if not ln.startswith("#")]
    if not names:
        raise ValueError(f"class list {path} is empty")
    return names


# Names a folder dataset's split sub-folders go by (the README's layout: images/train, images/val).
SPLIT_NAMES = ("train", "training", "val", "validation", "test")


def folder_splits(root: str | Path) -> list[str]:
    """The split sub-folders (`SPLIT_NAMES`) that `root/images` holds."""
    return [n for n in SPLIT_NAMES if (Path(root) / "images" / n).is_dir()]


def default_splits(kind: str, root: str | Path, train_split: str | None,
                   val_split: str | None) -> tuple[str | None, str | None]:
    """(train, val) splits with a folder dataset's unset ones read from its layout: `train` / `val` when
    `root/images` has such sub-folders. The other datasets keep theirs (None: their default training split, and no
    validation)."""
    if kind != "folder":
        return train_split, val_split
    found = folder_splits(root)
    return (train_split if train_split is not None or "train" not in found else "train",
            val_split if val_split is not None or "val" not in found else "val")


def folder(root: str | Path, split: str | None = None, *, classes: Sequence[str] | str | Path | None = None,
           reduce_zero_label: bool = False) -> SegmentationDataset:
    """Custom data: `root/images/[split/]NAME.jpg|png` + `root/masks/[split/]NAME.png` (class ids, 255 ignore);
    classes from a list, a file, or `root/classes.txt`. Without `split`, every image under `root/images` (its
    sub-folders are part of the names) unless it holds split folders (`train`, `val`, ...): then `split` must name one,
    so that one split's images are never read as another's."""
    root = Path(root)
    if not root.is_dir():  # before the class list, which would be reported missing instead
        raise FileNotFoundError(f"folder dataset root {root} does not exist")
    if split is None and folder_splits(root):
        raise ValueError(f"{root / 'images'} holds split folders {folder_splits(root)}: pass split= one of them (a "
                         "training config: data.train_split=... and data.val_split=...)")
    if classes is None or isinstance(classes, (str, Path)):
        class_file = Path(classes) if classes is not None else root / "classes.txt"
        classes = read_class_list(class_file)
        name = f"folder dataset {root} (classes from {class_file})"
    else:
        name = f"folder dataset {root}"
    sub = Path(split) if split else Path()
    base_i, base_m = root / "images" / sub, root / "masks" / sub
    imgs = _listdir(_require_dir(base_i, "images"), IMAGE_SUFFIXES)
    masks = _listdir(_require_dir(base_m, "masks"), (".png",))

    def image_key(p: Path) -> str:  # the path under images/[split] without the suffix
        return p.relative_to(base_i).with_suffix("").as_posix()

    def mask_key(p: Path) -> str:
        return p.relative_to(base_m).with_suffix("").as_posix()

    _refuse_lossy_masks(base_m, {image_key(p) for p in imgs}, {mask_key(p) for p in masks}, mask_key, name)
    pairs = match_pairs(imgs, masks, image_key=image_key, mask_key=mask_key, name=name)
    return SegmentationDataset(pairs, classes, lut=reduce_zero_label_lut() if reduce_zero_label else None, name=name,
                               label_offset=int(reduce_zero_label))


def _refuse_lossy_masks(folder: Path, image_keys: set[str], png_keys: set[str], mask_key: Callable[[Path], str],
                        name: str) -> None:
    """Masks saved as JPEG (or another non-PNG image format) for images that have no PNG mask: one error saying so,
    not 'image without mask' for each (only PNG masks are read)."""
    lossy = [p for p in _listdir(folder, IMAGE_SUFFIXES) if p.suffix.lower() != ".png"
             and mask_key(p) in image_keys and mask_key(p) not in png_keys]
    if lossy:
        kinds = sorted({p.suffix.lower() for p in lossy})
        raise ValueError(f"{name}: {folder} holds {len(lossy)} {'/'.join(kinds)} mask(s) (e.g. {lossy[0]}) but masks "
                         "must be lossless PNG files (JPEG compression changes the class ids along edges); save the "
                         "label maps as PNG (mode L or P) from their originals")


DATASETS = {"ade20k": ade20k, "cityscapes": cityscapes, "coco_stuff10k": coco_stuff10k, "folder": folder}


def build_dataset(kind: str, root: str | Path, split: str | None, **kwargs) -> SegmentationDataset:
    """`kind` one of DATASETS; `split` None uses the dataset's default training split."""
    if kind not in DATASETS:
        raise ValueError(f"unknown dataset type {kind!r}; choose from {sorted(DATASETS)}")
    if split is None:
        return DATASETS[kind](root, **kwargs)
    return DATASETS[kind](root, split, **kwargs)
