"""Images and benchmark files for the evaluation protocols (SPEC §9).

Readers check what they can up front (the file, its columns, the class names, that every
class has members and that every image exists) and raise an error naming the file, so a
long feature extraction never fails half-way on a typo.
"""
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from util.constants import XRAY_MEAN, XRAY_STD

EVAL_RESIZE = 256
EVAL_CROP = 224

CHEXPERT8X200_CLASSES = ("Atelectasis", "Cardiomegaly", "Edema", "Fracture", "No Finding",
                         "Pleural Effusion", "Pneumonia", "Pneumothorax")
CHEXPERT5X200_CLASSES = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
RSNA_CLASSES = ("no pneumonia", "pneumonia")  # label 0, label 1
DICOM_SUFFIXES = (".dcm", ".dicom")


# ---------------------------------------------------------------- images

def eval_transform() -> transforms.Compose:
    """Resize 256 (bicubic) -> centre-crop 224 -> grey as 3 channels -> tensor -> normalise."""
    return transforms.Compose([
        transforms.Resize(EVAL_RESIZE, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(EVAL_CROP),
        transforms.Grayscale(num_output_channels=3),
        transforms.ToTensor(),
        transforms.Normalize([XRAY_MEAN] * 3, [XRAY_STD] * 3),
    ])


def load_pil_image(path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def dicom_to_uint8(dicom: pydicom.Dataset) -> np.ndarray:
    """Pixels scaled to 0-255 by the image maximum, inverted when MONOCHROME1 (white = air).

    Rounds like OpenCV's `convertScaleAbs` in the original code: |x * (255 / max)| computed
    in float32, rounded half to even, saturated to uint8.
    """
    pixels = dicom.pixel_array
    peak = pixels.max()
    scale = np.float32(255.0 / peak) if peak > 0 else np.float32(0.0)
    scaled = np.clip(np.rint(np.abs(pixels.astype(np.float32) * scale)), 0, 255).astype(np.uint8)
    if dicom.get("PhotometricInterpretation") == "MONOCHROME1":
        scaled = 255 - scaled
    return scaled


def load_dicom_image(path) -> Image.Image:
    return Image.fromarray(dicom_to_uint8(pydicom.dcmread(path))).convert("RGB")


def load_image(path) -> Image.Image:
    """RGB image from a DICOM file (by suffix) or any format Pillow reads."""
    if str(path).lower().endswith(DICOM_SUFFIXES):
        return load_dicom_image(path)
    return load_pil_image(path)


class ImageDataset(Dataset):
    """(image tensor, label) pairs; `image_loader` turns a path into a PIL image."""

    def __init__(self, paths, labels: torch.Tensor, image_loader=load_image, transform=None):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} images but {len(labels)} labels")
        self.paths = list(paths)
        self.labels = labels
        self.image_loader = image_loader
        self.transform = transform if transform is not None else eval_transform()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return self.transform(self.image_loader(self.paths[index])), self.labels[index]


@dataclass
class ImageSet:
    """Image paths with, per image, a class index (or a multi-hot row for 8x200 candidates)."""
    paths: list[str]
    labels: torch.Tensor

    def data_loader(self, batch_size: int, num_workers: int, image_loader=load_image) -> DataLoader:
        """Batches of (images, labels) in file order."""
        dataset = ImageDataset(self.paths, self.labels, image_loader=image_loader)
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)


# ---------------------------------------------------------------- checks

def require_file(path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    return path


def read_table(path, what: str, columns) -> pd.DataFrame:
    """A CSV file that must have `columns`."""
    table = pd.read_csv(require_file(path, what))
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{what} {path} lacks column(s) {missing}; it has {list(table.columns)}")
    return table


def require_images(paths, what: str, hint: str) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(paths)} images listed in {what} are missing, "
                                f"e.g. {missing[0]} ({hint})")


def require_members(counts: torch.Tensor, classes, what: str) -> None:
    """Every class must have members (an empty class would leave a metric undefined)."""
    empty = [name for name, count in zip(classes, counts.tolist()) if count == 0]
    if empty:
        raise ValueError(f"{what} has no item of class(es) {empty}")


def class_indices(names, classes, what: str) -> torch.Tensor:
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise ValueError(f"{what} names unknown class(es) {unknown}; expected some of {list(classes)}")
    index = {name: i for i, name in enumerate(classes)}
    return torch.tensor([index[name] for name in names], dtype=torch.long)


def one_hot_indices(table: pd.DataFrame, classes, what: str) -> torch.Tensor:
    """The class of each row from its label columns, which must hold exactly one 1."""
    positive = table[list(classes)].to_numpy() == 1
    bad = np.flatnonzero(positive.sum(axis=1) != 1)
    if len(bad):
        raise ValueError(f"{what}: {len(bad)} row(s) do not have exactly one positive label among "
                         f"{list(classes)}, e.g. data row {bad[0] + 1}")
    return torch.from_numpy(positive.argmax(axis=1))


def _image_paths(table: pd.DataFrame, image_root) -> list[str]:
    return [os.path.join(image_root, p) for p in table["Path"]]


_CHEXPERT_HINT = "set --chexpert_root to the folder that holds the CheXpert images"


# ---------------------------------------------------------------- CheXpert 8x200 (ConVIRT)

