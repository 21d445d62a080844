"""A demo training set in the layout of MIMIC-CXR-JPG, made of synthetic images and reports.

`write_mimic_layout` writes the official files (metadata and split tables, `files/pXX/...`
images and report texts) for a list of studies; `make_demo_mimic` plans a small set of studies
(some without a lateral view, some without a prior study) and runs prepare_mimic on it, so the
demo's `train.csv` comes from the same code path as the real one.
"""
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from prepare_mimic import LATERAL_VIEWS, METADATA_FILE, SPLIT_FILE, image_relpath, prepare, report_relpath
from util.assets import REPORT_SENTENCES, synthetic_report
from util.synthetic import save_synthetic_xray

FIRST_SUBJECT_ID = 10_000_001
FIRST_STUDY_ID = 50_000_001


@dataclass(frozen=True)
class MimicStudy:
    """One study: its images' view positions (one image each) and its report text (None: no file)."""
    subject_id: int
    study_id: int
    date: int  # YYYYMMDD
    time: float  # HHMMSS.fff
    views: tuple[str, ...]
    report: str | None
    split: str = "train"

    def dicom_ids(self) -> list[str]:
        return [f"{self.study_id}-{index:02d}" for index in range(len(self.views))]


def mimic_report_text(findings: str, impression: str) -> str:
    """A report laid out like MIMIC-CXR's free-text reports."""
    return ("                                 FINAL REPORT\n"
            " EXAMINATION:  CHEST (PA AND LAT)\n \n"
            " INDICATION:  ___ with shortness of breath.\n \n"
            " COMPARISON:  None.\n \n"
            f" FINDINGS:\n \n {findings}\n \n"
            f" IMPRESSION:\n \n {impression}\n")


def write_mimic_layout(root, studies: list[MimicStudy], *, image_size: int = 64, seed: int = 0) -> Path:
    """Write metadata and split CSVs, one synthetic JPEG per view (portrait, shorter side
    `image_size`) and the report texts under `root`, as MIMIC-CXR-JPG lays them out."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    metadata, split = [], []
    for study in studies:
        for dicom_id, view in zip(study.dicom_ids(), study.views):
            image_file = root / image_relpath(study.subject_id, study.study_id, dicom_id)
            image_file.parent.mkdir(parents=True, exist_ok=True)
            save_synthetic_xray(image_file, rng, height=round(image_size * 1.2), width=image_size,
                                lateral=view in LATERAL_VIEWS)
            metadata.append({"dicom_id": dicom_id, "subject_id": study.subject_id, "study_id": study.study_id,
                             "PerformedProcedureStepDescription": "CHEST (PA AND LAT)", "ViewPosition": view,
                             "Rows": round(image_size * 1.2), "Columns": image_size,
                             "StudyDate": study.date, "StudyTime": study.time})
            split.append({"dicom_id": dicom_id, "study_id": study.study_id, "subject_id": study.subject_id,
                          "split": study.split})
        if study.report is not None:
            report_file = root / report_relpath(study.subject_id, study.study_id)
            report_file.parent.mkdir(parents=True, exist_ok=True)
            report_file.write_text(study.report)
    pd.DataFrame(metadata).to_csv(root / METADATA_FILE, index=False)
    pd.DataFrame(split).to_csv(root / SPLIT_FILE, index=False)
    return root


def plan_demo_studies(n_studies: int, seed: int = 0) -> list[MimicStudy]:
    """Subjects with one to three studies a month apart (so later studies have a prior); every
    fourth study has no lateral view, and the first ones alternate PA and AP."""
    rng = random.Random(seed)
    studies = []
    subject_id = FIRST_SUBJECT_ID
    while len(studies) < n_studies:
        n_visits = 1 + (subject_id - FIRST_SUBJECT_ID) % 3
        for visit in range(min(n_visits, n_studies - len(studies))):
            index = len(studies)
            frontal = "PA" if index % 2 == 0 else "AP"
            views = (frontal,) if index % 4 == 3 else (frontal, "LATERAL")
            report = mimic_report_text(synthetic_report(rng), rng.choice(REPORT_SENTENCES))
            studies.append(MimicStudy(subject_id, FIRST_STUDY_ID + index, 21800101 + 100 * visit,
                                      90000.0 + index, views, report))
        subject_id += 1
    return studies


def make_demo_mimic(root, n_studies: int = 24, seed: int = 0, image_size: int = 256) -> Path:
    """Write a demo data directory: MIMIC-CXR-JPG-like raw files and the `train.csv` (relative
    paths) that prepare_mimic builds from them. Returns the directory (the training data path)."""
    root = Path(root)
    write_mimic_layout(root, plan_demo_studies(n_studies, seed), image_size=image_size, seed=seed)
    prepare(root, root)
    return root
