"""The fast path: it changes no result, keeps the host out of the training steps, and the bench measures it."""

import re

import lightning as L
import pytest
import torch
import yaml
from torch import nn
from torch._dynamo.utils import counters
from torch.overrides import TorchFunctionMode

from helpers import DIGITS, REPO, cli_error, fit, summary, train_rows
from resnet_repro import bench
from resnet_repro.bench import saved_for_backward
from resnet_repro.timing import WarmUp
from resnet_repro.cli import main
from resnet_repro.data import DigitsDataModule
from resnet_repro.module import ResNetClassifier
DIGITS_NO_VALIDATION = [*DIGITS, "--trainer.limit_val_batches", "0"]



def test_the_fast_path_gives_the_plain_paths_loss_curve_and_weights(tmp_path):
    # channels_last and torch.compile against contiguous eager, through the real fit path: train, validate and
    # checkpoint at iteration 2, train on, then precise BN and the test on the compiled net. At the warm-up lr
    # 0.01: at 0.1 the first steps on the digits amplify rounding differences ~10x per step (a relative 4e-4
    # by step 3 from channels_last alone), which would hide nothing but also prove nothing.
    runs = {"plain": ["--model.channels_last", "false"],
            "fast": ["--model.channels_last", "true", "--model.compile_mode", "default"]}
    counters.clear()
    for name, switches in runs.items():
        fit("--config", str(REPO / "experiments/digits/base.yaml"), "--run_dir", str(tmp_path / name),
            "--trainer.max_steps", "4", "--model.lr", "0.01", "--trainer.val_check_interval", "2",
            "--checkpoint.every_n_train_steps", "2", "--precise_bn_batches", "2", "--protocols", '["single_view"]',
            *switches)
    assert counters["stats"]["unique_graphs"] >= 1  # the fast run did run compiled
    for name in runs:  # validated at 2 and 4 between the iterations, tested after precise BN
        assert summary(tmp_path / name)["status"] == "finished" and "test/single_view/precise_bn_images" in summary(
            tmp_path / name)
    assert yaml.safe_load((tmp_path / "fast" / "config.yaml").read_text())["trainer"]["inference_mode"] is False
    plain, fast = train_rows(tmp_path / "plain"), train_rows(tmp_path / "fast")
    assert list(fast.index) == list(plain.index) == [1, 2, 3, 4]
    assert fast["train/loss"].tolist() == pytest.approx(plain["train/loss"].tolist(), rel=1e-4)
    assert fast["train/loss"].iloc[-1] < fast["train/loss"].iloc[0]  # and it learns
    # the same weights and BN statistics after the 4 steps (a BN update done twice would be off by ~60%)
    states = {name: torch.load(tmp_path / name / "checkpoints/last.ckpt", weights_only=False)["state_dict"]
              for name in runs}
    assert states["fast"].keys() == states["plain"].keys()
    for key, value in states["plain"].items():
        torch.testing.assert_close(states["fast"][key], value, rtol=1e-2, atol=1e-4, msg=key)


def test_an_unknown_compile_mode_is_one_line(tmp_path):
    message = cli_error("fit", *DIGITS_NO_VALIDATION, "--run_dir", str(tmp_path / "run"), "--model.compile_mode", "fastest")
    assert "compile_mode" in message and "reduce-overhead" in message
    assert not (tmp_path / "run").exists()


class HostReads(TorchFunctionMode):
    """Records each read of a tensor's value by the host (the calls that wait for a GPU to finish its queued
    work), with the iteration it happens in."""

    READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.__bool__,
             torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.__index__, torch.is_nonzero, torch.equal}

    def __init__(self, trainer: L.Trainer):
        super().__init__()
        self.trainer, self.iterations = trainer, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.READS:
            self.iterations.append(self.trainer.global_step + 1)
        return func(*args, **(kwargs or {}))


class RecordHostReads(L.Callback):
    def on_train_start(self, trainer, pl_module) -> None:
        self.reads = HostReads(trainer).__enter__()

    def on_train_end(self, trainer, pl_module) -> None:
        self.reads.__exit__(None, None, None)


def test_training_steps_read_nothing_back_but_at_the_log_flushes():
    recorder = RecordHostReads()
    trainer = L.Trainer(accelerator="cpu", max_steps=12, log_every_n_steps=5, logger=False, limit_val_batches=0,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[recorder])
    trainer.fit(ResNetClassifier("resnet20"), DigitsDataModule(batch_size=32))
    assert trainer.global_step == 12
    assert sorted(set(recorder.reads.iterations)) == [5, 10]  # one batched read of the buffered metrics each


def test_saved_for_backward_counts_each_kept_tensor_once():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.ReLU())
    images = torch.randn(2, 3, 8, 8)
    output, saved = saved_for_backward(lambda: net(images))
    # the conv keeps its input and weight, the ReLU its output (fp32: 4 bytes each)
    assert saved == 4 * (images.numel() + net[0].weight.numel() + output.numel())
    # twice: the same input and weight are kept once, each ReLU output once (the addition keeps nothing)
    output, saved = saved_for_backward(lambda: net(images) + net(images))
    assert saved == 4 * (images.numel() + net[0].weight.numel() + 2 * output.numel())


