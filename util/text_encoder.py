"""CXR-BERT-specialized text tower, built from the installed `transformers` BERT classes.

No hub access and no `trust_remote_code`: the architecture comes from the directory's
`config.json`, the weights are loaded by name, and the adapters are added by wrapping the
library's own layer modules.
"""
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel, BertTokenizer
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.bert.modeling_bert import BertLayer, BertOnlyMLMHead

from util.layers import PARALLEL_ADAPTER_SCALE, Adapter, ProjectionHead

CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.txt"
REQUIRED_CONFIG_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
# Entries of the Hugging Face config that describe the original remote code, not the architecture.
_REMOTE_CODE_KEYS = ("model_type", "architectures", "auto_map", "transformers_version", "torch_dtype", "dtype")
FIX_HINT = ("--text_encoder must name a local CXR-BERT-format directory (config.json, vocab.txt and "
            "pytorch_model.bin or model.safetensors), such as a copy of microsoft/BiomedVLP-CXR-BERT-specialized")


def read_text_config(directory) -> BertConfig:
    """BertConfig for the CXR-BERT directory, with `projection_size` and SDPA attention."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist. {FIX_HINT}.")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}). {FIX_HINT}.") from None
    missing = [k for k in REQUIRED_CONFIG_KEYS if k not in raw]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}; it is not a BERT config. {FIX_HINT}.")
    settings = {k: v for k, v in raw.items() if k not in _REMOTE_CODE_KEYS}
    settings.setdefault("projection_size", 128)
    config = BertConfig(**settings)
    config._attn_implementation = "sdpa"
    return config


def load_tokenizer(directory) -> BertTokenizer:
    """The WordPiece tokenizer of a CXR-BERT directory (its `vocab.txt` and tokenizer settings)."""
    directory = Path(directory)
    vocab = directory / VOCAB_FILE
    if not vocab.is_file():
        raise FileNotFoundError(f"{vocab} does not exist. {FIX_HINT}.")
    return BertTokenizer.from_pretrained(str(directory), local_files_only=True)


class AdaptedBertLayer(nn.Module):
    """A `transformers` BertLayer with ALTA's two adapters.

    Reuses the library layer's `attention`, `intermediate` and `output` sub-modules (so the
    parameter names stay those of BERT) and inserts a serial adapter on the attention output
    and a parallel adapter beside the feed-forward sub-layer:
        a = A_attn(attention(x));  y = output(intermediate(a), a) + 0.5 * A_mlp(a)
    """

    def __init__(self, layer: BertLayer):
        super().__init__()
        if getattr(layer, "add_cross_attention", False):
            raise ValueError("ALTA's text tower is a bidirectional encoder; cross-attention layers are not supported")
        self.attention = layer.attention
        self.intermediate = layer.intermediate
        self.output = layer.output
        width = layer.output.dense.out_features
        self.attn_adapter = Adapter(width, skip=True)
        self.mlp_adapter = Adapter(width, skip=False)

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, *_, **__) -> torch.Tensor:
        a = self.attn_adapter(self.attention(hidden_states, attention_mask)[0])
        return self.output(self.intermediate(a), a) + PARALLEL_ADAPTER_SCALE * self.mlp_adapter(a)


class CXRBertTextEncoder(nn.Module):
    """BERT + tied MLM head + global and local projection heads, with adapters in every layer.

    Parameter names follow CXR-BERT-specialized (`bert.*`, `cls.predictions.*`,
    `cls_projection_head.*`) plus `local_projection_head.*` and the adapters.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=False)
        layers = self.bert.encoder.layer
        for i in range(len(layers)):
            layers[i] = AdaptedBertLayer(layers[i])
        self.cls = BertOnlyMLMHead(config)
        # Tie as BertForMaskedLM does: the decoder reuses the word embeddings and the head's bias.
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight
        self.cls.predictions.decoder.bias = self.cls.predictions.bias
        proj = config.projection_size
        self.cls_projection_head = ProjectionHead(config.hidden_size, proj)
        self.local_projection_head = ProjectionHead(config.hidden_size, proj)

    @classmethod
    def from_directory(cls, directory) -> "CXRBertTextEncoder":
        return cls(read_text_config(directory))

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, embedding_offset=None) -> torch.Tensor:
        """Last hidden states (B, N, H). `embedding_offset` (B, 1, H) is added to every token's
        embedding output (after the embedding LayerNorm and dropout) before the encoder."""
        hidden = self.bert.embeddings(input_ids=input_ids)
        if embedding_offset is not None:
            hidden = hidden + embedding_offset
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask)
        return self.bert.encoder(hidden, attention_mask=mask).last_hidden_state

    def global_features(self, last_hidden: torch.Tensor) -> torch.Tensor:
        return self.cls_projection_head(last_hidden[:, 0])

    def local_features(self, last_hidden: torch.Tensor) -> torch.Tensor:
        """Projected word tokens after [CLS]: (B, N-1, P)."""
        return self.local_projection_head(last_hidden[:, 1:])

    def mlm_loss(self, last_hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the MLM head at labelled positions only (labels of -100 are ignored).

        Equal to applying the head everywhere and ignoring -100, without projecting every
        position onto the whole vocabulary.
        """
        chosen = labels != -100
        logits = self.cls(last_hidden[chosen])
        return F.cross_entropy(logits.float(), labels[chosen])
