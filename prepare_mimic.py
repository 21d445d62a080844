"""Build ALTA's pre-training CSVs (train.csv, valid.csv) from MIMIC-CXR-JPG.

One row per study of the official `train` (→ train.csv) and `validate` (→ valid.csv) splits:
  image_path               the study's frontal image (PA preferred over AP, then the smallest dicom_id)
  auxview_image_path       its lateral image (LATERAL preferred over LL, then the smallest dicom_id)
  last_image_path          the frontal image of the prior study
  last_auxview_image_path  the lateral image of the prior study
  report                   the FINDINGS and IMPRESSION sections of the report, whitespace normalised
The prior study is the same subject's latest study with a frontal or lateral image taken strictly
earlier (by StudyDate, StudyTime). `-1` marks a missing view. Studies without a frontal image or
without report text are skipped and counted in the summary.

Example:
    python prepare_mimic.py --mimic_root /data/mimic-cxr-jpg --reports_root /data/mimic-cxr \\
        --output_dir /data/alta --resize 512
"""
import argparse
import os
import re
import shutil
from collections import Counter
from multiprocessing import Pool
from pathlib import Path

import pandas as pd
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF
from tqdm import tqdm

from util.pretrain_data import FRONTAL, LATERAL, PRIOR_FRONTAL, PRIOR_LATERAL, REPORT_COLUMN

METADATA_FILE = "mimic-cxr-2.0.0-metadata.csv"
SPLIT_FILE = "mimic-cxr-2.0.0-split.csv"
METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime")
SPLIT_COLUMNS = ("dicom_id", "split")
FRONTAL_VIEWS = ("PA", "AP")  # in order of preference
LATERAL_VIEWS = ("LATERAL", "LL")
OUTPUT_CSVS = {"train": "train.csv", "validate": "valid.csv"}
MISSING = "-1"
JPEG_QUALITY = 95
REPORT_SECTIONS = ("FINDINGS", "IMPRESSION")
# A section header is an upper-case name at the start of a line followed by a colon ("FINDINGS:").
_SECTION_HEADER = re.compile(r"^[ \t]*([A-Z][A-Z &/()-]*?)[ \t]*:", re.MULTILINE)


# ----------------------------------------------------------------------------- inputs

def find_table(root: Path, name: str) -> Path:
    """`name` or its gzipped form (as PhysioNet ships it) under `root`."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{root / name} (or .gz) does not exist. --mimic_root must be the MIMIC-CXR-JPG "
                            f"directory holding {METADATA_FILE}, {SPLIT_FILE} and files/.")


def read_table(path: Path, columns) -> pd.DataFrame:
    table = pd.read_csv(path, dtype={"dicom_id": str})
    absent = [column for column in columns if column not in table.columns]
    if absent:
        raise ValueError(f"{path} lacks the column(s) {', '.join(absent)}; is it the official MIMIC-CXR-JPG file?")
    return table[list(columns)]


def read_images(metadata_path: Path, split_path: Path) -> pd.DataFrame:
    """One row per image: dicom_id, subject_id, study_id, view, date, time, split."""
    images = read_table(metadata_path, METADATA_COLUMNS).merge(read_table(split_path, SPLIT_COLUMNS), on="dicom_id")
    return images.rename(columns={"ViewPosition": "view", "StudyDate": "date", "StudyTime": "time"}).assign(
        view=lambda t: t["view"].fillna("").str.upper())


def image_relpath(subject_id: int, study_id: int, dicom_id: str) -> str:
    return f"files/p{str(subject_id)[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg"


def report_relpath(subject_id: int, study_id: int) -> str:
    return f"files/p{str(subject_id)[:2]}/p{subject_id}/s{study_id}.txt"


# ----------------------------------------------------------------------------- studies

def pick_images(images: pd.DataFrame, views: tuple[str, ...]) -> dict[int, str]:
    """study_id → dicom_id of the study's image of the first available view in `views`
    (ties: smallest dicom_id)."""
    candidates = images[images["view"].isin(views)].assign(rank=lambda t: t["view"].map(views.index))
    chosen = candidates.sort_values(["study_id", "rank", "dicom_id"]).drop_duplicates("study_id")
    return dict(zip(chosen["study_id"], chosen["dicom_id"]))


def study_table(images: pd.DataFrame) -> pd.DataFrame:
    """One row per study (subject_id, study_id, split, date, time) at its earliest acquisition
    time, ordered by subject and time."""
    first = images.sort_values(["subject_id", "date", "time", "dicom_id"]).drop_duplicates("study_id")
    return first[["subject_id", "study_id", "split", "date", "time"]].reset_index(drop=True)


def find_priors(studies: pd.DataFrame, candidates: set[int]) -> dict[int, int]:
    """study_id → the same subject's latest study among `candidates` taken strictly earlier."""
    prior_of = {}
    for _, rows in studies.sort_values(["subject_id", "date", "time", "study_id"]).groupby("subject_id", sort=False):
        latest_earlier = latest = latest_time = None
        for study_id, date, time in zip(rows["study_id"], rows["date"], rows["time"]):
            if latest is not None and latest_time < (date, time):
                latest_earlier = latest
            if latest_earlier is not None:
                prior_of[study_id] = latest_earlier
            if study_id in candidates:
                latest, latest_time = study_id, (date, time)
    return prior_of


