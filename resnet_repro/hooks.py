"""A pass over some batches with forward hooks on a net: what precise BN and the layer responses both make."""

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from torch.utils.hooks import RemovableHandle


@contextmanager
def hooked(model: nn.Module, hooks: list[RemovableHandle], training: bool) -> Iterator[None]:
    """`model` in train or eval mode with `hooks` registered, for a pass over some batches; on the way out, however
    it ends, the hooks are removed and the model's mode is restored."""
    was_training = model.training
    model.train(training)
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