def read_image_queries(query_csv, chexpert_root, classes=CHEXPERT8X200_CLASSES) -> ImageSet:
    """ConVIRT's `image-retrieval/query.csv`: columns `Variable` (class) and `Path`."""
    what = "query CSV"
    table = read_table(query_csv, what, ["Path", "Variable"])
    labels = class_indices(table["Variable"], classes, f"{what} {query_csv}")
    paths = _image_paths(table, chexpert_root)
    require_images(paths, f"{what} {query_csv}", _CHEXPERT_HINT)
    return ImageSet(paths, labels)


def read_text_queries(query_csv, classes=CHEXPERT8X200_CLASSES) -> tuple[list[str], torch.Tensor]:
    """ConVIRT's `text-retrieval/query.csv`: columns `Variable` (class) and `Text`."""
    what = "text query CSV"
    table = read_table(query_csv, what, ["Text", "Variable"])
    labels = class_indices(table["Variable"], classes, f"{what} {query_csv}")
    return [str(t) for t in table["Text"]], labels


def read_candidates(candidate_csv, chexpert_root, classes=CHEXPERT8X200_CLASSES) -> ImageSet:
    """ConVIRT's `candidate.csv`: `Path` and CheXpert's label columns.

    The labels are the rows' values in the columns of `classes` (1 = positive): a candidate
    is relevant to a query when it is positive for the query's class.
    """
    what = "candidate CSV"
    table = read_table(candidate_csv, what, ["Path", *classes])
    positive = torch.from_numpy(table[list(classes)].to_numpy() == 1)
    require_members(positive.sum(0), classes, f"{what} {candidate_csv}")
    paths = _image_paths(table, chexpert_root)
    require_images(paths, f"{what} {candidate_csv}", _CHEXPERT_HINT)
    return ImageSet(paths, positive)


# ---------------------------------------------------------------- CheXpert 5x200 (GLoRIA)

def read_chexpert5x200(csv_file, chexpert_root) -> tuple[ImageSet, list[str]]:
    """`chexpert_5x200.csv`: images, their class (one-hot columns) and report impressions."""
    what = "CheXpert 5x200 CSV"
    table = read_table(csv_file, what, ["Path", "Report Impression", *CHEXPERT5X200_CLASSES])
    labels = one_hot_indices(table, CHEXPERT5X200_CLASSES, f"{what} {csv_file}")
    require_members(torch.bincount(labels, minlength=len(CHEXPERT5X200_CLASSES)), CHEXPERT5X200_CLASSES,
                    f"{what} {csv_file}")
    no_text = np.flatnonzero(table["Report Impression"].isna().to_numpy())
    if len(no_text):
        raise ValueError(f"{what} {csv_file}: {len(no_text)} row(s) have no Report Impression, "
                         f"e.g. data row {no_text[0] + 1}")
    paths = _image_paths(table, chexpert_root)
    require_images(paths, f"{what} {csv_file}", _CHEXPERT_HINT)
    return ImageSet(paths, labels), [str(t) for t in table["Report Impression"]]


# ---------------------------------------------------------------- RSNA Pneumonia

def parse_split_lines(text: str, source) -> list[tuple[str, int]]:
    """Lines `relative/path.dcm label` (label 0 or 1); blank lines are skipped."""
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1"):
            raise ValueError(f"split file {source}, line {number}: expected 'relative/path.dcm 0|1', got {line!r}")
        entries.append((fields[0], int(fields[1])))
    if not entries:
        raise ValueError(f"split file {source} lists no images")
    return entries


def read_rsna_split(split_file, rsna_root) -> ImageSet:
    split_file = require_file(split_file, "split file")
    entries = parse_split_lines(split_file.read_text(), split_file)
    paths = [os.path.join(rsna_root, rel) for rel, _ in entries]
    labels = torch.tensor([label for _, label in entries], dtype=torch.long)
    require_members(torch.bincount(labels, minlength=2), RSNA_CLASSES, f"split file {split_file}")
    require_images(paths, f"split file {split_file}", "set --rsna_root to the folder the listed paths are relative to")
    return ImageSet(paths, labels)


def rsna_loader(split_file, rsna_root, batch_size: int = 16, num_workers: int = 4) -> DataLoader:
    """Batches of (image, label) for `util.evaluation.rsna_zero_shot`, in split-file order."""
    return read_rsna_split(split_file, rsna_root).data_loader(batch_size, num_workers)


def read_rsna_labels(labels_csv) -> pd.DataFrame:
    """Kaggle's `stage_2_train_labels.csv` (one row per box) -> one row per patient, label = max Target."""
    table = read_table(labels_csv, "RSNA labels CSV", ["patientId", "Target"])
    per_patient = table.groupby("patientId", sort=False)["Target"].max().astype(int)
    return per_patient.rename("label").reset_index()


def stratified_split(labels: np.ndarray, fractions, seed: int) -> list[np.ndarray]:
    """Indices of each part; every label is shuffled and cut by `fractions` (sum 1) on its own.

    Parts keep the items' original order.
    """
    fractions = np.asarray(fractions, dtype=float)
    if (fractions < 0).any() or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"fractions must be non-negative and sum to 1, got {fractions.tolist()}")
    rng = np.random.default_rng(seed)
    parts = [[] for _ in fractions]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cuts = np.rint(np.cumsum(fractions)[:-1] * len(members)).astype(int)
        for part, chunk in zip(parts, np.split(members, cuts)):
            part.extend(chunk.tolist())
    return [np.sort(np.asarray(part, dtype=int)) for part in parts]


def write_split_file(path, relative_paths, labels) -> None:
    lines = [f"{rel} {int(label)}\n" for rel, label in zip(relative_paths, labels)]
    Path(path).write_text("".join(lines))
