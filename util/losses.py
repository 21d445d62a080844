"""ALTA's contrastive losses and the masked-patch reconstruction loss.

Both contrastive losses are computed on the *global* batch, so the result does not depend on
how the batch is split across GPUs: features are gathered from all ranks with gradient
(torch.distributed.nn.all_gather) and every rank evaluates the full loss, as the original does.
"""
import torch
import torch.nn.functional as F

from util.dist import gather_with_grad

# Elements of one (images x patches x texts x words) block of the local loss: bounds its memory
# (a few such fp32 tensors live at once) while keeping the blocks large enough to be efficient.
LOCAL_LOSS_BLOCK_ELEMENTS = {"cpu": 2**23, "accelerator": 2**26}
COSINE_EPS = 1e-8


def symmetric_cross_entropy(logits: torch.Tensor) -> torch.Tensor:
    """(CE(logits, arange) + CE(logits.T, arange)) / 2 for a square similarity matrix."""
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def global_contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                            logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between L2-normalised image and text features (already global)."""
    return symmetric_cross_entropy(logit_scale * image_features @ text_features.t())


def caption_lengths(attention_mask: torch.Tensor) -> torch.Tensor:
    """Words per report for the local loss: (index of the first padding position) - 1, or
    N - 1 for an unpadded report; counted after [CLS], so [SEP] is included."""
    first_pad = (attention_mask == 0).int().argmax(dim=1)
    return torch.where(first_pad == 0, attention_mask.shape[1], first_pad) - 1


class WordRegionScores(torch.autograd.Function):
    """R[i, j] = log sum_w exp(t2 * cos(word w of text i, its context in image j)), shape (Bt, Bi).

    words (Bt, n, D), `valid` (Bt, n) marking each text's words; patches (Bi, P, D).
    For each pair: softmax over words of patches.words, transpose, times t1, softmax over
    patches gives every word's attention over the patches; a word's context is the
    attention-weighted sum of the patches; cos uses GLoRIA's clamp of the norm product at 1e-8.
    All pairs are computed at once, laid out as (image, patch, text, word) so that every product
    is a plain (batched) matrix product. The backward pass is written out by hand: it reuses the
    forward's buffers in place and never materialises the many (images x patches x texts x
    words) temporaries autograd would keep, which is where most of the time went.
    """

    @staticmethod
    def forward(ctx, words, patches, valid, t1, t2):
        n_texts, n, dim = words.shape
        n_images, n_patches = patches.shape[:2]
        words_2d = words.reshape(n_texts * n, dim)
        scores = (patches.reshape(n_images * n_patches, dim) @ words_2d.t()).view(n_images, n_patches, n_texts, n)
        if not valid.all():
            scores.masked_fill_(~valid, float("-inf"))
        over_words = torch.softmax(scores, dim=-1)
        del scores
        attention = torch.softmax(t1 * over_words, dim=1)  # over patches
        context = torch.bmm(attention.view(n_images, n_patches, -1).transpose(1, 2), patches)  # (Bi, Bt*n, D)
        context_norm = context.norm(dim=-1)
        word_norm = words_2d.norm(dim=-1)
        denominator = (context_norm * word_norm).clamp(min=COSINE_EPS)
        cosine = (context * words_2d).sum(-1) / denominator  # (Bi, Bt*n)
        similarity = (t2 * cosine).view(n_images, n_texts, n).masked_fill(~valid, float("-inf"))
        scores_out = torch.logsumexp(similarity, dim=-1)
        word_weights = torch.softmax(similarity, dim=-1)  # d logsumexp / d similarity
        ctx.save_for_backward(words, patches, t1, t2, over_words, attention, context, context_norm, word_norm,
                              denominator, cosine, word_weights)
        return scores_out.t()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_scores):
        (words, patches, t1, t2, over_words, attention, context, context_norm, word_norm,
         denominator, cosine, word_weights) = ctx.saved_tensors
        n_texts, n, dim = words.shape
        n_images, n_patches = patches.shape[:2]
        words_2d = words.reshape(n_texts * n, dim)

        grad_similarity = (grad_scores.t()[..., None] * word_weights).reshape(n_images, -1)  # 0 for padding
        grad_t2 = (grad_similarity * cosine).sum()
        grad_cosine = t2 * grad_similarity
        # cos = <c, w> / (|c| |w|): d/dc = alpha w + beta c, d/dw = alpha c + gamma w (beta = gamma = 0 if clamped)
        clamped = context_norm * word_norm <= COSINE_EPS
        alpha = grad_cosine / denominator
        beta = torch.where(clamped, 0.0, -grad_cosine * cosine / context_norm.square())
        gamma = torch.where(clamped, 0.0, -grad_cosine * cosine / word_norm.square())
        grad_context = alpha[..., None] * words_2d + beta[..., None] * context  # (Bi, Bt*n, D)
        grad_words = (alpha[..., None] * context).sum(0) + gamma.sum(0)[:, None] * words_2d

        grad_patches = torch.bmm(attention.view(n_images, n_patches, -1), grad_context)
        grad = torch.bmm(patches, grad_context.transpose(1, 2)).view_as(attention)  # d/d attention
        # softmax over patches, then the product with t1, then softmax over words, in place
        grad.sub_((attention * grad).sum(dim=1, keepdim=True)).mul_(attention)
        grad_t1 = torch.dot(grad.flatten(), over_words.flatten())
        grad.sub_((over_words * grad).sum(dim=-1, keepdim=True)).mul_(over_words).mul_(t1)
        grad_2d = grad.view(n_images * n_patches, n_texts * n)
        grad_words += grad_2d.t() @ patches.reshape(n_images * n_patches, dim)
        grad_patches += (grad_2d @ words_2d).view_as(patches)
        return grad_words.view_as(words), grad_patches, None, grad_t1, grad_t2


def word_region_scores(words: torch.Tensor, lengths: torch.Tensor, patches: torch.Tensor,
                       t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
    """`WordRegionScores` for texts with `lengths` valid words each (padding beyond is ignored)."""
    n = int(lengths.max())
    valid = torch.arange(n, device=words.device) < lengths[:, None]
    return WordRegionScores.apply(words[:, :n].contiguous(), patches.contiguous(), valid, t1, t2)


def local_contrastive_loss(patches: torch.Tensor, word_features: torch.Tensor, lengths: torch.Tensor,
                           t1: torch.Tensor, t2: torch.Tensor, t3: torch.Tensor,
                           block_elements: int | None = None) -> torch.Tensor:
    """GLoRIA-style token-patch loss over the global batch.

    patches (B_global, P, D): projected image tokens of all ranks; word_features (B, N, D):
    this rank's projected word tokens after [CLS]; lengths (B): words used per report (see
    `caption_lengths`). S[j, i] = t3 * R(i, j); loss = (CE(S) + CE(S.T)) / 2.

    Each rank scores only its own texts against all images and the rows are then gathered, so
    the work is split across GPUs instead of repeated on each. Texts are processed in chunks of
    similar length, each chunk's intermediate tensors kept below `block_elements` elements.
    """
    device = patches.device.type
    if block_elements is None:
        block_elements = LOCAL_LOSS_BLOCK_ELEMENTS["cpu" if device == "cpu" else "accelerator"]
    dtype = torch.promote_types(patches.dtype, torch.float32)  # never below fp32, autocast or not
    with torch.autocast(device_type=device, enabled=False):
        patches, words = patches.to(dtype), word_features.to(dtype)
        t1, t2, t3 = (t.to(dtype) for t in (t1, t2, t3))
        n_images, n_patches = patches.shape[:2]
        order = torch.argsort(lengths, descending=True)
        rows = []
        start = 0
        while start < len(order):
            longest = int(lengths[order[start]])
            size = max(1, block_elements // (n_images * n_patches * longest))
            chunk = order[start:start + size]
            rows.append(word_region_scores(words[chunk], lengths[chunk], patches, t1, t2))
            start += size
        scores = torch.cat(rows).index_select(0, torch.argsort(order))  # back to the batch order
        scores = gather_with_grad(scores)  # (all texts, all images)
        return symmetric_cross_entropy(t3 * scores.t())


def contrastive_losses(image_global: torch.Tensor, text_global: torch.Tensor, patch_features: torch.Tensor,
                       word_features: torch.Tensor, lengths: torch.Tensor, logit_scale: torch.Tensor,
                       t1: torch.Tensor, t2: torch.Tensor, t3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Global and local contrastive losses of this rank's batch against the global batch.

    The image-side features and the text globals of every rank travel in ONE gather. Collectives
    issued during backward must come in the same order on every rank; with one gather here and
    one for the local rows (whose backward necessarily runs first) that order is fixed, whatever
    the per-rank chunking of the local loss makes of the autograd graph.
    """
    batch, dim = image_global.shape
    packed = torch.cat([image_global.float(), text_global.float(), patch_features.float().flatten(1)], dim=1)
    gathered = gather_with_grad(packed)
    image_all, text_all = gathered[:, :dim], gathered[:, dim:2 * dim]
    patches_all = gathered[:, 2 * dim:].reshape(gathered.shape[0], *patch_features.shape[1:])
    global_loss = global_contrastive_loss(image_all, text_all, logit_scale)
    local_loss = local_contrastive_loss(patches_all, word_features, lengths, t1, t2, t3)
    return global_loss, local_loss


def masked_patch_loss(target_patches: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                      norm_pix_loss: bool) -> torch.Tensor:
    """MAE reconstruction loss: per-patch MSE averaged over removed patches (mask == 1).

    With norm_pix_loss each target patch is normalised by its own mean and unbiased variance.
    """
    if norm_pix_loss:
        mean = target_patches.mean(dim=-1, keepdim=True)
        var = target_patches.var(dim=-1, keepdim=True)
        target_patches = (target_patches - mean) / (var + 1.0e-6) ** 0.5
    per_patch = ((pred - target_patches) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()
