"""The pre-training dataset: images, pairing of augmentations, report text, MLM masking, bad inputs."""
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from util.constants import REPORT_MAX_LENGTH, XRAY_MEAN, XRAY_STD
from util.demo_data import make_demo_mimic
from util.pretrain_data import (IGNORE_INDEX, REQUIRED_COLUMNS, PretrainDataset, collate_pretrain, is_missing_view,
                                mask_tokens, read_pretrain_csv, shuffle_sentences, split_sentences)
from util.text_encoder import load_tokenizer

REPORT = "The lungs are clear. Heart size is normal. No pleural effusion or pneumothorax is seen."


@pytest.fixture(scope="module")
def tokenizer(cxr_bert_dir):
    return load_tokenizer(cxr_bert_dir)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return make_demo_mimic(tmp_path_factory.mktemp("demo"), n_studies=8, image_size=48)


def write_csv(directory, rows) -> str:
    path = directory / "train.csv"
    pd.DataFrame(rows, columns=list(REQUIRED_COLUMNS)).to_csv(path, index=False)
    return path


def row(frontal, lateral="-1", prior_frontal="-1", prior_lateral="-1", report=REPORT):
    return [frontal, lateral, prior_frontal, prior_lateral, report]


def asymmetric_image(path, size=(60, 50)):
    """A grey gradient with a bright block off-centre, so rotations and shifts show."""
    width, height = size
    pixels = np.tile(np.linspace(40, 200, width, dtype=np.float32), (height, 1))
    pixels[5:20, 8:22] = 250
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path.name


# ----------------------------------------------------------------------------- batches

def test_batch_keys_shapes_and_dtypes(demo_dir, tokenizer):
    dataset = PretrainDataset(demo_dir / "train.csv", tokenizer)
    batch = next(iter(DataLoader(dataset, batch_size=4, collate_fn=collate_pretrain)))
    assert batch["img"].shape == (4, 3, 448, 448)
    for key in ("a_img", "l_img", "la_img"):
        assert batch[key].shape == (4, 3, 224, 224)
        assert batch[key].dtype == torch.float32
    for key in ("ids", "inputs", "labels", "attention_mask"):
        assert batch[key].shape == (4, REPORT_MAX_LENGTH)
        assert batch[key].dtype == torch.long
    # Grayscale ×3: the three channels are the same image.
    assert torch.equal(batch["img"][:, 0], batch["img"][:, 2])
    assert torch.equal(batch["attention_mask"], (batch["ids"] != tokenizer.pad_token_id).long())
    assert (batch["ids"][:, 0] == tokenizer.cls_token_id).all()


def test_missing_views_are_zero_and_present_views_are_not(demo_dir, tokenizer):
    dataset = PretrainDataset(demo_dir / "train.csv", tokenizer, input_size=32)
    table = pd.read_csv(demo_dir / "train.csv", dtype=str)
    columns = {"a_img": "auxview_image_path", "l_img": "last_image_path", "la_img": "last_auxview_image_path"}
    assert all((table[column] == "-1").any() for column in columns.values()), "the demo set should lack some views"
    for index in range(len(dataset)):
        sample = dataset[index]
        assert sample["img"].shape == (3, 64, 64)
        for key, column in columns.items():
            assert sample[key].shape == (3, 32, 32)
            assert (sample[key] == 0).all() == (table[column][index] == "-1")


def test_constant_grey_image_maps_to_its_normalised_value(tmp_path, tokenizer):
    Image.new("L", (70, 90), 128).save(tmp_path / "grey.png")
    dataset = PretrainDataset(write_csv(tmp_path, [row("grey.png", "grey.png")]), tokenizer, is_train=False)
    sample = dataset[0]
    expected = (128 / 255 - XRAY_MEAN) / XRAY_STD
    assert torch.allclose(sample["img"], torch.full((3, 448, 448), expected), atol=1e-6)
    assert torch.allclose(sample["a_img"], torch.full((3, 224, 224), expected), atol=1e-6)
    assert (sample["l_img"] == 0).all() and (sample["la_img"] == 0).all()


def test_eval_mode_is_deterministic_except_masking(demo_dir, tokenizer):
    dataset = PretrainDataset(demo_dir / "train.csv", tokenizer, is_train=False, input_size=32)
    first, second = dataset[0], dataset[0]
    for key in ("img", "a_img", "ids", "attention_mask"):
        assert torch.equal(first[key], second[key])
    expected_ids = tokenizer(pd.read_csv(demo_dir / "train.csv")["report"][0], padding="max_length",
                             max_length=REPORT_MAX_LENGTH, truncation=True)["input_ids"]
    assert first["ids"].tolist() == expected_ids


