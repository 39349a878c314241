"""RS-M-CLIP pieces pinned against hand-computed values: InfoNCE, DINO centring/sharpening/loss, EMA and
schedules, crop geometry, the weight-normalised head, retrieval recall."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from training.evaluate.retrieval import recall_at_k, retrieval_metrics
from training.methods.rs_m_clip.dino import (
    CropConfig,
    DINOHead,
    DINOLoss,
    ema_update,
    momentum_at,
    multi_crop,
    sample_crop_box,
    teacher_temperature_at,
)
from training.methods.rs_m_clip.losses import info_nce
from training.methods.rs_m_clip.trainer import TrainConfig, sample_caption


def test_info_nce_3x3_by_hand():
    eye = torch.eye(3)
    # Scale 1: logits = I, each row's CE = log(e + 2) - 1, the same both ways.
    loss = info_nce(eye, eye, torch.tensor(0.0))
    assert float(loss) == pytest.approx(math.log(math.e + 2) - 1, abs=1e-6)
    # Asymmetric case, scale 2: logits = 2 * img @ txt.T with unit rows.
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    logits = 2 * np.array([[1.0, 0.6, 0.0], [0.0, 0.8, 1.0], [0.6, 1.0, 0.8]])

    def ce(m):
        return np.mean([np.log(np.exp(m[i]).sum()) - m[i, i] for i in range(3)])

    want = 0.5 * (ce(logits) + ce(logits.T))
    got = info_nce(img, txt, torch.tensor(math.log(2.0)))
    assert float(got) == pytest.approx(want, abs=1e-6)


def test_info_nce_temperature_is_learnable_and_capped():
    scale = torch.tensor(math.log(10.0), requires_grad=True)
    info_nce(torch.randn(4, 8), torch.randn(4, 8), scale).backward()
    assert scale.grad is not None and scale.grad != 0
    big = info_nce(torch.eye(3), torch.eye(3), torch.tensor(math.log(1000.0)))
    capped = info_nce(torch.eye(3), torch.eye(3), torch.tensor(math.log(100.0)))
    assert float(big) == pytest.approx(float(capped))


def test_centring_and_sharpening_by_hand():
    loss = DINOLoss(out_dim=2, n_global=2, student_temp=1.0, center_momentum=0.9)
    loss.center.copy_(torch.tensor([[0.5, 0.5]]))
    p = loss.teacher_probs(torch.tensor([[1.0, 0.0]]), teacher_temp=0.5)  # softmax([1, -1])
    e = math.e
    assert p[0].tolist() == pytest.approx([e / (e + 1 / e), (1 / e) / (e + 1 / e)], abs=1e-6)
    loss.update_center(torch.tensor([[1.0, 0.0], [0.0, 3.0]]))  # batch mean [0.5, 1.5]
    assert loss.center[0].tolist() == pytest.approx([0.9 * 0.5 + 0.1 * 0.5, 0.9 * 0.5 + 0.1 * 1.5])


def test_dino_loss_by_hand():
    loss = DINOLoss(out_dim=2, n_global=2, student_temp=1.0, center_momentum=0.9)
    teacher = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # global crops 1, 2 of one image
    student = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.5, -0.5]])  # global 1, global 2, one local crop

    def softmax(x):
        x = np.exp(np.asarray(x) - np.max(x))
        return x / x.sum()

    q = [softmax(np.array([2.0, 0.0]) / 0.5), softmax(np.array([0.0, 1.0]) / 0.5)]
    logp = [np.log(softmax(s)) for s in student.numpy()]
    pairs = [(0, 1), (0, 2), (1, 0), (1, 2)]  # a teacher crop never supervises the same student crop
    want = np.mean([-(q[a] * logp[b]).sum() for a, b in pairs])
    got = loss(student, teacher, teacher_temp=0.5)
    assert float(got) == pytest.approx(want, abs=1e-6)
    assert loss.center[0].tolist() == pytest.approx([0.1 * 1.0, 0.1 * 0.5])  # updated after the loss


def test_first_batch_centre_initialisation():
    loss = DINOLoss(out_dim=2, n_global=1, center_init="first_batch")
    loss(torch.zeros(2, 2), torch.tensor([[1.0, 3.0], [3.0, 1.0]]), teacher_temp=0.1)
    # Set to the first batch mean [2, 2], then the ordinary momentum update with the same mean.
    assert loss.center[0].tolist() == pytest.approx([2.0, 2.0])


def test_ema_update_and_schedules():
    teacher, student = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        teacher.weight.fill_(1.0)
        student.weight.fill_(3.0)
    ema_update(teacher, student, 0.9)
    assert float(teacher.weight.detach()) == pytest.approx(0.9 * 1.0 + 0.1 * 3.0)
    assert momentum_at(0, 10, 0.996) == pytest.approx(0.996)
    assert momentum_at(5, 10, 0.996) == pytest.approx(0.998)
    assert momentum_at(10, 10, 0.996) == pytest.approx(1.0)
    assert teacher_temperature_at(0, 10, 0.04, 0.07) == pytest.approx(0.04)
    assert teacher_temperature_at(5, 10, 0.04, 0.07) == pytest.approx(0.055)
    assert teacher_temperature_at(30, 10, 0.04, 0.07) == pytest.approx(0.07)


def test_crop_geometry():
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = sample_crop_box(64, 48, (0.05, 0.4), (3 / 4, 4 / 3), gen)
        assert top >= 0 and left >= 0 and top + h <= 64 and left + w <= 48
        assert 0.05 * 0.8 <= h * w / (64 * 48) <= 0.4 * 1.2  # rounding to whole pixels
        assert 3 / 4 * 0.85 <= w / h <= 4 / 3 * 1.15
    # No crop of aspect 3..4 fits a 10x10 image within ten tries at scale 1: the centred fallback.
    assert sample_crop_box(10, 10, (1.0, 1.0), (3.0, 4.0), gen) == (3, 0, 3, 10)
    cfg = CropConfig(n_global=2, global_size=32, n_local=3, local_size=16)
    crops = multi_crop(torch.rand(5, 3, 64, 64), cfg, gen)
    assert [tuple(c.shape) for c in crops] == [(5, 3, 32, 32)] * 2 + [(5, 3, 16, 16)] * 3
    # A full-image "crop" without flips reproduces the resized image.
    img = torch.rand(1, 3, 8, 8)
    same = multi_crop(img, CropConfig(1, 8, (1.0, 1.0), 0, 4, (0.1, 0.2), (1.0, 1.0), flip=False, photometric=False), gen)[0]
    assert torch.allclose(same, img)


def test_weight_normalised_head():
    torch.manual_seed(0)
    head = DINOHead(in_dim=4, out_dim=3, hidden_dim=8, bottleneck_dim=2, n_layers=2)
    g = head.last_layer.parametrizations.weight.original0
    assert not g.requires_grad and torch.all(g == 1)
    with torch.no_grad():
        head.last_layer.parametrizations.weight.original1.copy_(torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, -2.0]]))
    np.testing.assert_allclose(head.last_layer.weight.detach().numpy(), [[0.6, 0.8], [1.0, 0.0], [0.0, -1.0]], atol=1e-6)
    x = torch.randn(5, 4)
    u = torch.nn.functional.normalize(head.mlp(x), dim=-1)
    assert torch.allclose(head(x), u @ torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.0, -1.0]]).T, atol=1e-6)
    assert float(head(x).detach().abs().max()) <= 1.0 + 1e-6  # outputs are cosines
    opt = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=1.0)
    head(x).sum().backward()
    opt.step()
    assert torch.allclose(head.last_layer.weight.norm(dim=1), torch.ones(3), atol=1e-6)


def test_recall_at_k_by_hand():
    sim = np.array([[0.9, 0.1, 0.2], [0.3, 0.2, 0.8], [0.5, 0.6, 0.1]])
    # Query 0 ranks its positive first, queries 1 and 2 third.
    assert recall_at_k(sim, np.array([0, 1, 2]), ks=(1, 2, 3)) == pytest.approx({"R@1": 100 / 3, "R@2": 100 / 3, "R@3": 100.0})
    assert recall_at_k(sim, [{0}, {1, 2}, {0}], ks=(1,))["R@1"] == pytest.approx(200 / 3)
    # Ties go against the query.
    assert recall_at_k(np.ones((2, 3)), np.array([0, 1]), ks=(1, 3)) == {"R@1": 0.0, "R@3": 100.0}
    with pytest.raises(ValueError, match="outside the gallery"):
        recall_at_k(sim, np.array([0, 1, 5]))


def test_retrieval_metrics_both_directions():
    emb = np.eye(4, dtype=np.float32)
    m = retrieval_metrics(emb, emb[[0, 1, 2, 3, 0]], [0, 1, 2, 3, 0])
    assert m["t2i_R@1"] == m["i2t_R@1"] == m["mean_recall"] == 100.0
    swapped = retrieval_metrics(emb, emb[[1, 0, 2, 3]], [0, 1, 2, 3], ks=(1,))
    assert swapped["t2i_R@1"] == swapped["i2t_R@1"] == 50.0


def test_caption_sampling_and_config_validation():
    import random

    rng = random.Random(0)
    caps = {"en": ["a forest"], "pt": ["uma floresta"], "zh": []}
    draws = [sample_caption(caps, {"en": 0.0, "pt": 1.0}, rng)[0] for _ in range(20)]
    assert set(draws) == {"pt"}
    assert {sample_caption(caps, {}, rng)[0] for _ in range(50)} == {"en", "pt"}
    with pytest.raises(ValueError, match="unknown training options"):
        TrainConfig.from_dict({"stepz": 3})
    assert TrainConfig.from_dict({"crops": {"global_scale": [0.3, 1.0]}}).crops.global_scale == (0.3, 1.0)


def test_multi_crop_has_dino_photometric_augmentations():
    """DINO's views: colour jitter / grayscale per sample, global view 1 always blurred, view 2 solarised at times."""
    gen = torch.Generator().manual_seed(0)
    # One smooth-free image repeated: geometric crops of a constant image are constant, so any difference
    # between samples or from the input colour is photometric.
    img = torch.tensor([0.7, 0.4, 0.2]).view(1, 3, 1, 1).expand(64, 3, 32, 32).contiguous()
    cfg = CropConfig(n_global=2, global_size=16, n_local=2, local_size=8, flip=False)
    crops = multi_crop(img, cfg, gen)
    colours = crops[0].mean(dim=(2, 3))
    assert colours.std(dim=0).min() > 0.01  # per-sample jitter, not one draw per batch
    grey = (colours.max(dim=1).values - colours.min(dim=1).values) < 1e-6
    assert 2 <= int(grey.sum()) <= 30  # RandomGrayscale(p=0.2) on 64 samples
    solarised = (crops[1] > 0.5).float().mean(dim=(1, 2, 3)) == 0  # solarise inverts >= 0.5: nothing bright left
    assert int(solarised.sum()) >= 1
    assert not any(bool(((c - img[:, :, :c.shape[-2], :c.shape[-1]]).abs() < 1e-6).all()) for c in crops)


