"""The switches for what the paper leaves implicit (README, Switches): each against what it claims to be."""

import copy

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import DIGITS, REPO, fit

from resnet_repro.batchnorm import GhostBatchNorm2d, precise_bn
from resnet_repro.cli import main
from resnet_repro.experiments import load_experiment
from resnet_repro.fit_config import FIDELITY_SWITCHES
from resnet_repro.train import build_cli
from resnet_repro.module import CaffeSGD, ResNetClassifier
from resnet_repro.rundir import last_checkpoint



def nets(group_size: int) -> tuple[ResNetClassifier, ResNetClassifier]:
    torch.manual_seed(0)
    plain = ResNetClassifier("resnet20")
    ghost = ResNetClassifier("resnet20", bn_group_size=group_size)
    ghost.load_state_dict(plain.state_dict())  # the same keys: checkpoints load either way
    return plain.double().train(), ghost.double().train()  # float64: the two agree to rounding, not to float32's


def test_ghost_bn_over_groups_is_the_batch_split_across_gpus():
    plain, ghost = nets(group_size=4)
    assert sum(isinstance(m, GhostBatchNorm2d) for m in ghost.modules()) == 19
    images, labels = torch.randn(8, 3, 32, 32, dtype=torch.float64), torch.arange(8) % 10
    logits = ghost(images)
    F.cross_entropy(logits, labels).backward()
    # two GPUs of 4 images each: each normalises its own half; DDP averages their gradients
    halves = [plain(images[:4]), plain(images[4:])]
    sum(F.cross_entropy(half, labels[i * 4:(i + 1) * 4]) for i, half in enumerate(halves)).div(2).backward()
    assert torch.allclose(logits, torch.cat(halves), rtol=1e-12, atol=1e-12)
    assert F.cross_entropy(plain(images), labels).item() != pytest.approx(F.cross_entropy(logits, labels).item())
    for (name, a), b in zip(ghost.named_parameters(), plain.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-10, atol=1e-12), name
    # the running statistics move once, by BN's momentum, with the first group's statistics: rank 0's, which DDP's
    # broadcast_buffers hands to every GPU
    rank0 = copy.deepcopy(nets(group_size=4)[0])
    rank0(images[:4])
    for a, b in zip(ghost.buffers(), rank0.buffers()):
        assert torch.equal(a, b)
    assert ghost.net.stem[1].num_batches_tracked == 1 and ghost.net.stem[1].running_mean.abs().sum() > 0
    with pytest.raises(ValueError, match="a batch of 6 images per rank does not split into BN groups of 4"):
        ghost(images[:6])
    ghost.eval()  # evaluation: the running statistics, whatever the batch
    assert torch.allclose(ghost(images[:3]), ghost(images)[:3], rtol=1e-12, atol=1e-12)


def test_precise_bn_sets_the_statistics_of_the_training_images():
    module = ResNetClassifier("resnet20").eval()
    torch.manual_seed(1)
    batches = [torch.randn(8, 3, 32, 32) * 2 + 1 for _ in range(3)]
    last_bn = module.net.stages[-1][-1].bn2
    inputs = []  # the last BN's inputs as training computes them: each batch normalised by its own statistics
    hook = last_bn.register_forward_pre_hook(lambda _, args: inputs.append(args[0].detach().clone()))
    with torch.no_grad():
        reference = copy.deepcopy(module).train()
        [reference(batch) for batch in batches]
    hook.remove()

    assert precise_bn(module, batches) == 24 and not module.training
    stem_input = module.net.stem[0](torch.cat(batches)).detach()  # the first BN's input: no BN before it
    for bn, x in [(module.net.stem[1], stem_input), (last_bn, torch.cat(inputs))]:
        assert torch.allclose(bn.running_mean, x.mean(dim=(0, 2, 3)), atol=1e-5)
        assert torch.allclose(bn.running_var, x.var(dim=(0, 2, 3)), rtol=1e-4, atol=1e-6)


def caffe_reference(weights, grads, lrs, momentum=0.9, decay=1e-4):
    """Caffe's SGD written out: v <- m v + lr (g + wd w), w <- w - v; the weights after each step."""
    w, v, trace = weights.clone(), torch.zeros_like(weights), []
    for g, lr in zip(grads, lrs):
        v = momentum * v + lr * (g + decay * w)
        w = w - v
        trace.append(w.clone())
    return trace


def trace_of(optimizer_class, weights, grads, lrs, state=None):
    w = torch.nn.Parameter(weights.clone())
    optimizer = optimizer_class([w], lr=lrs[0], momentum=0.9, weight_decay=1e-4)
    trace = []
    for g, lr in zip(grads, lrs):
        optimizer.param_groups[0]["lr"] = lr  # what the lr scheduler does before each step
        w.grad = g.clone()
        optimizer.step()
        trace.append(w.detach().clone())
        if state is not None and len(trace) == 4:
            state.update(copy.deepcopy(optimizer.state_dict()), weights=w.detach().clone())
    return trace