def warm_up_over_after(step_seconds: list[float], minimum: int, monkeypatch) -> tuple[int, str]:
    """How many steps a WarmUp lets pass when the steps take `step_seconds`, and its note."""
    clock = iter([sum(step_seconds[:i]) for i in range(len(step_seconds) + 1)])
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock))
    warm_up = WarmUp(minimum, 50, torch.device("cpu"))
    steps = 0
    while not warm_up.over():
        steps += 1
    return steps, warm_up.note()


def test_the_warm_up_lasts_until_three_steps_agree_within_ten_percent(monkeypatch):
    # oneDNN's set-up: slow first steps, then a steady 0.3 s; the minimum of 3 alone would time the set-up
    assert warm_up_over_after([2.0, 1.2, 0.6, 0.33, 0.30, 0.31, 0.3, 0.3], 3, monkeypatch) == (
        6, "after 6 warm-up steps")
    # a steady start still waits for the minimum
    assert warm_up_over_after([0.3] * 12, 10, monkeypatch) == (10, "after 10 warm-up steps")
    # never steady: it stops at the limit and says so
    assert warm_up_over_after([0.2, 0.3] * 30, 1, monkeypatch) == (
        50, "after 50 warm-up steps, not steady: the rate includes the spread")


def test_bench_prints_the_three_figures_their_ratios_and_the_projection(capsys):
    main(["bench", "resnet20", "--device", "cpu", "--steps", "2", "--warmup", "1", "--warmup-limit", "4",
          "--batch-size", "32",
          "--workers", "0", "--bn-group-size", "16"])
    out = capsys.readouterr().out
    assert "BN groups 16" in out
    rates = {k: float(v.replace(",", "")) for k, v in re.findall(r"(fit|compute|dataloader):\s+([\d,]+) images/s", out)}
    assert set(rates) == {"fit", "compute", "dataloader"} and all(rate > 0 for rate in rates.values())
    assert len(re.findall(r"images/s .*\(after \d+ warm-up steps", out)) == 3, out
    # the rates are printed to the image/s, the ratios to 0.01x: a ratio must lie in what the rounding allows (on a
    # slow machine, 59 and 29 images/s may be 59.4 and 28.6)
    def between(printed: float, value, low, high) -> bool:
        return value(low) - 0.005 <= printed <= value(high) + 0.005

    ratios = re.search(r"fit / dataloader = ([\d.]+)x   fit / compute = ([\d.]+)x", out)
    for printed, other in [(ratios[1], "dataloader"), (ratios[2], "compute")]:
        fit_rate, other_rate = rates["fit"], rates[other]
        assert between(float(printed), lambda d: (fit_rate + d) / (other_rate - d), -0.5, 0.5), (printed, rates)
    step = re.search(r"step: +([\d,]+) ops per step \(ATen calls but views and allocations; each a kernel launch on a GPU\), "
                     r"([\d,.]+) ms of host time per step on 1x1 images", out)
    assert step and float(step[2].replace(",", "")) > 0, out
    # the profiler pass: on a CPU the outermost ATen calls of a compute step, their time within the step's own
    profile = re.search(r"profile: +([\d,]+) ATen calls per compute step, ([\d,.]+) ms busy of its ([\d,.]+) ms "
                        r"under the profiler \((\d+)%", out)
    kernels, busy, wall = (float(profile[i].replace(",", "")) for i in (1, 2, 3))
    assert kernels > 100 and 0 < busy <= wall, out
    kept = float(re.search(r"autograd keeps ([\d,]+) MiB", out)[1].replace(",", ""))
    assert kept > 0
    minutes = float(re.search(r"64k iterations of 32 at the fit rate: ([\d,.]+) min", out)[1].replace(",", ""))
    assert between(minutes, lambda d: 64_000 * 32 / (rates["fit"] - d) / 60, -0.5, 0.5), (minutes, rates)


def test_the_sgd_update_of_every_parameter_is_a_few_calls_not_a_few_per_parameter():
    from resnet_repro.bench import OpCounter

    module = ResNetClassifier("resnet56")
    optimizer = module.configure_optimizers()["optimizer"]
    for parameter in module.parameters():
        parameter.grad = torch.ones_like(parameter)
    optimizer.step()  # the first step makes the momentum buffers
    with OpCounter() as counter:
        optimizer.step()
    assert len(list(module.parameters())) == 167 and counter.count <= 6  # per parameter, it was 4 each: 668


def test_a_step_launches_what_the_net_needs_and_little_more():
    from resnet_repro.bench import launches_per_step

    plain, groups = (launches_per_step("resnet20", "cpu", 32, "32-true", None, group) for group in (None, 16))
    # ResNet-20's 20 weighted layers, each with its BN and ReLU, forward and backward, and the step around them:
    # about 10 launches per layer (with an SGD update per parameter it was 23: 204 + 4 x 65)
    # two BN groups cost, per BN layer, a second BN call forward and backward, the concatenation of the groups and
    # its backward, and the sum of the groups' weight and bias gradients: 6 more (copying the running statistics
    # for every group and averaging them, it was 16)
    assert plain[0] <= 12 * 20 and plain[0] < groups[0] <= plain[0] + 6 * 19


def test_bench_refuses_zero_steps():
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "resnet20", "--device", "cpu", "--steps", "0"])
    assert "argument --steps: '0' is not a whole number, 1 or more" in str(exit_.value.code)
