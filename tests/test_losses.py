"""The losses: vectorised local loss against a per-text loop, and DDP against one process."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from util.losses import (caption_lengths, contrastive_losses, global_contrastive_loss, local_contrastive_loss,
                         masked_patch_loss)


def local_loss_per_text(patches, words, lengths, t1, t2, t3):
    """The token-patch loss written as a plain loop over texts, following SPEC §5.2 literally."""
    scores = []
    for i in range(words.shape[0]):
        w = words[i, : int(lengths[i])]  # (L, D)
        per_image = []
        for j in range(patches.shape[0]):
            p = patches[j]  # (P, D)
            s = torch.softmax(p @ w.t(), dim=1)  # (P, L): softmax over words
            a = torch.softmax(t1 * s.t(), dim=1)  # (L, P): softmax over patches
            c = a @ p  # (L, D)
            cos = (w * c).sum(1) / (w.norm(dim=1) * c.norm(dim=1)).clamp(min=1e-8)
            per_image.append(torch.log(torch.exp(t2 * cos).sum()))
        scores.append(torch.stack(per_image))
    s = t3 * torch.stack(scores, dim=1)  # (images, texts)
    labels = torch.arange(s.shape[0])
    return (F.cross_entropy(s, labels) + F.cross_entropy(s.t(), labels)) / 2


def _attention_mask(lengths, n):
    """Masks whose caption lengths are `lengths` (n - 1 = unpadded)."""
    mask = torch.zeros(len(lengths), n, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, : length + 1 if length < n - 1 else n] = 1
    return mask


def test_caption_lengths_count_words_after_cls_including_sep():
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]])
    assert caption_lengths(mask).tolist() == [3, 5, 1]


def _local_inputs(seed, batch=6, patches=12, n=10, dim=8, lengths=(9, 3, 7, 9, 1, 5)):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(batch, patches, dim, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(batch, n - 1, dim, generator=g, dtype=torch.float64, requires_grad=True)
    temps = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (14.3, 5.0, 10.0)]
    return p, w, caption_lengths(_attention_mask(list(lengths), n)), temps


@pytest.mark.parametrize("block_elements", [2**23, 1])
def test_vectorised_local_loss_equals_the_per_text_loop(block_elements):
    p, w, lengths, temps = _local_inputs(seed=0)
    assert lengths.max() == w.shape[1]  # unpadded reports included
    expected = local_loss_per_text(p, w, lengths, *temps)
    expected_grads = torch.autograd.grad(expected, [p, w, *temps])
    got = local_contrastive_loss(p, w, lengths, *temps, block_elements=block_elements)
    got_grads = torch.autograd.grad(got, [p, w, *temps])
    torch.testing.assert_close(got, expected.to(got.dtype), rtol=1e-5, atol=0)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-12)


def _relative_error(a, b):
    return float((a - b).norm() / b.norm())


def test_vectorised_local_loss_matches_the_loop_in_float32():
    p, w, lengths, temps = _local_inputs(seed=2)
    p32, w32 = p.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    t32 = [t.detach().float().requires_grad_() for t in temps]
    expected = local_loss_per_text(p32, w32, lengths, *t32)
    expected_grads = torch.autograd.grad(expected, [p32, w32, *t32])
    got = local_contrastive_loss(p32, w32, lengths, *t32)
    got_grads = torch.autograd.grad(got, [p32, w32, *t32])
    assert got.dtype == torch.float32
    assert _relative_error(got.detach(), expected.detach()) <= 1e-5
    for g, e in zip(got_grads, expected_grads):
        assert _relative_error(g, e) <= 1e-5


def test_local_loss_ignores_words_past_the_caption():
    p, w, lengths, temps = _local_inputs(seed=1)
    changed = w.detach().clone()
    changed[1, int(lengths[1]):] = 100.0
    a = local_contrastive_loss(p, w, lengths, *temps)
    b = local_contrastive_loss(p, changed, lengths, *temps)
    torch.testing.assert_close(a, b)


def test_global_loss_is_symmetric_infonce():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    txt = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    scale = torch.tensor(3.0)
    logits = scale * img @ txt.t()
    expected = (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.t(), torch.arange(5))) / 2
    torch.testing.assert_close(global_contrastive_loss(img, txt, scale), expected)


def test_reconstruction_loss_counts_removed_patches_with_normalised_targets():
    target = torch.tensor([[[1.0, 3.0], [0.0, 4.0]]])
    pred = torch.zeros(1, 2, 2)
    mask = torch.tensor([[0.0, 1.0]])
    # patch 2 normalised: mean 2, unbiased var 8 -> (-2, 2) / sqrt(8 + 1e-6)
    expected = ((2 / (8 + 1e-6) ** 0.5) ** 2)
    torch.testing.assert_close(masked_patch_loss(target, pred, mask, norm_pix_loss=True), torch.tensor(expected))
    torch.testing.assert_close(masked_patch_loss(target, pred, mask, norm_pix_loss=False), torch.tensor(8.0))


# ------------------------------------------------------------------------------ DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_inputs():
    g = torch.Generator().manual_seed(7)
    batch, patches, n, dim = 4, 6, 8, 5
    return dict(
        image=torch.randn(batch, dim, generator=g), text=torch.randn(batch, dim, generator=g),
        patches=torch.randn(batch, patches, dim, generator=g), words=torch.randn(batch, n - 1, dim, generator=g),
        # lengths differ between the two halves, so the ranks chunk their local loss differently
        lengths=caption_lengths(_attention_mask([7, 2, 5, 3], n)))


def _losses_and_grads(inputs):
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items() if k != "lengths"}
    temps = [torch.tensor(v, requires_grad=True) for v in (2.0, 14.3, 5.0, 10.0)]
    g_loss, l_loss = contrastive_losses(F.normalize(leaves["image"], dim=-1), F.normalize(leaves["text"], dim=-1),
                                        leaves["patches"], leaves["words"], inputs["lengths"], *temps)
    (g_loss + l_loss).backward()
    grads = {k: v.grad for k, v in leaves.items()}
    grads.update({f"scale{i}": t.grad for i, t in enumerate(temps)})
    return g_loss.detach(), l_loss.detach(), grads


def _ddp_worker(rank, world, port, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    half = {k: v.chunk(world)[rank] for k, v in _ddp_inputs().items()}
    g_loss, l_loss, grads = _losses_and_grads(half)
    # Every rank evaluates the full loss, so gradients arrive world-size times, once from each
    # rank's copy of the loss; DDP's average over ranks turns that back into the true gradient.
    for name, grad in grads.items():
        if name.startswith("scale"):  # replicated parameters: averaged by DDP
            dist.all_reduce(grad)
        grad /= world
    torch.save({"global": g_loss, "local": l_loss, "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_losses_under_two_process_gloo_equal_the_single_process_loss(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    g_loss, l_loss, grads = _losses_and_grads(_ddp_inputs())
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(got["global"], g_loss)
        torch.testing.assert_close(got["local"], l_loss)
        for name in ("scale0", "scale1", "scale2", "scale3"):
            torch.testing.assert_close(got["grads"][name], grads[name], msg=name)
        for name in ("image", "text", "patches", "words"):
            # each rank holds the gradient of its own half of the batch
            torch.testing.assert_close(got["grads"][name], grads[name].chunk(2)[rank], msg=name)


def test_hand_written_backward_passes_gradcheck():
    from util.losses import WordRegionScores

    g = torch.Generator().manual_seed(3)
    words = torch.randn(3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    patches = torch.randn(2, 6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    valid = torch.tensor([[True] * 4, [True, True, False, False], [True, False, False, False]])
    t1 = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    t2 = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w, p, a, b: WordRegionScores.apply(w, p, valid, a, b),
                                    (words, patches, t1, t2))