# ----------------------------------------------------------------------------- paired augmentation

def test_prior_views_replay_the_augmentation_of_their_current_view(tmp_path, tokenizer):
    image = asymmetric_image(tmp_path / "view.png")
    dataset = PretrainDataset(write_csv(tmp_path, [row(image, image, image, image)]), tokenizer)
    torch.manual_seed(0)
    first, second = dataset[0], dataset[0]

    assert torch.equal(first["a_img"], first["la_img"])
    assert not torch.equal(first["a_img"], second["a_img"]), "two calls should draw different augmentations"

    # The frontal pair differs in size only: the 448 view pooled to 224 matches its own prior
    # far better than another call's prior.
    def distance(big, small):
        return (torch.nn.functional.avg_pool2d(big, 2) - small).abs().mean().item()

    assert distance(first["img"], first["l_img"]) < 0.1 * distance(first["img"], second["l_img"])
    assert distance(second["img"], second["l_img"]) < 0.1 * distance(second["img"], first["l_img"])


def test_samples_follow_torch_manual_seed(tmp_path, tokenizer):
    image = asymmetric_image(tmp_path / "view.png")
    dataset = PretrainDataset(write_csv(tmp_path, [row(image, image, image, image)]), tokenizer)
    torch.manual_seed(7)
    first = dataset[0]
    torch.manual_seed(7)
    again = dataset[0]
    for key in first:
        assert torch.equal(first[key], again[key]), key


# ----------------------------------------------------------------------------- report text

def test_sentences_split_at_full_stops_and_question_marks_but_not_after_abbreviations():
    text = ("Discussed with Dr. Smith at 10 a.m. today. Is there an effusion?  Yes, small. Devices, e.g. a "
            "pacemaker, vs. prior are unchanged. Nodule measures approx. 4.5 cm.\nHeart is normal.")
    assert split_sentences(text) == [
        "Discussed with Dr. Smith at 10 a.m. today.",
        "Is there an effusion?",
        "Yes, small.",
        "Devices, e.g. a pacemaker, vs. prior are unchanged.",
        "Nodule measures approx. 4.5 cm.",
        "Heart is normal.",
    ]


def test_shuffling_permutes_whole_sentences():
    text = "One is here. Two i.e. the second. Three? Four is last."
    sentences = split_sentences(text)
    torch.manual_seed(0)
    orders = set()
    for _ in range(30):
        shuffled = shuffle_sentences(text)
        assert sorted(split_sentences(shuffled)) == sorted(sentences)
        orders.add(shuffled)
    assert len(orders) > 5


def test_training_samples_shuffle_the_report(tmp_path, tokenizer):
    image = asymmetric_image(tmp_path / "view.png")
    dataset = PretrainDataset(write_csv(tmp_path, [row(image)]), tokenizer, input_size=16)
    torch.manual_seed(0)
    token_orders = {tuple(dataset[0]["ids"].tolist()) for _ in range(20)}
    assert len(token_orders) > 1, "the token order never changed (or every word became [UNK])"
    assert all(sorted(ids) == sorted(next(iter(token_orders))) for ids in token_orders)


# ----------------------------------------------------------------------------- MLM masking

def test_masking_rule():
    special = torch.tensor([0, 1, 2, 3, 4])  # [PAD] [UNK] [CLS] [SEP] [MASK]
    mask_id = 4
    ids = torch.randint(5, 200, (400, 128))
    ids[:, 0], ids[:, 100], ids[:, 101:] = 2, 3, 0
    ids[:, 10], ids[:, 20] = 1, 4
    torch.manual_seed(0)
    inputs, labels = mask_tokens(ids, special, mask_id, probability=0.5)

    chosen = labels != IGNORE_INDEX
    eligible = ~torch.isin(ids, special)
    assert not (chosen & ~eligible).any(), "special tokens must never be chosen"
    assert (inputs[chosen] == mask_id).all(), "chosen tokens are always replaced by [MASK]"
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(inputs[~chosen], ids[~chosen])
    assert abs(chosen.sum().item() / eligible.sum().item() - 0.5) < 0.01


