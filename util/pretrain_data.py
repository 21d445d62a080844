"""Pre-training data: the temporal-multiview `train.csv` of MIMIC-CXR (SPEC §4).

Each row is a study: the current frontal and lateral images, the frontal and lateral images of
the subject's prior study, and the report. `-1` marks a missing view.

Typical use:
    tokenizer = load_tokenizer(args.text_encoder)
    dataset = PretrainDataset(Path(args.data_path) / "train.csv", tokenizer, skip_missing=args.skip_missing)
    loader = DataLoader(dataset, batch_size=..., collate_fn=collate_pretrain, drop_last=True)
    for batch in loader:        # keys: img, a_img, l_img, la_img, ids, inputs, labels, attention_mask
        loss = model(batch)
"""
import re
import warnings
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from util.constants import REPORT_MAX_LENGTH, XRAY_MEAN, XRAY_STD

FRONTAL, LATERAL, PRIOR_FRONTAL, PRIOR_LATERAL = VIEW_COLUMNS = (
    "image_path", "auxview_image_path", "last_image_path", "last_auxview_image_path")
REPORT_COLUMN = "report"
REQUIRED_COLUMNS = VIEW_COLUMNS + (REPORT_COLUMN,)
IGNORE_INDEX = -100  # label of positions the MLM loss skips
MISSING_PATHS_SHOWN = 5

# Sentence ends are a `.` or `?` followed by whitespace, except after abbreviations: dotted
# letters (e.g., i.e.), a capital and a small letter (Dr., Mr., St.), or a word from this list.
_SENTENCE_END = re.compile(r"(?<=[.?])\s+")
_ABBREVIATION_AT_END = re.compile(
    r"(?:\b(?:[A-Za-z]\.){2,}|\b[A-Z][a-z]\.|\b(?i:mrs|prof|vs|approx|cf|fig|incl|resp)\.)$")


# ----------------------------------------------------------------------------- train.csv

def is_missing_view(value: str) -> bool:
    """True for the `-1` marker, written as text or as a number (`-1`, `-1.0`), and for an empty cell."""
    if not value.strip():
        return True
    try:
        return float(value) == -1
    except ValueError:
        return False


def read_pretrain_csv(csv_path, skip_missing: bool = False) -> pd.DataFrame:
    """Read and check a pre-training CSV before any training starts.

    Relative image paths are resolved against the CSV's directory (the data directory). Returns
    the rows to train on with absolute path strings, and None for missing views. Raises
    ValueError for missing columns, rows without a current frontal image, or image files that do
    not exist; with `skip_missing` the rows naming nonexistent files are dropped with a warning.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path} does not exist. Pass the directory holding train.csv as the "
                                f"data path, or build the file with prepare_mimic.py.")
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    absent = [column for column in REQUIRED_COLUMNS if column not in table.columns]
    if absent:
        raise ValueError(f"{csv_path} lacks the column(s) {', '.join(absent)}; a pre-training CSV needs "
                         f"{', '.join(REQUIRED_COLUMNS)}. Rebuild it with prepare_mimic.py.")
    table = table[list(REQUIRED_COLUMNS)].reset_index(drop=True)
    data_dir = csv_path.absolute().parent
    for column in VIEW_COLUMNS:
        table[column] = pd.Series([None if is_missing_view(value) else str(data_dir / value.strip())
                                   for value in table[column]], dtype=object)

    no_frontal = table[FRONTAL].isna()
    if no_frontal.any():
        rows = [int(i) + 2 for i in no_frontal[no_frontal].index[:MISSING_PATHS_SHOWN]]  # +2: header, 1-based
        raise ValueError(f"{csv_path}: {int(no_frontal.sum())} row(s) have no current frontal image "
                         f"({FRONTAL} is -1; first at line(s) {rows}). Every study needs one: remove those rows.")
    return _check_files_exist(table, csv_path, skip_missing)


def _check_files_exist(table: pd.DataFrame, csv_path: Path, skip_missing: bool) -> pd.DataFrame:
    paths = {path for column in VIEW_COLUMNS for path in table[column] if path is not None}
    nonexistent = sorted(path for path in paths if not Path(path).is_file())
    if not nonexistent:
        return table
    shown = ", ".join(nonexistent[:MISSING_PATHS_SHOWN])
    if not skip_missing:
        raise ValueError(f"{csv_path}: {len(nonexistent)} image file(s) do not exist (first: {shown}). "
                         f"Relative paths are read from {csv_path.absolute().parent}. Fix the paths, or pass "
                         f"--skip_missing to train without the rows that name them.")
    bad = table[list(VIEW_COLUMNS)].isin(set(nonexistent)).any(axis=1)
    kept = table[~bad].reset_index(drop=True)
    if kept.empty:
        raise ValueError(f"{csv_path}: every row names a nonexistent image file (first: {shown}); nothing to train on.")
    warnings.warn(f"{csv_path}: dropped {int(bad.sum())} of {len(table)} row(s) naming {len(nonexistent)} "
                  f"nonexistent image file(s) (first: {shown}).", stacklevel=3)
    return kept


# ----------------------------------------------------------------------------- images

def load_rgb(path) -> Image.Image:
    """An image file as RGB; an unreadable file raises an error that names it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as err:
        raise OSError(f"cannot read image {path} ({err}). Replace the file, or remove its row from the CSV.") from err


