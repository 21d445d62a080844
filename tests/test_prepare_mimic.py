"""prepare_mimic.py on a miniature of the MIMIC-CXR-JPG layout."""
import pandas as pd
import pytest
from PIL import Image

import prepare_mimic
from prepare_mimic import findings_and_impression, prepare
from util.demo_data import MimicStudy, mimic_report_text, write_mimic_layout
from util.pretrain_data import PretrainDataset
from util.text_encoder import load_tokenizer

SUBJECT, OTHER_SUBJECT, TEST_SUBJECT = 10000001, 10000002, 11000003


def report(findings: str, impression: str = "No acute process.") -> str:
    return mimic_report_text(findings, impression)


def image(subject: int, study: int, index: int, root: str = "") -> str:
    return f"{root}files/p{str(subject)[:2]}/p{subject}/s{study}/{study}-{index:02d}.jpg"


# Listed out of time order: the script must sort by StudyDate and StudyTime.
STUDIES = [
    MimicStudy(SUBJECT, 50000002, 21800101, 120000.0, ("AP", "PA", "LL"), report("Second study.")),
    MimicStudy(SUBJECT, 50000001, 21800101, 93000.5, ("PA", "LATERAL"), report("First study.")),
    MimicStudy(SUBJECT, 50000003, 21800201, 80000.0, ("LATERAL",), report("Lateral only.")),
    MimicStudy(SUBJECT, 50000004, 21800301, 80000.0, ("PA", "PA"), report("Two frontals.")),
    MimicStudy(SUBJECT, 50000005, 21800401, 80000.0, ("PA", "LATERAL"), None),
    MimicStudy(SUBJECT, 50000006, 21800501, 80000.0, ("PA",), " FINAL REPORT\n EXAMINATION: CHEST\n WET READ: ok\n"),
    MimicStudy(SUBJECT, 50000007, 21800601, 80000.0, ("AP",), report("After a skipped study.")),
    MimicStudy(OTHER_SUBJECT, 50000010, 21900101, 80000.0, ("PA", "LATERAL"), report("Validation study."), "validate"),
    MimicStudy(TEST_SUBJECT, 50000020, 21900101, 80000.0, ("PA",), report("Test study."), "test"),
]


@pytest.fixture(scope="module")
def mimic_root(tmp_path_factory):
    return write_mimic_layout(tmp_path_factory.mktemp("mimic"), STUDIES, image_size=40)