def test_dataset_masks_only_report_tokens(demo_dir, tokenizer):
    dataset = PretrainDataset(demo_dir / "train.csv", tokenizer, input_size=16)
    special = torch.tensor(tokenizer.all_special_ids)
    torch.manual_seed(0)
    chosen_total = eligible_total = 0
    for _ in range(3):
        for index in range(len(dataset)):
            sample = dataset[index]
            chosen = sample["labels"] != IGNORE_INDEX
            eligible = ~torch.isin(sample["ids"], special)
            assert not (chosen & ~eligible).any()
            assert (sample["inputs"][chosen] == tokenizer.mask_token_id).all()
            assert torch.equal(sample["inputs"][~chosen], sample["ids"][~chosen])
            chosen_total += chosen.sum().item()
            eligible_total += eligible.sum().item()
    assert eligible_total > 500, "reports tokenised to special tokens only: does load_tokenizer read vocab.txt?"
    assert 0.42 < chosen_total / eligible_total < 0.58


# ----------------------------------------------------------------------------- bad inputs

def test_missing_view_marker_accepts_text_numbers_and_empty_cells():
    assert all(is_missing_view(value) for value in ("-1", "-1.0", " -1", ""))
    assert not any(is_missing_view(value) for value in ("1", "files/a.jpg", "-1.jpg"))


def test_numeric_minus_one_marks_a_missing_view(tmp_path, tokenizer):
    image = asymmetric_image(tmp_path / "view.png")
    (tmp_path / "train.csv").write_text(
        "image_path,auxview_image_path,last_image_path,last_auxview_image_path,report\n"
        f"{image},-1.0,-1,{image},{REPORT}\n")
    table = read_pretrain_csv(tmp_path / "train.csv")
    assert table.iloc[0, 1:3].isna().all()
    assert table.iloc[0, 3] == str(tmp_path / image)


def test_csv_without_required_columns_names_file_and_columns(tmp_path):
    path = tmp_path / "train.csv"
    pd.DataFrame({"image_path": ["a.jpg"], "report": [REPORT], "auxview_image_path": ["-1"]}).to_csv(path, index=False)
    with pytest.raises(ValueError) as error:
        read_pretrain_csv(path)
    message = str(error.value)
    assert str(path) in message
    assert message.split("lacks the column(s) ")[1].split(";")[0] == "last_image_path, last_auxview_image_path"


def test_row_without_frontal_image_is_rejected(tmp_path):
    image = asymmetric_image(tmp_path / "view.png")
    with pytest.raises(ValueError, match="no current frontal image"):
        read_pretrain_csv(write_csv(tmp_path, [row(image), row("-1", image)]))


def test_nonexistent_images_are_reported_with_count_and_first_paths(tmp_path, tokenizer):
    image = asymmetric_image(tmp_path / "view.png")
    rows = [row(image), row("gone_1.jpg", image), row(image, "gone_2.jpg", "gone_3.jpg"), row(image, image)]
    with pytest.raises(ValueError, match="3 image file") as error:
        PretrainDataset(write_csv(tmp_path, rows), tokenizer)
    message = str(error.value)
    assert str(tmp_path / "gone_1.jpg") in message and str(tmp_path / "gone_3.jpg") in message
    assert "--skip_missing" in message


def test_skip_missing_drops_rows_with_a_warning(tmp_path, tokenizer):
    image = asymmetric_image(tmp_path / "view.png")
    rows = [row(image), row("gone_1.jpg", image), row(image, "gone_2.jpg", "gone_3.jpg"), row(image, image)]
    with pytest.warns(UserWarning, match="dropped 2 of 4 row"):
        dataset = PretrainDataset(write_csv(tmp_path, rows), tokenizer, skip_missing=True, input_size=16)
    assert len(dataset) == 2
    assert (dataset[1]["a_img"] != 0).any()


def test_absolute_paths_are_kept(tmp_path, tokenizer):
    image = asymmetric_image(tmp_path / "view.png")
    data_dir = tmp_path / "elsewhere"
    data_dir.mkdir()
    table = read_pretrain_csv(write_csv(data_dir, [row(str(tmp_path / image))]))
    assert table.loc[0, "image_path"] == str(tmp_path / image)


@pytest.mark.parametrize("content", [b"not an image at all", "truncated"])
def test_unreadable_image_names_the_file(tmp_path, tokenizer, content):
    asymmetric_image(tmp_path / "good.jpg")
    if content == "truncated":
        content = (tmp_path / "good.jpg").read_bytes()[:200]
    (tmp_path / "bad.jpg").write_bytes(content)
    dataset = PretrainDataset(write_csv(tmp_path, [row("good.jpg", "bad.jpg")]), tokenizer, input_size=16)
    with pytest.raises(OSError, match="bad.jpg"):
        dataset[0]