def build_image_transform(resize: int, crop: int, is_train: bool) -> T.Compose:
    """Resize the shorter side (bicubic), centre-crop, augment when training, grey ×3, normalise."""
    augment = [T.RandomAffine(degrees=20, translate=(0.1, 0.1), scale=(0.95, 1.05), shear=10),
               T.ColorJitter(brightness=(0.8, 1.2), contrast=(0.8, 1.2))] if is_train else []
    return T.Compose([
        T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
        T.CenterCrop(crop),
        *augment,
        T.Grayscale(num_output_channels=3),
        T.ToTensor(),
        T.Normalize((XRAY_MEAN,) * 3, (XRAY_STD,) * 3),
    ])


def view_sizes(input_size: int) -> dict[str, tuple[int, int]]:
    """(resize, crop) of the current frontal ("big") and the other views ("small").

    224 gives 256 → 224 and 512 → 448: the big view is twice the small one, and the crop keeps
    7/8 of the resized image.
    """
    small_resize = round(input_size * 8 / 7)
    return {"small": (small_resize, input_size), "big": (2 * small_resize, 2 * input_size)}


# ----------------------------------------------------------------------------- reports

def split_sentences(text: str) -> list[str]:
    """Sentences of a report, split at the whitespace after `.` or `?` but not after abbreviations."""
    sentences = []
    for piece in _SENTENCE_END.split(text.strip()):
        if sentences and _ABBREVIATION_AT_END.search(sentences[-1]):
            sentences[-1] = f"{sentences[-1]} {piece}"
        else:
            sentences.append(piece)
    return sentences


def shuffle_sentences(text: str) -> str:
    """The report's sentences in a random order (torch RNG), joined by spaces."""
    sentences = split_sentences(text)
    return " ".join(sentences[i] for i in torch.randperm(len(sentences)).tolist())


def mask_tokens(ids: torch.Tensor, special_ids: torch.Tensor, mask_id: int, probability: float = 0.5):
    """MLM inputs and labels: each non-special token is chosen with `probability` and always
    replaced by [MASK] (no random or kept tokens). Labels hold the original id where chosen and
    IGNORE_INDEX elsewhere."""
    eligible = ~torch.isin(ids, special_ids)
    chosen = torch.bernoulli(torch.full(ids.shape, probability)).bool() & eligible
    inputs = ids.masked_fill(chosen, mask_id)
    labels = ids.masked_fill(~chosen, IGNORE_INDEX)
    return inputs, labels


# ----------------------------------------------------------------------------- dataset

class PretrainDataset(Dataset):
    """Studies of a pre-training CSV as dicts of tensors (see `collate_pretrain`).

    csv_path: `train.csv` (checked up front by `read_pretrain_csv`).
    tokenizer: the CXR-BERT tokenizer (`util.text_encoder.load_tokenizer`).
    is_train: random augmentation and sentence shuffling; off gives deterministic images and text
        (the MLM masking stays random, since the model needs masked inputs either way).
    input_size: side of the small views; the current frontal is twice as large.
    """

    def __init__(self, csv_path, tokenizer, *, is_train: bool = True, input_size: int = 224,
                 skip_missing: bool = False, mlm_probability: float = 0.5, max_length: int = REPORT_MAX_LENGTH):
        table = read_pretrain_csv(csv_path, skip_missing=skip_missing)
        self.views = {column: table[column].tolist() for column in VIEW_COLUMNS}
        self.reports = table[REPORT_COLUMN].tolist()
        self.is_train = is_train
        self.input_size = input_size
        sizes = view_sizes(input_size)
        self.big_transform = build_image_transform(*sizes["big"], is_train)
        self.small_transform = build_image_transform(*sizes["small"], is_train)
        self.tokenizer = tokenizer
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)))
        self.mask_id = tokenizer.mask_token_id
        self.mlm_probability = mlm_probability
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.reports)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        img, l_img = self._current_and_prior(index, FRONTAL, PRIOR_FRONTAL, self.big_transform)
        a_img, la_img = self._current_and_prior(index, LATERAL, PRIOR_LATERAL, self.small_transform)
        ids, attention_mask = self._tokenize(self.reports[index])
        inputs, labels = mask_tokens(ids, self.special_ids, self.mask_id, self.mlm_probability)
        return {"img": img, "a_img": a_img, "l_img": l_img, "la_img": la_img,
                "ids": ids, "inputs": inputs, "labels": labels, "attention_mask": attention_mask}

    def _current_and_prior(self, index, current_column, prior_column, current_transform):
        """Both images of a view, the prior replaying the random draws of the current one so
        the pair gets the same augmentation (scaled to its size). The torch RNG then continues
        as if only the current image had been augmented."""
        state = torch.get_rng_state()
        current = self._view(self.views[current_column][index], current_transform)
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(state)
            prior = self._view(self.views[prior_column][index], self.small_transform)
        return current, prior

    def _view(self, path, transform) -> torch.Tensor:
        if path is None:
            return torch.zeros(3, self.input_size, self.input_size)
        return transform(load_rgb(path))

    def _tokenize(self, report: str):
        text = shuffle_sentences(report) if self.is_train else report
        encoded = self.tokenizer(text, padding="max_length", truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
        return encoded["input_ids"][0].long(), encoded["attention_mask"][0].long()


def collate_pretrain(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack samples into the batch dict the model's forward(batch) takes: img (B,3,2s,2s);
    a_img, l_img, la_img (B,3,s,s); ids, inputs, labels, attention_mask (B,max_length) long."""
    return {key: torch.stack([sample[key] for sample in samples]) for key in samples[0]}