def test_caffe_sgd_equals_pytorch_sgd_at_a_constant_lr_and_carries_the_old_lr_after_a_drop():
    torch.manual_seed(0)
    weights, grads = torch.randn(50, dtype=torch.float64), [torch.randn(50, dtype=torch.float64) for _ in range(8)]
    lrs = [0.1] * 4 + [0.01] * 4
    state = {}
    pytorch, caffe = trace_of(torch.optim.SGD, weights, grads, lrs), trace_of(CaffeSGD, weights, grads, lrs, state)
    reference = caffe_reference(weights, grads, lrs)
    assert all(torch.equal(p, c) for p, c in zip(pytorch[:4], caffe[:4]))  # identical before the drop
    assert all(torch.allclose(c, r, rtol=1e-12, atol=1e-14) for c, r in zip(caffe, reference))
    # right after the drop, Caffe's step is larger by m (lr_old - lr_new) b_4, b_4 PyTorch's buffer after step 4
    step_pytorch, step_caffe = pytorch[3] - pytorch[4], caffe[3] - caffe[4]
    buffer4 = (step_pytorch / 0.01 - (grads[4] + 1e-4 * pytorch[3])) / 0.9  # its step 5: lr_new (m b_4 + g_5)
    assert torch.allclose(step_caffe - step_pytorch, 0.9 * (0.1 - 0.01) * buffer4, rtol=1e-9)
    assert (step_caffe - step_pytorch).abs().max() > 1e-3
    # resumed from its state after step 4, it continues exactly
    resumed = torch.nn.Parameter(state.pop("weights"))
    optimizer = CaffeSGD([resumed], lr=0.01, momentum=0.9, weight_decay=1e-4)
    optimizer.load_state_dict(state)
    for g, lr in zip(grads[4:], lrs[4:]):
        optimizer.param_groups[0]["lr"] = lr
        resumed.grad = g.clone()
        optimizer.step()
    assert torch.equal(resumed.detach(), caffe[-1])


def test_warmup_is_on_for_the_residual_110_and_1202_layer_nets_only():
    assert ResNetClassifier("resnet110").warmup and ResNetClassifier("resnet1202").warmup
    assert not ResNetClassifier("plain110").warmup and not ResNetClassifier("resnet56").warmup
    assert not ResNetClassifier("resnet18").warmup and not ResNetClassifier("resnet110", warmup=False).warmup


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
def test_deterministic_turns_cudnn_benchmark_off(tmp_path):
    try:
        cli = build_cli([*DIGITS, "--trainer.deterministic", "true", "--trainer.benchmark", "true", "--wandb", "false",
                         "--run_dir", str(tmp_path / "run")], run=False)
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
        assert cli.config.trainer.benchmark is False
    finally:
        torch.use_deterministic_algorithms(False)


def test_the_recipes_name_every_switch_and_the_experiments_show_theirs(capsys):
    for recipe, absent in [("cifar10/base.yaml", set()), ("digits/base.yaml", set()),
                           ("imagenet/base.yaml", {"data.init_args.train_on_all"})]:
        config = yaml.safe_load((REPO / "experiments" / recipe).read_text())
        for key in set(FIDELITY_SWITCHES) - absent:
            value = config
            for part in key.split("."):
                assert part in value, f"{recipe} has no {key}"
                value = value[part]
    for name in ("table6", "fig6-plain"):  # all 50k training images; the 45k/5k split one key away
        experiment = load_experiment(REPO / f"experiments/cifar10/{name}.yaml")
        assert all(run.setting("data.init_args.train_on_all") is True for run in experiment.runs)
    main(["run", str(REPO / "experiments/cifar10/table6.yaml"), "--dry-run", "--only", "resnet1202-s0"])
    assert "switches: data.init_args.train_on_all true (recipe: false)" in capsys.readouterr().out
    main(["run", str(REPO / "experiments/demo.yaml"), "--dry-run", "--only", "resnet20-s0"])
    assert "switches" not in capsys.readouterr().out


def test_the_switches_go_through_fit_and_test(tmp_path):
    """Ghost BN, Caffe's SGD and determinism in a fit; precise BN in a later `test` of its checkpoint."""
    run_dir = tmp_path / "d" / "switches"
    fit(*DIGITS, "--run_dir", str(run_dir), "--trainer.max_steps", "4", "--data.init_args.batch_size", "32",
        "--model.bn_group_size", "16", "--model.sgd_form", "caffe", "--model.milestones", "[2]",
        "--trainer.deterministic", "true", "--trainer.val_check_interval", "4", "--protocols", '["single_view"]')
    torch.use_deterministic_algorithms(False)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["bn_group_size"] == 16 and config["model"]["sgd_form"] == "caffe"
    checkpoint = torch.load(last_checkpoint(run_dir), weights_only=True)
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["buffer_lr"] == pytest.approx(0.01)

    main(["test", "--config", str(run_dir / "config.yaml"), "--ckpt_path", str(last_checkpoint(run_dir)),
          "--precise_bn_batches", "3", "--protocols", '["single_view"]', "--trainer.enable_progress_bar", "false"])
    rows = pd.read_csv(run_dir / "metrics.csv").dropna(subset=["test/single_view/error"])
    assert rows["test/single_view/precise_bn_images"].tolist()[-1] == 96  # 3 batches of 32, after fit's test
    assert pd.isna(rows["test/single_view/precise_bn_images"].tolist()[0])
    assert torch.equal(torch.load(last_checkpoint(run_dir), weights_only=True)["state_dict"]["net.stem.1.running_mean"],
                       checkpoint["state_dict"]["net.stem.1.running_mean"])  # test writes no checkpoint
