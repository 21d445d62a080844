"""Feature extraction and the RSNA routine with a small fake model that counts its text-encoder calls."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

import CheXpert5X200_zeroshot
from util.demo_benchmarks import make_demo_benchmarks
from util.eval_data import CHEXPERT5X200_CLASSES, ImageSet, rsna_loader
from util.evaluation import RSNA_PROMPTS, class_embeddings, encode_images, encode_texts, rsna_zero_shot, tokenize
from util.prompts import DEFAULT_PROMPTS_FILE, load_class_prompts
from util.text_encoder import load_tokenizer


class FakeALTA(torch.nn.Module):
    """ALTA's evaluation interface: image feature from per-channel statistics, text feature = sum of token vectors."""

    def __init__(self, dim: int = 8, vocab_size: int = 30522):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.image_projection = torch.randn(6, dim, generator=generator)
        self.token_vectors = torch.randn(vocab_size, dim, generator=generator)
        self.text_calls = 0

    def forward_img_feature(self, images):
        statistics = torch.cat([images.mean((2, 3)), images.std((2, 3))], dim=1)
        return F.normalize(statistics @ self.image_projection, dim=-1)

    def forward_txt_feature(self, tokens, normalize=False):
        self.text_calls += 1
        ids, mask = tokens["input_ids"], tokens["attention_mask"]
        features = (self.token_vectors[ids] * mask[..., None]).sum(-2)
        return F.normalize(features, dim=-1) if normalize else features


@pytest.fixture(scope="module")
def tokenizer(cxr_bert_dir):
    return load_tokenizer(cxr_bert_dir)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmarks")
    return root, make_demo_benchmarks(root, per_class=2, image_size=32)


def test_encode_images_keeps_loader_order_and_labels(demo):
    root, _ = demo
    images = ImageSet([str(p) for p in sorted((root / "RSNA_dataset" / "stage_2_train_images").glob("*.dcm"))[:5]],
                      torch.tensor([0, 1, 1, 0, 1]))
    model = FakeALTA()
    features, labels = encode_images(model, images.data_loader(batch_size=2, num_workers=0), "cpu")
    assert labels.tolist() == [0, 1, 1, 0, 1]
    one_by_one = torch.cat([encode_images(model, ImageSet([p], torch.tensor([0])).data_loader(1, 0), "cpu")[0]
                            for p in images.paths])
    assert torch.allclose(features, one_by_one, atol=1e-6)


def test_tokenize_pads_to_the_length_and_truncates_only_when_asked(tokenizer):
    long_text = " ".join(["effusion"] * 30)
    natural = len(tokenizer(long_text)["input_ids"])
    assert natural > 10
    assert tokenize(tokenizer, [long_text, "no effusion"], 10, truncate=False)["input_ids"].shape == (2, natural)
    assert tokenize(tokenizer, ["no effusion"], 10, truncate=False)["attention_mask"].shape == (1, 10)
    assert tokenize(tokenizer, [long_text], 10, truncate=True)["input_ids"].shape == (1, 10)


def test_text_features_do_not_depend_on_batching(tokenizer):
    texts = ["mild pulmonary edema", "small left pleural effusion", "no acute process", "heart size is normal",
             "bibasilar atelectasis"]
    model = FakeALTA()
    batched = encode_texts(model, tokenizer, texts, "cpu", 12, batch_size=2)
    single = torch.cat([encode_texts(model, tokenizer, [t], "cpu", 12) for t in texts])
    assert torch.allclose(batched, single, atol=1e-6)
    assert torch.allclose(batched.norm(dim=1), torch.ones(5))


def test_class_embedding_is_the_normalised_mean_of_raw_prompt_features(tokenizer):
    prompts = {"a": ["mild edema", "moderate edema", "severe edema"], "b": ["left effusion", "right effusion"]}
    model = FakeALTA()
    embeddings = class_embeddings(model, tokenizer, prompts, "cpu", length=16, batch_size=2)
    for row, texts in zip(embeddings, prompts.values()):
        raw = encode_texts(model, tokenizer, texts, "cpu", 16, truncate=True, normalize=False)
        assert torch.allclose(row, F.normalize(raw.mean(0), dim=0), atol=1e-6)


def test_rsna_zero_shot_encodes_the_prompts_once(demo, tokenizer):
    _, flags = demo
    rsna = flags["RSNA_zeroshot"]
    loader = rsna_loader(rsna[rsna.index("--split_file") + 1], rsna[rsna.index("--rsna_root") + 1],
                         batch_size=4, num_workers=0)
    model = FakeALTA()
    metrics = rsna_zero_shot(model, loader, tokenizer, "cpu")
    assert model.text_calls == 1 and len(loader) == 6

    images, labels = encode_images(model, loader, "cpu")
    prompts = encode_texts(model, tokenizer, list(RSNA_PROMPTS), "cpu", 10)
    cos_pos, cos_neg = (images * prompts[0]).sum(1), (images * prompts[1]).sum(1)
    probability = torch.softmax(torch.stack([cos_pos, cos_neg], 1), 1)[:, 0]
    predicted, truth = (cos_pos > cos_neg).numpy(), labels.numpy().astype(bool)
    assert metrics["auroc"] == pytest.approx(roc_auc_score(truth, probability.numpy()))
    assert metrics["acc"] == pytest.approx(np.mean(predicted == truth))
    assert set(metrics) == {"auroc", "acc", "f1", "recall", "precision"}


# ---------------------------------------------------------------- scripts with the fake model

@pytest.fixture
def fake_model_for(monkeypatch, tokenizer):
    """Make a script's model loading return a fresh FakeALTA; returns it."""
    def patch(script):
        model = FakeALTA()
        monkeypatch.setattr(script, "load_for_eval", lambda args: (model, tokenizer, torch.device("cpu"), None))
        return model
    return patch


def test_zero_shot_script_encodes_class_prompts_once_per_run(demo, fake_model_for):
    _, flags = demo
    model = fake_model_for(CheXpert5X200_zeroshot)
    batch_size = 64
    metrics = CheXpert5X200_zeroshot.main(flags["CheXpert5X200_zeroshot"] + [
        "--batch_size", str(batch_size), "--num_workers", "0", "--output", ""])
    prompts = load_class_prompts(DEFAULT_PROMPTS_FILE, CHEXPERT5X200_CLASSES)
    assert model.text_calls == sum(math.ceil(len(p) / batch_size) for p in prompts.values())
    assert 0 <= metrics["ACC"] <= 1


def test_scripts_check_their_data_files_before_loading_the_model(tmp_path, monkeypatch):
    def must_not_load(args):
        raise AssertionError("the model was loaded before the data files were checked")
    monkeypatch.setattr(CheXpert5X200_zeroshot, "load_for_eval", must_not_load)
    with pytest.raises(FileNotFoundError, match="CheXpert 5x200 CSV .*absent.csv does not exist"):
        CheXpert5X200_zeroshot.main(["--csv", str(tmp_path / "absent.csv")])
    with pytest.raises(FileNotFoundError, match="prompt file .*absent.json does not exist"):
        CheXpert5X200_zeroshot.main(["--csv", __file__, "--prompts", str(tmp_path / "absent.json")])
