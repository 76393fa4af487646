"""The paper's training recipe around a registered net, as a LightningModule.

Cross-entropy; SGD with momentum and weight decay; a learning rate that is divided by 10 at fixed
iterations (the schedule is counted in steps, not epochs); for the deep residual CIFAR nets (n >= 18) the
paper's warm-up: lr 0.01 until the training error falls below 80%, then the base lr (Section 4.2). Training
loss, error and lr are logged for every iteration; validation and test top-1 (and top-5) error are
micro-averaged over every image of their set, on any number of ranks. Switches for what the paper leaves
implicit: BN over groups of the batch (`bn_group_size`), Caffe's form of momentum SGD (`sgd_form`).
"""

import math
import sys
from bisect import bisect_right
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from jsonargparse.typing import PositiveInt
from torch import Tensor
from torchmetrics import SumMetric
from torchmetrics.classification import MulticlassAccuracy

from .batchnorm import GhostBatchNorm2d, bn_groups
from .models import build_model, get_spec
from .rundir import LR, TRAIN_ERROR, TRAIN_LOSS, metric_key

# torch.compile's modes. reduce-overhead adds CUDA graphs, which pay off for thin deep nets whose small kernels
# leave the GPU waiting for launches; on a CPU it is the same as default.
CompileMode = Literal["default", "reduce-overhead", "max-autotune"]