def findings_and_impression(text: str) -> str:
    """The FINDINGS and IMPRESSION sections (any header containing those words), in report
    order, joined with whitespace normalised; empty when the report has neither."""
    headers = list(_SECTION_HEADER.finditer(text))
    sections = []
    for header, following in zip(headers, headers[1:] + [None]):
        if any(name in header.group(1) for name in REPORT_SECTIONS):
            end = following.start() if following else len(text)
            sections.append(text[header.end():end])
    return " ".join(" ".join(sections).split())


# ----------------------------------------------------------------------------- rows

def build_rows(images: pd.DataFrame, reports_root: Path, image_path) -> tuple[dict[str, list[dict]], Counter]:
    """CSV rows per split and a summary of what was kept and skipped.

    image_path(subject_id, study_id, dicom_id) gives the text written in the CSV for an image.
    """
    frontal = pick_images(images, FRONTAL_VIEWS)
    lateral = pick_images(images, LATERAL_VIEWS)
    studies = study_table(images)
    priors = find_priors(studies, candidates=set(frontal) | set(lateral))
    subject_of = dict(zip(studies["study_id"], studies["subject_id"]))

    def view(study_id, chosen):
        dicom_id = chosen.get(study_id)
        return MISSING if dicom_id is None else image_path(subject_of[study_id], study_id, dicom_id)

    rows = {split: [] for split in OUTPUT_CSVS}
    summary = Counter()
    for study in tqdm(studies.itertuples(index=False), total=len(studies), desc="reading reports", unit="study"):
        if study.split not in OUTPUT_CSVS:
            summary[f"{study.split} studies (not written)"] += 1
            continue
        if study.study_id not in frontal:
            summary["skipped: no frontal (PA/AP) image"] += 1
            continue
        report_file = reports_root / report_relpath(study.subject_id, study.study_id)
        if not report_file.is_file():
            summary["skipped: no report file"] += 1
            continue
        report = findings_and_impression(report_file.read_text(errors="replace"))
        if not report:
            summary["skipped: report without FINDINGS/IMPRESSION text"] += 1
            continue
        prior = priors.get(study.study_id)
        row = {FRONTAL: view(study.study_id, frontal), LATERAL: view(study.study_id, lateral),
               PRIOR_FRONTAL: view(prior, frontal), PRIOR_LATERAL: view(prior, lateral), REPORT_COLUMN: report}
        rows[study.split].append(row)
        summary[f"{study.split}: with lateral"] += row[LATERAL] != MISSING
        summary[f"{study.split}: with prior study"] += prior is not None
    return rows, summary


# ----------------------------------------------------------------------------- resizing

def resize_shorter_side(source: Path, target: Path, size: int) -> None:
    """Write `source` with its shorter side scaled down to `size` (bicubic, JPEG quality 95), by the
    same size rule as torchvision's Resize; smaller images are copied as they are. Written
    through a temporary file, so an interrupted run never leaves a truncated image behind."""
    if not source.is_file():
        raise FileNotFoundError(f"image {source} does not exist; is the MIMIC-CXR-JPG download complete?")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        with Image.open(source) as image:
            if min(image.size) <= size:
                shutil.copyfile(source, partial)
            else:
                TF.resize(image, size, InterpolationMode.BICUBIC).save(partial, format="JPEG", quality=JPEG_QUALITY)
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise OSError(f"cannot resize image {source} ({err}). Replace the file and run again.") from err
    os.replace(partial, target)


