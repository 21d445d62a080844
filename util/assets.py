"""Asset factory: small artefacts in the formats of the released ones, built offline.

Used by the tests and the demo. Writes
  * a CXR-BERT-format directory (`config.json`, weights in the official key layout, and a
    WordPiece `vocab.txt` trained with the `tokenizers` library on built-in report text), and
  * an MRM-format checkpoint (`{'model': state_dict}` with MRM's vision, decoder and text-branch names).
"""
import json
import random
from collections import OrderedDict
from pathlib import Path

import torch
from transformers import BertConfig, BertForMaskedLM

from util.layers import ProjectionHead
from util.pos_embed import sincos_pos_embed_tensor

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# Plain-language chest radiograph findings, written for this project; enough variety for a
# small WordPiece vocabulary and for synthetic reports.
REPORT_SENTENCES = (
    "The lungs are clear without focal consolidation.",
    "No pleural effusion or pneumothorax is seen.",
    "The cardiomediastinal silhouette is within normal limits.",
    "Heart size is normal.",
    "There is mild cardiomegaly.",
    "The heart is moderately enlarged.",
    "Small bilateral pleural effusions are present.",
    "A moderate right pleural effusion is noted.",
    "There is a small left pleural effusion with adjacent atelectasis.",
    "Patchy opacity in the right lower lobe may represent pneumonia.",
    "Focal consolidation in the left lower lobe is concerning for pneumonia.",
    "There is mild pulmonary vascular congestion.",
    "Diffuse interstitial opacities are consistent with pulmonary edema.",
    "Bibasilar atelectasis is seen.",
    "Linear atelectasis is present at the left base.",
    "No acute cardiopulmonary process.",
    "There is no evidence of pneumothorax.",
    "The osseous structures are unremarkable.",
    "Degenerative changes are seen in the thoracic spine.",
    "An endotracheal tube terminates 4 cm above the carina.",
    "A nasogastric tube courses below the diaphragm.",
    "A right internal jugular central line ends in the lower superior vena cava.",
    "Median sternotomy wires are intact.",
    "A left-sided pacemaker is present with leads in the right atrium and ventricle.",
    "The hila are normal in size and contour.",
    "There is blunting of the right costophrenic angle.",
    "Hyperinflated lungs suggest chronic obstructive pulmonary disease.",
    "A calcified granuloma is seen in the right upper lobe.",
    "Compared to the prior study, the effusion has decreased.",
    "Compared to the previous radiograph, the opacity has increased.",
    "The aorta is tortuous and calcified.",
    "Lung volumes are low.",
    "There is elevation of the right hemidiaphragm.",
    "Multifocal opacities are seen in both lungs.",
    "A small apical pneumothorax is present on the right.",
    "Subsegmental atelectasis is seen in the lingula.",
    "No free air is seen below the diaphragm.",
    "Mild edema has improved since the prior examination.",
    "The mediastinum is not widened.",
    "A nodular opacity in the left upper lobe measures 8 mm.",
)


def synthetic_report(rng: random.Random, n_sentences=(2, 6)) -> str:
    """A short report made of distinct built-in sentences."""
    k = rng.randint(*n_sentences)
    return " ".join(rng.sample(REPORT_SENTENCES, k))


