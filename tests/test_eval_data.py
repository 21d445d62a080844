"""Image loading, benchmark readers (and their errors), RSNA split files and the miniature benchmarks."""
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import prepare_rsna
from util.constants import XRAY_MEAN, XRAY_STD
from util.demo_benchmarks import make_demo_benchmarks
from util.eval_data import (CHEXPERT8X200_CLASSES, eval_transform, load_image, read_candidates, read_chexpert5x200,
                            read_image_queries, read_rsna_labels, read_rsna_split, read_text_queries,
                            stratified_split)


def write_test_dicom(path, pixels: np.ndarray, photometric: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(0).integers(0, 3000, size=(20, 30)).astype(np.uint16)


def expected_grey(pixels):
    """Scaling by the maximum to 0-255 with round-half-to-even, as OpenCV's convertScaleAbs."""
    return np.rint(pixels.astype(np.float32) * np.float32(255.0 / pixels.max())).astype(np.uint8)


def test_dicom_is_scaled_by_its_maximum(tmp_path, pixels):
    write_test_dicom(tmp_path / "a.dcm", pixels, "MONOCHROME2")
    image = load_image(tmp_path / "a.dcm")
    assert image.mode == "RGB" and image.size == (30, 20)
    assert np.array_equal(np.asarray(image)[..., 0], expected_grey(pixels))
    assert np.asarray(image).max() == 255


def test_monochrome1_dicom_is_inverted(tmp_path, pixels):
    write_test_dicom(tmp_path / "m1.dcm", pixels, "MONOCHROME1")
    assert np.array_equal(np.asarray(load_image(tmp_path / "m1.dcm"))[..., 1], 255 - expected_grey(pixels))


def test_black_dicom_stays_black(tmp_path):
    write_test_dicom(tmp_path / "zero.dcm", np.zeros((8, 8), np.uint8), "MONOCHROME2")
    assert np.asarray(load_image(tmp_path / "zero.dcm")).max() == 0


def test_eval_transform_resizes_crops_and_normalises():
    grey = Image.fromarray(np.full((300, 400), 128, np.uint8)).convert("RGB")
    tensor = eval_transform()(grey)
    assert tensor.shape == (3, 224, 224)
    assert torch.allclose(tensor, torch.full_like(tensor, (128 / 255 - XRAY_MEAN) / XRAY_STD), atol=1e-5)


# ---------------------------------------------------------------- readers and their errors

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmarks")
    return root, make_demo_benchmarks(root, per_class=2, image_size=32)


def flag(flags, name):
    return flags[flags.index(name) + 1]


def test_miniature_benchmarks_are_readable(demo):
    root, flags = demo
    img2img, txt2img = flags["CheXpert8X200_img2img"], flags["CheXpert8X200_txt2img"]
    queries = read_image_queries(flag(img2img, "--query_csv"), root)
    candidates = read_candidates(flag(img2img, "--candidate_csv"), root)
    assert len(queries.paths) == len(candidates.paths) == 2 * len(CHEXPERT8X200_CLASSES)
    assert candidates.labels.shape == (16, 8) and (candidates.labels.sum(1) == 1).all()
    texts, text_labels = read_text_queries(flag(txt2img, "--query_csv"))
    assert len(texts) == 16 and text_labels.tolist() == queries.labels.tolist()

    images, impressions = read_chexpert5x200(flag(flags["CheXpert5X200_zeroshot"], "--csv"), root)
    assert images.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert impressions[0].startswith("\n1. ")

    rsna = flags["RSNA_zeroshot"]
    test_split = read_rsna_split(flag(rsna, "--split_file"), flag(rsna, "--rsna_root"))
    assert torch.bincount(test_split.labels).tolist() == [12, 12]
    assert {pydicom.dcmread(p).PhotometricInterpretation for p in test_split.paths} == {"MONOCHROME1", "MONOCHROME2"}
    assert {load_image(p).mode for p in test_split.paths} == {"RGB"}


def test_missing_files_are_named(tmp_path, demo):
    root, flags = demo
    with pytest.raises(FileNotFoundError, match="query CSV .*missing.csv does not exist"):
        read_image_queries(tmp_path / "missing.csv", root)
    with pytest.raises(FileNotFoundError, match=r"images listed in query CSV .* are missing, e\.g\. .*patient"):
        read_image_queries(flag(flags["CheXpert8X200_img2img"], "--query_csv"), tmp_path)
    with pytest.raises(FileNotFoundError, match="split file .*nowhere.txt"):
        read_rsna_split(tmp_path / "nowhere.txt", root)


def test_missing_column_is_named(tmp_path, demo):
    root, flags = demo
    table = pd.read_csv(flag(flags["CheXpert5X200_zeroshot"], "--csv"))
    table.drop(columns=["Edema"]).to_csv(tmp_path / "5x200.csv", index=False)
    with pytest.raises(ValueError, match=r"5x200.csv lacks column\(s\) \['Edema'\]"):
        read_chexpert5x200(tmp_path / "5x200.csv", root)


def test_empty_class_is_an_error(tmp_path, demo):
    root, flags = demo
    candidates = pd.read_csv(flag(flags["CheXpert8X200_img2img"], "--candidate_csv"))
    candidates[candidates["Fracture"] != 1].to_csv(tmp_path / "candidate.csv", index=False)
    with pytest.raises(ValueError, match=r"no item of class\(es\) \['Fracture'\]"):
        read_candidates(tmp_path / "candidate.csv", root)

    table = pd.read_csv(flag(flags["CheXpert5X200_zeroshot"], "--csv"))
    table[table["Edema"] != 1].to_csv(tmp_path / "5x200.csv", index=False)
    with pytest.raises(ValueError, match=r"no item of class\(es\) \['Edema'\]"):
        read_chexpert5x200(tmp_path / "5x200.csv", root)


def test_ambiguous_or_unknown_labels_are_errors(tmp_path, demo):
    root, flags = demo
    table = pd.read_csv(flag(flags["CheXpert5X200_zeroshot"], "--csv"))
    table.loc[3, "Edema"] = 1.0
    table.to_csv(tmp_path / "5x200.csv", index=False)
    with pytest.raises(ValueError, match="1 row.* exactly one positive label.*data row 4"):
        read_chexpert5x200(tmp_path / "5x200.csv", root)

    pd.DataFrame({"Variable": ["Edema", "Flu"], "Text": ["a b", "c d"]}).to_csv(tmp_path / "q.csv", index=False)
    with pytest.raises(ValueError, match=r"unknown class\(es\) \['Flu'\]"):
        read_text_queries(tmp_path / "q.csv")


@pytest.mark.parametrize("content, message", [
    ("a.dcm 1\nb.dcm\n", "line 2: expected"),
    ("a.dcm 2\n", "line 1: expected"),
    ("\n", "lists no images"),
    ("a.dcm 1\nb.dcm 1\n", r"no item of class\(es\) \['no pneumonia'\]"),
])
def test_bad_split_files(tmp_path, content, message):
    (tmp_path / "split.txt").write_text(content)
    with pytest.raises(ValueError, match=message):
        read_rsna_split(tmp_path / "split.txt", tmp_path)


# ---------------------------------------------------------------- RSNA split preparation

def test_rsna_labels_take_the_largest_target_per_patient(tmp_path):
    pd.DataFrame({"patientId": ["p1", "p2", "p2", "p3", "p1"], "x": [None, 1, 2, None, None],
                  "Target": [0, 1, 1, 0, 0]}).to_csv(tmp_path / "labels.csv", index=False)
    patients = read_rsna_labels(tmp_path / "labels.csv")
    assert patients.to_dict("list") == {"patientId": ["p1", "p2", "p3"], "label": [0, 1, 0]}


def test_stratified_split_is_seeded_disjoint_and_stratified():
    labels = np.array([1] * 40 + [0] * 60)
    parts = stratified_split(labels, [0.5, 0.25, 0.25], seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(100))
    assert [int(labels[p].sum()) for p in parts] == [20, 10, 10]
    assert [len(p) for p in parts] == [50, 25, 25]
    assert all(np.array_equal(a, b) for a, b in zip(parts, stratified_split(labels, [0.5, 0.25, 0.25], seed=0)))
    assert not np.array_equal(parts[2], stratified_split(labels, [0.5, 0.25, 0.25], seed=1)[2])
    with pytest.raises(ValueError, match="sum to 1"):
        stratified_split(labels, [0.5, 0.5, 0.5], seed=0)


def test_prepare_rsna_writes_split_files_from_kaggle_labels(tmp_path):
    rows = [{"patientId": f"p{i}", "Target": i % 2} for i in range(20)] + [{"patientId": "p1", "Target": 1}]
    pd.DataFrame(rows).to_csv(tmp_path / "stage_2_train_labels.csv", index=False)
    written = prepare_rsna.main(["--rsna_root", str(tmp_path), "--fractions", "0.5", "0.2", "0.3"])
    assert [p.name for p in written] == ["train_list.txt", "val_list.txt", "test_list.txt"]
    lines = [line for p in written for line in p.read_text().splitlines()]
    assert sorted(lines) == sorted(f"stage_2_train_images/p{i}.dcm {i % 2}" for i in range(20))
    test_lines = (tmp_path / "test_list.txt").read_text().split()
    assert sorted(test_lines[1::2]) == ["0", "0", "0", "1", "1", "1"]


def test_prepare_rsna_copies_published_lists_unchanged(tmp_path):
    published = tmp_path / "published"
    published.mkdir()
    listed = published / "test_list.txt"
    listed.write_text("imgs/a.dcm 1\nimgs/b.dcm 0\n\n")
    written = prepare_rsna.main(["--rsna_root", str(tmp_path / "rsna"), "--from_list", str(listed)])
    assert written[0].read_bytes() == listed.read_bytes()
    with pytest.raises(FileNotFoundError, match="imgs/a.dcm"):
        prepare_rsna.main(["--rsna_root", str(tmp_path / "rsna"), "--check_images",
                           "--from_list", str(listed)])
    (published / "bad_list.txt").write_text("imgs/a.dcm yes\n")
    with pytest.raises(ValueError, match="bad_list.txt, line 1"):
        prepare_rsna.main(["--rsna_root", str(tmp_path / "rsna"), "--from_list", str(published / "bad_list.txt")])
