"""Which parameters ALTA trains (★ the original rule, by name) and a short summary."""
from torch import nn

# A parameter trains iff its full name contains one of these. Tied weights appear once in
# named_parameters(), under the word-embedding name, so the MLM decoder weight stays frozen.
TRAINABLE_NAME_PARTS = (
    "head", "norm", "Norm", "adapter", "Adapter", "logit_scale", "cls_token", "temporal_embedding",
    "view_embedding", "decoder_embed", "bert_encoder.cls.predictions", "mask_token", "decoder_pred",
)


def is_trainable_name(name: str) -> bool:
    return any(part in name for part in TRAINABLE_NAME_PARTS)


def mark_trainable(model: nn.Module) -> None:
    """Set requires_grad by the ALTA rule (names as in the bare model, without a DDP prefix)."""
    for name, param in model.named_parameters():
        param.requires_grad_(is_trainable_name(name))


def parameter_counts(model: nn.Module, prefix: str = "") -> tuple[int, int]:
    """(total, trainable) parameter counts, tied tensors counted once; optionally under a prefix."""
    params = [p for n, p in model.named_parameters() if n.startswith(prefix)]
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def parameter_summary(model: nn.Module, text_prefix: str = "bert_encoder.") -> str:
    total, trainable = parameter_counts(model)
    text_total, text_trainable = parameter_counts(model, text_prefix)
    return (f"Parameters: {total:,} total, {trainable:,} trainable ({100 * trainable / max(total, 1):.3f} %); "
            f"vision {total - text_total:,} / {trainable - text_trainable:,}, "
            f"text {text_total:,} / {text_trainable:,}")
