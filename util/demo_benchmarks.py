"""Miniature evaluation benchmarks in the formats of the real ones, made of synthetic images.

`make_demo_benchmarks(root)` writes under `root`:
  CheXpert-v1.0-small/train/patientNNNNN/study1/view1_frontal.jpg   images (`--chexpert_root root`)
  CheXpert8X200_dataset/image-retrieval/{query,candidate}.csv       ConVIRT's formats
  CheXpert8X200_dataset/text-retrieval/{query,candidate}.csv
  CheXpert5X200_dataset/chexpert_5x200.csv                          GLoRIA's format, with impressions
  RSNA_dataset/stage_2_train_images/*.dcm                            8-bit and 12-bit, some MONOCHROME1
  RSNA_dataset/stage_2_train_labels.csv and {train,val,test}_list.txt (written by prepare_rsna.py)
and returns, per evaluation script, the data flags that point it there. Images of disease
classes carry a synthetic opacity, so the classes differ a little even for an untrained model.
"""
import random
from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

import prepare_rsna
from util.eval_data import CHEXPERT5X200_CLASSES, CHEXPERT8X200_CLASSES
from util.synthetic import save_synthetic_xray, synthetic_xray

# CheXpert's 14 observations, in the column order of its CSVs.
CHEXPERT_LABELS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
                   "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
                   "Pleural Other", "Fracture", "Support Devices")
CHEXPERT_DEMOGRAPHICS = ("Sex", "Age", "Frontal/Lateral", "AP/PA")
NO_OPACITY = {"No Finding", "Fracture", "Pneumothorax"}

# Short findings per class, written for the demo.
FINDINGS = {
    "Atelectasis": ["Linear atelectasis at the left base.", "Bibasilar atelectasis is seen."],
    "Cardiomegaly": ["The heart is enlarged.", "Mild cardiomegaly is present."],
    "Consolidation": ["Dense consolidation in the right lower lobe.", "Airspace consolidation is seen."],
    "Edema": ["Interstitial pulmonary edema is present.", "Mild edema with vascular congestion."],
    "Fracture": ["A displaced rib fracture is seen.", "There is an old clavicle fracture."],
    "No Finding": ["The lungs are clear.", "No acute cardiopulmonary process."],
    "Pleural Effusion": ["A small left pleural effusion.", "Bilateral pleural effusions are present."],
    "Pneumonia": ["Focal opacity concerning for pneumonia.", "Right lower lobe pneumonia."],
    "Pneumothorax": ["A small apical pneumothorax.", "There is a right pneumothorax."],
}
BACKGROUND = ["No pneumothorax.", "The osseous structures are intact.", "Lung volumes are low."]

TOP_K = ["1", "5", "10"]  # the miniature sets have fewer candidates than the real P@50 / P@100 need
RSNA_PATIENTS_PER_LABEL = 24
RSNA_FRACTIONS = ["0.2", "0.3", "0.5"]  # leaves 12 test images per label, enough for 10 folds


class _Writer:
    """Synthetic images with running patient numbers, under one root."""

    def __init__(self, root: Path, seed: int, image_size: int):
        self.root = root
        self.rng = np.random.default_rng(seed)
        self.random = random.Random(seed)
        self.image_size = image_size
        self.next_patient = 1

    def chexpert_image(self, finding: str) -> str:
        relative = f"CheXpert-v1.0-small/train/patient{self.next_patient:05d}/study1/view1_frontal.jpg"
        self.next_patient += 1
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        save_synthetic_xray(path, self.rng, self.image_size, self.image_size, opacity=finding not in NO_OPACITY)
        return relative

    def chexpert_row(self, finding: str) -> dict:
        """A row of CheXpert's CSV layout, positive for `finding` only."""
        row = {"Path": self.chexpert_image(finding), "Sex": self.random.choice(["Female", "Male"]),
               "Age": self.random.randint(20, 90), "Frontal/Lateral": "Frontal",
               "AP/PA": self.random.choice(["AP", "PA"])}
        row.update({label: float(label == finding) for label in CHEXPERT_LABELS})
        return row

    def impression(self, finding: str) -> str:
        """A numbered, multi-line impression as in chexpert_5x200.csv."""
        items = [self.random.choice(FINDINGS[finding]), self.random.choice(BACKGROUND)]
        return "\n" + "".join(f"{i}. {item.lower()}\n" for i, item in enumerate(items, start=1))