class CaffeSGD(torch.optim.SGD):
    """Momentum SGD in Caffe's form, which the paper's authors used: the lr is inside the momentum buffer,
    v <- m v + lr (g + wd w), w <- w - v. PyTorch's form keeps it outside: v <- m v + (g + wd w), w <- w - lr v.
    The two take the same steps at a constant lr; after an lr drop Caffe's buffer still carries the old lr, so
    its next steps are larger, by a factor that decays as m^k. Implemented as PyTorch's SGD whose buffers are
    rescaled by old lr / new lr whenever the lr changes, which is Caffe's update exactly (up to rounding)."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            buffer_lr = group.setdefault("buffer_lr", group["lr"])  # the lr the buffers hold (in the checkpoint)
            if buffer_lr != group["lr"]:
                buffers = [self.state[p]["momentum_buffer"] for p in group["params"]
                           if self.state[p].get("momentum_buffer") is not None]
                torch._foreach_mul_(buffers, buffer_lr / group["lr"])
                group["buffer_lr"] = group["lr"]
        return super().step(closure)


SGD_FORMS = {"pytorch": torch.optim.SGD, "caffe": CaffeSGD}


class ResNetClassifier(L.LightningModule):
    """A registered net trained by the paper's recipe (`--model.*`; the recipes set the paper's values).

    Args:
        model: the net (`resnet-repro models` lists them with their counts): CIFAR-10's 6n+2 layers plain20
            plain32 plain44 plain56 plain110 plain1202 resnet20 resnet32 resnet44 resnet56 resnet110 resnet1202;
            ImageNet's plain18 plain34 resnet18 resnet34 resnet50 resnet101 resnet152
        shortcut: a residual net's projection shortcuts: A (zero-padding identity), B (projections where the
            shape changes), C (all projections); null: the net's default, A for CIFAR nets, B for ImageNet nets
        num_classes: outputs of the final fc layer
        lr: base learning rate of SGD
        momentum: SGD momentum
        weight_decay: L2 weight decay, on every parameter (the paper's Caffe setting)
        milestones: iterations at which the lr is multiplied by lr_decay
        lr_decay: factor of each lr drop
        warmup: lr warmup_lr until the training error falls below warmup_until_error (Section 4.2); null: on
            for the residual CIFAR nets of n >= 18 (110 and 1202 layers)
        warmup_lr: learning rate during the warm-up
        warmup_until_error: training error (a fraction) that ends the warm-up
        warmup_max_steps: the warm-up ends here at the latest (the paper saw about 400 iterations)
        top5: also log top-5 error (ImageNet)
        bn_group_size: BN over groups of this many images of a rank's batch (the CIFAR-10 recipe's 64: BN per
            GPU of the paper's two); null: over the whole batch
        sgd_form: where the lr sits in momentum SGD: pytorch (outside the buffer) or caffe (inside, as the
            paper's authors trained; steps differ just after an lr drop)
        channels_last: NHWC activations (faster convolutions on CPUs and tensor cores; same arithmetic)
        compile_mode: torch.compile the net in this mode (reduce-overhead adds CUDA graphs); null: eager
    """

    def __init__(
        self,
        model: str = "resnet20",
        shortcut: Literal["A", "B", "C"] | None = None,
        num_classes: int = 10,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        milestones: list[int] = [32_000, 48_000],
        lr_decay: float = 0.1,
        warmup: bool | None = None,
        warmup_lr: float = 0.01,
        warmup_until_error: float = 0.8,
        warmup_max_steps: int = 2_000,
        top5: bool = False,
        bn_group_size: PositiveInt | None = None,
        sgd_form: Literal["pytorch", "caffe"] = "pytorch",
        channels_last: bool = True,
        compile_mode: CompileMode | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.net = build_model(model, num_classes=num_classes, **({"shortcut": shortcut} if shortcut else {}))
        if bn_group_size is not None:
            GhostBatchNorm2d.convert(self.net, bn_group_size)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)
        if compile_mode is not None:
            self.net.compile(mode=compile_mode)  # in place: the state dict keeps its keys, so checkpoints load either way
        self.num_params = sum(p.numel() for p in self.net.parameters())
        spec = get_spec(model)
        # The paper warms up its 110-layer ResNet, for which lr 0.1 is "slightly too large to start converging",
        # and trains the 1202-layer one "as described above"; it says nothing of a warm-up for plain-110.
        self.warmup = warmup if warmup is not None else (spec.input_size == 32 and spec.residual and spec.depth >= 110)
        self.warmup_ended_at: int | None = None  # the iteration after which the base lr applies
        self.restored_step = 0  # the iterations behind the weights loaded from a checkpoint
        self.last_checkpoint_step: int | None = None  # the iteration of the last checkpoint written or loaded
        self.eval_metrics = torch.nn.ModuleDict({split: self._eval_metric_set() for split in ("val", "test")})
        self._train_log: list[tuple[int, float, Tensor]] = []  # (iteration, lr, [loss, error]) not yet logged
        self.precise_bn_images = 0  # the training images behind the BN statistics of the latest test (precise BN)

    def _eval_metric_set(self) -> torch.nn.ModuleDict:
        classes = self.hparams.num_classes
        accuracy = {"top1": MulticlassAccuracy(classes, top_k=1, average="micro")}
        if self.hparams.top5:
            accuracy["top5"] = MulticlassAccuracy(classes, top_k=5, average="micro")
        return torch.nn.ModuleDict({"accuracy": torch.nn.ModuleDict(accuracy), "images": SumMetric()})

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images.contiguous(memory_format=self.memory_format))

    # --- the learning-rate schedule -------------------------------------------------------------------
    @property
    def warming_up(self) -> bool:
        return self.warmup and self.warmup_ended_at is None

    def lr_multiplier(self, step: int) -> float:
        """The lr of iteration `step + 1` as a multiple of the base lr."""
        if self.warming_up:
            return self.hparams.warmup_lr / self.hparams.lr
        return self.hparams.lr_decay ** bisect_right(self.hparams.milestones, step)

    def configure_optimizers(self):
        # foreach: the update of every parameter in a few calls, not ~4 per parameter (PyTorch picks it on GPUs only)
        optimizer = SGD_FORMS[self.hparams.sgd_form](self.parameters(), lr=self.hparams.lr, momentum=self.hparams.momentum,
                                                     weight_decay=self.hparams.weight_decay, foreach=True)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.lr_multiplier(step))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # --- training -------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.trainer.is_global_zero:
            line, shrunk = bn_groups(self.hparams.bn_group_size, self.trainer.datamodule.batch_size,
                                     self.trainer.world_size)
            if shrunk:
                print(f"warning: {line}", file=sys.stderr)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        error = (logits.argmax(1) != labels).float().mean()
        iteration = self.global_step + 1
        self._train_log.append((iteration, self.optimizers().param_groups[0]["lr"], torch.stack([loss.detach(), error])))
        if self.warming_up:  # a host sync per step, but only for the few hundred steps of the warm-up
            global_error = self.trainer.strategy.reduce(error.detach().clone(), reduce_op="mean").item()
            if global_error < self.hparams.warmup_until_error or iteration >= self.hparams.warmup_max_steps:
                self.warmup_ended_at = iteration
        if iteration % self.trainer.log_every_n_steps == 0:
            self.flush_train_log()
        return loss

    def flush_train_log(self) -> None:
        """Send the buffered per-iteration metrics to the loggers: one device sync (and, under DDP, one
        all-reduce of the per-rank means) per flush instead of one per iteration."""
        if not self._train_log:
            return
        iterations, lrs, values = zip(*self._train_log)
        self._train_log = []
        values = self.trainer.strategy.reduce(torch.stack(values), reduce_op="mean").tolist()
        for iteration, lr, (loss, error) in zip(iterations, lrs, values):
            if not math.isfinite(loss):
                raise FloatingPointError(f"the training loss became {loss} at iteration {iteration}; the run "
                                         f"stopped. {self.kept_weights()}")
            for logger in self.loggers:
                logger.log_metrics({TRAIN_LOSS: loss, TRAIN_ERROR: error, LR: lr}, step=iteration)
        for logger in self.loggers:
            logger.save()  # on disk now: a run killed later keeps its log up to here

    def on_validation_start(self) -> None:
        self.flush_train_log()

    def on_train_end(self) -> None:
        self.flush_train_log()

    def kept_weights(self) -> str:
        """What a run that has to stop because its numbers diverged leaves behind, in words."""
        if self.last_checkpoint_step is None:
            return ("No checkpoint was written before that, so there are no good weights to go back to: delete the "
                    "run directory and start over with a lower lr")
        return (f"Its last checkpoint, from iteration {self.last_checkpoint_step}, holds the last good weights "
                f"(try a lower lr)")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the iterations up to this checkpoint reach metrics.csv before the checkpoint does: a run killed after
        # it resumes from here and logs only later iterations again, so no iteration's row is ever lost
        self.flush_train_log()
        states = [t.flatten() for t in checkpoint["state_dict"].values() if t.is_floating_point()]  # weights, BN stats
        if not torch.isfinite(torch.cat(states)).all():  # one reduction and one host read, not one per tensor
            raise FloatingPointError(f"the weights are no longer finite at iteration {self.global_step}; the run "
                                     f"stopped without writing them. {self.kept_weights()}")
        checkpoint["warmup_ended_at"] = self.warmup_ended_at
        self.last_checkpoint_step = self.global_step

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.warmup_ended_at = checkpoint.get("warmup_ended_at")
        self.restored_step = self.last_checkpoint_step = checkpoint["global_step"]

    # --- evaluation -----------------------------------------------------------------------------------
    def eval_scores(self, images: Tensor | list[Tensor]) -> Tensor:
        """Softmax scores. Multi-view batches are averaged over their views: B x V x C x H x W (10-crop)
        or a list of B x C x H x W tensors (the fully-convolutional multi-scale test)."""
        if isinstance(images, (list, tuple)):
            return torch.stack([self(view).softmax(1) for view in images]).mean(0)
        if images.ndim == 5:
            b, v = images.shape[:2]
            return self(images.flatten(0, 1)).softmax(1).view(b, v, -1).mean(1)
        return self(images).softmax(1)

    @property
    def val_splits(self) -> list[str]:
        return getattr(self.trainer.datamodule, "val_splits", ["val"])

    def _eval_step(self, batch: tuple[Tensor, Tensor], split: str) -> None:
        images, labels = batch
        metrics = self.eval_metrics[split]
        scores = self.eval_scores(images)
        for accuracy in metrics["accuracy"].values():
            accuracy.update(scores, labels)
        metrics["images"].update(torch.tensor(float(len(labels)), device=scores.device))

    def _log_eval(self, splits: list[str]) -> None:
        """During fit and `validate`, `val/` and `test/`: the curves. A `test` run is an evaluation under a test
        protocol (the data module's `eval_protocol`), logged as `test/<protocol>/`. Each is logged at the
        iteration of the weights it evaluated, so the latest evaluation of those weights is the last row for
        that step in metrics.csv."""
        step = max(self.global_step, self.restored_step)
        for split in splits:
            metrics = self.eval_metrics[split]
            protocol = self.trainer.datamodule.eval_protocol if self.trainer.state.fn == "test" else None
            # compute() reduces the metric states over the ranks, so every rank has the same global value
            values = {metric_key(split, "error", protocol): 1 - metrics["accuracy"]["top1"].compute()}
            if "top5" in metrics["accuracy"]:
                values[metric_key(split, "top5_error", protocol)] = 1 - metrics["accuracy"]["top5"].compute()
            values[metric_key(split, "images", protocol)] = metrics["images"].compute()
            if protocol and self.precise_bn_images:
                values[metric_key(split, "precise_bn_images", protocol)] = self.precise_bn_images
            for metric in [*metrics["accuracy"].values(), metrics["images"]]:
                metric.reset()
            for name, value in values.items():
                self.log(name, value, logger=False)  # Lightning would log at its own step count
            for logger in self.loggers:
                logger.log_metrics({name: float(value) for name, value in values.items()}, step=step)
                logger.save()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, self.val_splits[dataloader_idx])

    def on_validation_epoch_end(self) -> None:
        self._log_eval(self.val_splits)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_eval(["test"])