@pytest.fixture(scope="module")
def prepared(mimic_root, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("prepared")
    summary = prepare(mimic_root, output_dir)
    return output_dir, summary


def read(path) -> list[dict]:
    return pd.read_csv(path, dtype=str, keep_default_na=False).to_dict("records")


def test_train_rows_pick_views_priors_and_report_sections(prepared, mimic_root):
    output_dir, _ = prepared
    root = f"{mimic_root.resolve()}/"  # outside the output directory: absolute paths
    expected = [
        (image(SUBJECT, 50000001, 0, root), image(SUBJECT, 50000001, 1, root), "-1", "-1",
         "First study. No acute process."),
        # PA preferred over AP; prior = the earlier study of the same day.
        (image(SUBJECT, 50000002, 1, root), image(SUBJECT, 50000002, 2, root),
         image(SUBJECT, 50000001, 0, root), image(SUBJECT, 50000001, 1, root), "Second study. No acute process."),
        # Two PA images: the smaller dicom_id; the prior (skipped itself for lacking a frontal) lends its lateral.
        (image(SUBJECT, 50000004, 0, root), "-1", "-1", image(SUBJECT, 50000003, 0, root),
         "Two frontals. No acute process."),
        # Studies skipped for their report still serve as priors.
        (image(SUBJECT, 50000007, 0, root), "-1", image(SUBJECT, 50000006, 0, root), "-1",
         "After a skipped study. No acute process."),
    ]
    rows = read(output_dir / "train.csv")
    assert [tuple(r.values()) for r in rows] == expected
    assert list(rows[0]) == ["image_path", "auxview_image_path", "last_image_path", "last_auxview_image_path",
                             "report"]


def test_validate_split_goes_to_valid_csv_and_test_split_is_left_out(prepared, mimic_root):
    output_dir, summary = prepared
    rows = read(output_dir / "valid.csv")
    assert len(rows) == 1
    assert rows[0]["image_path"] == image(OTHER_SUBJECT, 50000010, 0, f"{mimic_root.resolve()}/")
    assert rows[0]["report"] == "Validation study. No acute process."
    assert summary["test studies (not written)"] == 1


def test_summary_counts_skipped_studies(prepared):
    _, summary = prepared
    assert summary["skipped: no frontal (PA/AP) image"] == 1
    assert summary["skipped: no report file"] == 1
    assert summary["skipped: report without FINDINGS/IMPRESSION text"] == 1
    assert summary["train: studies written to train.csv"] == 4
    assert summary["train: with lateral"] == 2
    assert summary["train: with prior study"] == 3


def test_findings_and_impression_are_joined_in_order_with_whitespace_normalised():
    text = (" FINAL REPORT\n INDICATION: Cough.\n\n FINDINGS:  Heart is\n   normal.\n Lungs clear.\n\n"
            " IMPRESSION:\n\n 1.  No effusion.\n\n NOTIFICATION: Dr. ___ was paged.\n")
    assert findings_and_impression(text) == "Heart is normal. Lungs clear. 1. No effusion."
    assert findings_and_impression(" FINDINGS AND IMPRESSION: All clear.\n") == "All clear."
    assert findings_and_impression(" FINAL REPORT\n EXAMINATION: Chest.\n") == ""


def test_resize_writes_downscaled_copies_and_skips_them_on_rerun(mimic_root, tmp_path, cxr_bert_dir):
    output_dir = tmp_path / "out"
    summary = prepare(mimic_root, output_dir, resize=32)
    rows = read(output_dir / "train.csv")
    paths = [r[c] for r in rows for c in list(r)[:4] if r[c] != "-1"]
    assert all(p.startswith("images_32/files/") for p in paths)  # relative to the data directory
    assert summary["images resized now"] == len(set(paths)) + 2  # + the validation study's two views
    for path in paths:
        with Image.open(output_dir / path) as resized:
            # Portrait 40×48 source: shorter side 32, longer int(32 * 48 / 40) as torchvision's Resize.
            assert resized.size == (32, 38)
            assert resized.format == "JPEG" and resized.mode == "L"

    written = {p: (output_dir / p).stat().st_mtime_ns for p in paths}
    assert prepare(mimic_root, output_dir, resize=32)["images resized now"] == 0
    assert {p: (output_dir / p).stat().st_mtime_ns for p in paths} == written

    dataset = PretrainDataset(output_dir / "train.csv", load_tokenizer(cxr_bert_dir), input_size=16)
    assert len(dataset) == 4 and dataset[1]["la_img"].shape == (3, 16, 16)


def test_images_inside_the_output_directory_get_relative_paths(mimic_root):
    summary = prepare(mimic_root, mimic_root)
    rows = read(mimic_root / "train.csv")
    assert rows[0]["image_path"] == image(SUBJECT, 50000001, 0)
    assert summary["train: studies written to train.csv"] == 4


def test_command_line_prints_the_summary(mimic_root, tmp_path, capsys):
    prepare_mimic.main(["--mimic_root", str(mimic_root), "--output_dir", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "skipped: no report file: 1" in printed
    assert "train: studies written to train.csv: 4" in printed
    assert (tmp_path / "train.csv").is_file() and (tmp_path / "valid.csv").is_file()


def test_missing_metadata_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="mimic-cxr-2.0.0-metadata.csv"):
        prepare(tmp_path, tmp_path / "out")


def test_metadata_without_required_columns_is_named(mimic_root, tmp_path):
    root = tmp_path / "mimic"
    root.mkdir()
    pd.read_csv(mimic_root / prepare_mimic.METADATA_FILE).drop(columns=["StudyTime"]).to_csv(
        root / prepare_mimic.METADATA_FILE, index=False)
    (root / prepare_mimic.SPLIT_FILE).write_bytes((mimic_root / prepare_mimic.SPLIT_FILE).read_bytes())
    with pytest.raises(ValueError, match="metadata.csv lacks the column.s. StudyTime"):
        prepare(root, tmp_path / "out")


def test_missing_source_image_is_named_when_resizing(mimic_root, tmp_path):
    root = tmp_path / "mimic"
    root.mkdir()
    for name in (prepare_mimic.METADATA_FILE, prepare_mimic.SPLIT_FILE):
        (root / name).write_bytes((mimic_root / name).read_bytes())
    with pytest.raises(FileNotFoundError, match="50000001-00.jpg"):
        prepare(root, tmp_path / "out", reports_root=mimic_root, resize=32)