def train_vocab(vocab_size: int | None = None, texts=REPORT_SENTENCES) -> list[str]:
    """WordPiece vocabulary trained offline on `texts` with the `tokenizers` library.

    Training runs until every word of the texts is one token. The trainer breaks ties between
    equally frequent pairs in an unspecified order, so only the order-independent part of its
    result is kept (special tokens, the alphabet with its `##` continuations, and the whole
    words), sorted, which makes the vocabulary identical on every run. When that cannot fill
    `vocab_size`, `[unusedN]` entries pad it so the embedding matrix has exactly that many rows.
    """
    from tokenizers.implementations import BertWordPieceTokenizer

    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(list(texts), vocab_size=100_000, min_frequency=1,
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    words = {word for text in texts
             for word, _ in wordpiece.pre_tokenizer.pre_tokenize_str(wordpiece.normalizer.normalize_str(text))}
    stable = sorted(tok for tok in wordpiece.get_vocab()
                    if tok not in SPECIAL_TOKENS and (len(tok.removeprefix("##")) == 1 or tok in words))
    vocab = list(SPECIAL_TOKENS) + stable
    if vocab_size is not None:
        if vocab_size < len(SPECIAL_TOKENS):
            raise ValueError(f"vocab_size must be at least {len(SPECIAL_TOKENS)}, got {vocab_size}")
        vocab = vocab[:vocab_size] + [f"[unused{i}]" for i in range(vocab_size - len(vocab))]
    return vocab


def write_cxr_bert_dir(directory, *, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                       projection_size=16, vocab_size=None, max_position_embeddings=512, dropout=0.1,
                       weights="bin", stray_position_ids=False, seed=0) -> Path:
    """Write a CXR-BERT-specialized-format directory and return its path.

    weights: "bin" (pytorch_model.bin), "safetensors" (model.safetensors) or None (config and
    vocabulary only, e.g. to build a full-size model on the meta device).
    stray_position_ids: also store `bert.embeddings.position_ids`, as older exports do.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = train_vocab(vocab_size)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    config = {
        "architectures": ["CXRBertModel"], "model_type": "cxr-bert",
        "attention_probs_dropout_prob": dropout, "hidden_dropout_prob": dropout, "hidden_act": "gelu",
        "hidden_size": hidden_size, "intermediate_size": intermediate_size, "initializer_range": 0.02,
        "layer_norm_eps": 1e-12, "max_position_embeddings": max_position_embeddings,
        "num_attention_heads": num_heads, "num_hidden_layers": num_layers, "pad_token_id": 0,
        "position_embedding_type": "absolute", "projection_size": projection_size,
        "type_vocab_size": 2, "vocab_size": len(vocab),
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (directory / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512}) + "\n")
    if weights is None:
        return directory

    torch.manual_seed(seed)
    bert_config = BertConfig(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")})
    mlm = BertForMaskedLM(bert_config)
    head = ProjectionHead(hidden_size, projection_size)
    state = OrderedDict((k, v.detach().clone().contiguous()) for k, v in mlm.state_dict().items())
    state.update((f"cls_projection_head.{k}", v.detach().clone()) for k, v in head.state_dict().items())
    if stray_position_ids:
        state["bert.embeddings.position_ids"] = torch.arange(max_position_embeddings).unsqueeze(0)
    if weights == "safetensors":
        from safetensors.torch import save_file
        save_file(state, str(directory / "model.safetensors"))
    elif weights == "bin":
        torch.save(state, directory / "pytorch_model.bin")
    else:
        raise ValueError(f"weights must be 'bin', 'safetensors' or None, got {weights!r}")
    return directory


def mrm_state_shapes(*, img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, decoder_embed_dim=768,
                     decoder_depth=4, mlp_ratio=4, text_hidden=384, text_vocab=30000, text_positions=100,
                     **_ignored) -> "OrderedDict[str, tuple]":
    """Names and shapes of an MRM checkpoint's `model` entry (vision, decoder and MRM's text branch).

    The text branch is abbreviated to its embeddings and MLM bias: those entries only exist to
    be ignored by ALTA's loader.
    """
    grid = img_size // patch_size
    hidden = int(embed_dim * mlp_ratio)
    dec_hidden = int(decoder_embed_dim * mlp_ratio)
    shapes = OrderedDict()
    shapes["cls_token"] = (1, 1, embed_dim)
    shapes["pos_embed"] = (1, grid * grid + 1, embed_dim)
    shapes["mask_token"] = (1, 1, decoder_embed_dim)
    shapes["decoder_pos_embed"] = (1, grid * grid + 1, decoder_embed_dim)
    shapes["patch_embed.proj.weight"] = (embed_dim, in_chans, patch_size, patch_size)
    shapes["patch_embed.proj.bias"] = (embed_dim,)

    def block(prefix, dim, mlp):
        shapes[f"{prefix}.norm1.weight"] = (dim,)
        shapes[f"{prefix}.norm1.bias"] = (dim,)
        shapes[f"{prefix}.attn.qkv.weight"] = (3 * dim, dim)
        shapes[f"{prefix}.attn.qkv.bias"] = (3 * dim,)
        shapes[f"{prefix}.attn.proj.weight"] = (dim, dim)
        shapes[f"{prefix}.attn.proj.bias"] = (dim,)
        shapes[f"{prefix}.norm2.weight"] = (dim,)
        shapes[f"{prefix}.norm2.bias"] = (dim,)
        shapes[f"{prefix}.mlp.fc1.weight"] = (mlp, dim)
        shapes[f"{prefix}.mlp.fc1.bias"] = (mlp,)
        shapes[f"{prefix}.mlp.fc2.weight"] = (dim, mlp)
        shapes[f"{prefix}.mlp.fc2.bias"] = (dim,)

    for i in range(depth):
        block(f"blocks.{i}", embed_dim, hidden)
    shapes["norm.weight"] = (embed_dim,)
    shapes["norm.bias"] = (embed_dim,)
    shapes["decoder_embed.weight"] = (decoder_embed_dim, embed_dim)
    shapes["decoder_embed.bias"] = (decoder_embed_dim,)
    for i in range(decoder_depth):
        block(f"decoder_blocks.{i}", decoder_embed_dim, dec_hidden)
    shapes["decoder_norm.weight"] = (decoder_embed_dim,)
    shapes["decoder_norm.bias"] = (decoder_embed_dim,)
    shapes["decoder_pred.weight"] = ((2 * patch_size) ** 2 * in_chans, decoder_embed_dim)
    shapes["decoder_pred.bias"] = ((2 * patch_size) ** 2 * in_chans,)
    text = "bert_encoder.model.bert.embeddings"
    shapes[f"{text}.word_embeddings.weight"] = (text_vocab, text_hidden)
    shapes[f"{text}.position_embeddings.weight"] = (text_positions, text_hidden)
    shapes[f"{text}.token_type_embeddings.weight"] = (2, text_hidden)
    shapes[f"{text}.LayerNorm.weight"] = (text_hidden,)
    shapes[f"{text}.LayerNorm.bias"] = (text_hidden,)
    shapes["bert_encoder.model.cls.predictions.bias"] = (text_vocab,)
    shapes["bert_mlp.weight"] = (text_hidden, embed_dim)
    shapes["bert_mlp.bias"] = (text_hidden,)
    return shapes


def make_mrm_state_dict(seed=0, **arch) -> "OrderedDict[str, torch.Tensor]":
    """Random MRM-format weights (sin-cos position tables, LayerNorm weights near 1)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = mrm_state_shapes(**arch)
    state = OrderedDict()
    for name, shape in shapes.items():
        value = 0.02 * torch.randn(shape, generator=generator)
        if "norm" in name.lower() and name.endswith(".weight"):
            value += 1.0
        state[name] = value
    grid = arch.get("img_size", 224) // arch.get("patch_size", 16)
    state["pos_embed"] = sincos_pos_embed_tensor(shapes["pos_embed"][-1], grid)
    state["decoder_pos_embed"] = sincos_pos_embed_tensor(shapes["decoder_pos_embed"][-1], grid)
    return state


def write_mrm_checkpoint(path, *, text_hidden=8, text_vocab=50, text_positions=16, seed=0, **arch) -> Path:
    """Write `{'model': state_dict}` in MRM's layout for the given vision/decoder sizes.

    `arch` takes the ALTA constructor's size keywords (img_size, patch_size, embed_dim, depth,
    decoder_embed_dim, decoder_depth, mlp_ratio, ...). MRM's own text branch is written small.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = make_mrm_state_dict(seed=seed, text_hidden=text_hidden, text_vocab=text_vocab,
                                text_positions=text_positions, **arch)
    torch.save({"model": state}, path)
    return path