def test_dino_head_weight_decay_schedule_and_gradient_clip():
    from training.methods.rs_m_clip.trainer import RSMCLIPTrainer
    from training.models import create_model

    lm = create_model("rsclip-tiny-multilingual")
    cfg = TrainConfig(steps=10, head_out_dim=16, head_hidden_dim=8, head_bottleneck_dim=4, head_layers=2)
    assert (cfg.head_weight_decay, cfg.head_weight_decay_end, cfg.grad_clip) == (0.04, 0.4, 3.0)  # DINO's values
    tr = RSMCLIPTrainer(lm.model, lm.tokenizer, lm.mean, lm.std, cfg, Path("unused"), model_name=lm.model_name)
    assert tr.head_weight_decay_at(0) == pytest.approx(0.04) and tr.head_weight_decay_at(10) == pytest.approx(0.4)
    assert tr.head_weight_decay_at(5) == pytest.approx(0.22)
    scheduled = [g for g in tr.optimizer.param_groups if g.get("wd_schedule")]
    assert len(scheduled) == 1 and all(p.ndim >= 2 for p in scheduled[0]["params"])
    params = [p for g in tr.optimizer.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        p.grad = torch.full_like(p, 100.0 if i % 2 else 1e-4)
    tr._clip_gradients()
    for i, p in enumerate(params):  # each tensor on its own (DINO), not one global norm
        assert float(p.grad.norm()) == pytest.approx(3.0 if i % 2 else 1e-4 * math.sqrt(p.numel()), rel=1e-3)