def _resize_job(job) -> None:
    resize_shorter_side(*job)


def resize_images(relpaths, source_root: Path, target_root: Path, size: int, num_workers: int = 1) -> int:
    """Resize every image not yet written under `target_root`; returns how many were written."""
    jobs = [(source_root / rel, target_root / rel, size) for rel in sorted(relpaths)
            if not (target_root / rel).is_file()]
    progress = tqdm(total=len(jobs), desc=f"resizing to {size}", unit="img")
    if num_workers > 1 and len(jobs) > 1:
        with Pool(num_workers) as pool:
            for _ in pool.imap_unordered(_resize_job, jobs, chunksize=16):
                progress.update()
    else:
        for job in jobs:
            _resize_job(job)
            progress.update()
    progress.close()
    return len(jobs)


# ----------------------------------------------------------------------------- driver

def csv_path_text(image_file: Path, output_dir: Path) -> str:
    """Relative to the output directory (the data directory) when inside it, else absolute."""
    try:
        return image_file.relative_to(output_dir).as_posix()
    except ValueError:
        return str(image_file)


def prepare(mimic_root, output_dir, reports_root=None, resize: int = 0, num_workers: int = 1) -> Counter:
    """Write train.csv and valid.csv under `output_dir` (and, with `resize`, the resized images
    under `output_dir/images_<resize>`). Returns the summary counts."""
    mimic_root = Path(mimic_root).resolve()
    output_dir = Path(output_dir).resolve()
    reports_root = Path(reports_root).resolve() if reports_root else mimic_root
    images = read_images(find_table(mimic_root, METADATA_FILE), find_table(mimic_root, SPLIT_FILE))
    image_root = output_dir / f"images_{resize}" if resize else mimic_root
    referenced = set()

    def image_path(subject_id, study_id, dicom_id):
        relpath = image_relpath(subject_id, study_id, dicom_id)
        referenced.add(relpath)
        return csv_path_text(image_root / relpath, output_dir)

    rows, summary = build_rows(images, reports_root, image_path)
    output_dir.mkdir(parents=True, exist_ok=True)
    for split, name in OUTPUT_CSVS.items():
        pd.DataFrame(rows[split], columns=[FRONTAL, LATERAL, PRIOR_FRONTAL, PRIOR_LATERAL, REPORT_COLUMN]).to_csv(
            output_dir / name, index=False)
        summary[f"{split}: studies written to {name}"] = len(rows[split])
    if resize:
        summary["images resized now"] = resize_images(referenced, mimic_root, image_root, resize, num_workers)
    return summary


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mimic_root", required=True,
                        help=f"MIMIC-CXR-JPG directory: {METADATA_FILE}[.gz], {SPLIT_FILE}[.gz] and files/pXX/...")
    parser.add_argument("--reports_root", default=None,
                        help="directory with the reports as files/pXX/pSUBJECT/sSTUDY.txt (from MIMIC-CXR's "
                             "mimic-cxr-reports.zip); default: --mimic_root")
    parser.add_argument("--output_dir", required=True,
                        help="where train.csv and valid.csv go; pass this directory as the training data path. "
                             "Image paths inside it are written relative to it, others absolute.")
    parser.add_argument("--resize", type=int, default=0, metavar="N",
                        help="also write copies with the shorter side scaled to N (512 suits ALTA) under "
                             "OUTPUT_DIR/images_N and point the CSVs at them, so training does not decode "
                             "full-size JPEGs; re-runs skip images already written (default 0: no copies)")
    parser.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="processes for --resize (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    summary = prepare(args.mimic_root, args.output_dir, args.reports_root, args.resize, args.num_workers)
    print(f"Wrote {', '.join(str(Path(args.output_dir) / name) for name in OUTPUT_CSVS.values())}:")
    for key in sorted(summary):
        print(f"  {key}: {summary[key]}")


if __name__ == "__main__":
    main()