def write_dicom(path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 8) -> None:
    """A single-frame greyscale DICOM (secondary capture) with the given pixels."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dicom = Dataset()
    dicom.file_meta = meta
    dicom.SOPClassUID = meta.MediaStorageSOPClassUID
    dicom.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dicom.Modality = "CR"
    dicom.set_pixel_data(pixels, photometric_interpretation=photometric, bits_stored=bits_stored)
    dicom.save_as(path, enforce_file_format=True)


def _write_chexpert8x200(writer: _Writer, per_class: int) -> dict[str, list[str]]:
    data = writer.root / "CheXpert8X200_dataset"
    candidates = pd.DataFrame([writer.chexpert_row(c) for c in CHEXPERT8X200_CLASSES for _ in range(per_class)])
    candidates = candidates[["Path", *CHEXPERT_DEMOGRAPHICS, *CHEXPERT_LABELS]]
    image_queries = pd.DataFrame([{"Variable": c, "Path": writer.chexpert_image(c)}
                                  for c in CHEXPERT8X200_CLASSES for _ in range(per_class)])
    text_queries = pd.DataFrame([{"Variable": c, "Text": writer.random.choice(FINDINGS[c])}
                                 for c in CHEXPERT8X200_CLASSES for _ in range(per_class)])
    flags = {}
    for task, queries in (("image-retrieval", image_queries), ("text-retrieval", text_queries)):
        (data / task).mkdir(parents=True, exist_ok=True)
        queries.to_csv(data / task / "query.csv", index=False)
        candidates.to_csv(data / task / "candidate.csv", index=False)
        flags[task] = ["--chexpert_root", str(writer.root), "--query_csv", str(data / task / "query.csv"),
                       "--candidate_csv", str(data / task / "candidate.csv"), "--top_k", *TOP_K]
    return {"CheXpert8X200_img2img": flags["image-retrieval"], "CheXpert8X200_txt2img": flags["text-retrieval"]}


def _write_chexpert5x200(writer: _Writer, per_class: int) -> dict[str, list[str]]:
    rows = []
    for finding in CHEXPERT5X200_CLASSES:
        for _ in range(per_class):
            rows.append({**writer.chexpert_row(finding), "Report Impression": writer.impression(finding)})
    csv_file = writer.root / "CheXpert5X200_dataset" / "chexpert_5x200.csv"
    csv_file.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(csv_file)  # with the unnamed index column, as GLoRIA's file
    common = ["--chexpert_root", str(writer.root), "--csv", str(csv_file)]
    return {"CheXpert5X200_retrieval": [*common, "--top_k", *TOP_K], "CheXpert5X200_zeroshot": common}


def _write_rsna(writer: _Writer) -> dict[str, list[str]]:
    rsna_root = writer.root / "RSNA_dataset"
    images = rsna_root / "stage_2_train_images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(2 * RSNA_PATIENTS_PER_LABEL):
        patient, target = f"demo-{index:04d}", index % 2
        pixels = synthetic_xray(writer.rng, writer.image_size, writer.image_size, opacity=bool(target))
        if index % 3 == 1:  # 12-bit pixels: the reader rescales by the image maximum
            write_dicom(images / f"{patient}.dcm", pixels.astype(np.uint16) * 16, bits_stored=12)
        elif index % 3 == 2:  # stored inverted: the reader flips MONOCHROME1 back
            write_dicom(images / f"{patient}.dcm", 255 - pixels, photometric="MONOCHROME1")
        else:
            write_dicom(images / f"{patient}.dcm", pixels)
        # Kaggle's table has one row per box: pneumonia patients get two, the others one without a box.
        boxes = [(40.0, 60.0, 30.0, 50.0), (120.0, 70.0, 25.0, 40.0)] if target else [(None,) * 4]
        rows.extend({"patientId": patient, "x": x, "y": y, "width": w, "height": h, "Target": target}
                    for x, y, w, h in boxes)
    pd.DataFrame(rows).to_csv(rsna_root / "stage_2_train_labels.csv", index=False)
    prepare_rsna.main(["--rsna_root", str(rsna_root), "--fractions", *RSNA_FRACTIONS, "--check_images"])
    return {"RSNA_zeroshot": ["--rsna_root", str(rsna_root), "--split_file", str(rsna_root / "test_list.txt")]}


def make_demo_benchmarks(root, seed: int = 0, per_class: int = 3, image_size: int = 128) -> dict[str, list[str]]:
    """Write the miniature benchmarks under `root`; return each script's data flags.

    Keys are the script names (`CheXpert8X200_img2img`, `CheXpert8X200_txt2img`,
    `CheXpert5X200_retrieval`, `CheXpert5X200_zeroshot`, `RSNA_zeroshot`); a script runs on
    its miniature set with `main(flags + ["--checkpoint", ..., "--text_encoder", ...])`.
    """
    writer = _Writer(Path(root), seed, image_size)
    return {**_write_chexpert8x200(writer, per_class), **_write_chexpert5x200(writer, per_class),
            **_write_rsna(writer)}
