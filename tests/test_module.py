import pytest
import torch

from resnet_repro.module import ResNetClassifier


def test_multi_view_scores_are_softmax_averages_over_the_views():
    module = ResNetClassifier("resnet20", num_classes=10).eval()
    views = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        expected = torch.stack([module.net(views[:, v]).softmax(1) for v in range(3)]).mean(0)
        assert torch.allclose(module.eval_scores(views), expected, atol=1e-6)  # 10-crop layout B x V x C x H x W
        scales = [torch.randn(2, 3, s, s) for s in (32, 48)]
        expected = (module.net(scales[0]).softmax(1) + module.net(scales[1]).softmax(1)) / 2
        assert torch.allclose(module.eval_scores(scales), expected, atol=1e-6)  # multi-scale list


def test_top1_and_top5_error_and_image_count():
    module = ResNetClassifier("resnet20", num_classes=10, top5=True)
    metrics = module.eval_metrics["test"]
    scores = torch.eye(10)[[0, 1, 2, 3]] + torch.linspace(0, 0.5, 10)  # predicted 0, 1, 2, 3; 9 ranks second
    labels = torch.tensor([0, 1, 9, 5])  # right, right, second-ranked, not in the top 5 (ranks: 2, 9, 8, 7, 6)
    for accuracy in metrics["accuracy"].values():
        accuracy.update(scores, labels)
    metrics["images"].update(torch.tensor(4.0))
    assert 1 - metrics["accuracy"]["top1"].compute() == pytest.approx(0.5)
    assert 1 - metrics["accuracy"]["top5"].compute() == pytest.approx(0.25)
    assert metrics["images"].compute() == 4


def test_lr_multiplier_follows_milestones_and_warmup():
    module = ResNetClassifier("resnet110", lr=0.1, milestones=[32_000, 48_000])
    assert module.warming_up and module.lr_multiplier(0) == pytest.approx(0.1)  # 0.01 / 0.1
    module.warmup_ended_at = 400
    factors = [module.lr_multiplier(step) for step in (400, 31_999, 32_000, 47_999, 48_000, 63_999)]
    assert factors == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
