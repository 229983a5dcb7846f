"""The thorough training mode: fine-tune the whole ResNet on the labeled images.

Slower than a head on cached embeddings by one forward and backward pass per image per epoch,
so it suits a schedule that allows minutes. The result is split into the same parts as a head
version: a backbone (the fine-tuned network without its classifier) and a `Head` (identity
standardisation + the trained classifier), so predictions go through the same code.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn
from torch.nn import functional
from torchvision.transforms import v2

from service.vision.backbone import BackboneSpec, build_resnet
from service.vision.head import Head, fit_temperature, holdout_mask
from service.vision.image_store import StackedImages
from service.vision.metrics import Metrics, compute_metrics

LEARNING_RATE = 0.01
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4


@runtime_checkable
class Images(Protocol):
    """Preprocessed images by row, read a batch at a time (`service.vision.image_store`)."""

    def __len__(self) -> int: ...

    def take(self, rows: Sequence[int] | torch.Tensor) -> torch.Tensor: ...


@dataclass
class FinetuneResult:
    backbone: dict[str, torch.Tensor]  # state dict of the ResNet without `fc.`
    head: Head
    metrics: Metrics | None  # None when no held-out part could be formed


def finetune(
    spec: BackboneSpec,
    images: Images | Sequence[torch.Tensor],
    labels: Sequence[str],
    task_ids: Sequence[int],
    *,
    device: torch.device,
    epochs: int = 10,
    batch_size: int = 32,
    seed: int = 0,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> FinetuneResult:
    """Fine-tune `spec`'s network on preprocessed (3, S, S) images; evaluate on fold 0.

    ``images`` is read a batch at a time (an `ImageStore` keeps them on disk); a plain sequence
    of tensors is read the same way."""
    if not len(images) == len(labels) == len(task_ids):
        raise ValueError("need one label and one task id per image")
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"need at least two classes, got {len(classes)}: {classes}")
    y = torch.tensor([classes.index(label) for label in labels])
    held = [i for i, out in enumerate(holdout_mask(task_ids)) if out]
    kept = [i for i in range(len(labels)) if i not in set(held)]
    if not held or len(set(y[kept].tolist())) < len(classes):
        held, kept = [], list(range(len(labels)))
    x: Images = images if isinstance(images, Images) else StackedImages(images)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_resnet(spec)
        old_fc = model.fc
        assert isinstance(old_fc, nn.Linear)
        model.fc = nn.Linear(old_fc.in_features, len(classes))
        model = model.to(device).to(memory_format=torch.channels_last)
        _train(model, x, kept, y[kept], len(classes), device, epochs, batch_size, progress)

    model.eval()
    fc: nn.Linear = model.fc  # type: ignore[assignment]
    head = Head(classes, fc.in_features)
    head.linear.load_state_dict({k: v.cpu() for k, v in fc.state_dict().items()})
    metrics = None
    if held:
        logits = _logits(model, x, held, device, batch_size)
        head.temperature.fill_(fit_temperature(logits, y[held]))
        predicted = logits.argmax(dim=1).tolist()
        metrics = compute_metrics(y[held].tolist(), predicted, classes, n_train=len(kept))
    backbone = {k: v.cpu() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    return FinetuneResult(backbone=backbone, head=head.eval(), metrics=metrics)


def _train(
    model: nn.Module,
    x: Images,
    kept: Sequence[int],
    y: torch.Tensor,
    n_classes: int,
    device: torch.device,
    epochs: int,
    batch_size: int,
    progress: Callable[[int, int], None],
) -> None:
    """``y[i]`` is the label of ``x``'s row ``kept[i]``."""
    rows_of = torch.tensor(list(kept), dtype=torch.long)
    augment: v2.Compose | None = None
    counts = torch.bincount(y, minlength=n_classes).float()
    weight = torch.where(counts > 0, len(y) / (n_classes * counts.clamp_min(1)), 0.0).to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
    )
    steps = epochs * -(-len(y) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    model.train()
    with torch.enable_grad():
        for epoch in range(epochs):
            order = torch.randperm(len(y))
            for start in range(0, len(y), batch_size):
                rows = order[start : start + batch_size]
                # Augmented where the network runs: on a GPU, crops made on the CPU starved it
                # (~600 images/s on an H200 whatever the batch size; bench/vision_device.py).
                images = x.take(rows_of[rows]).to(device)
                if augment is None:
                    size = images.shape[-1]
                    augment = v2.Compose(
                        [
                            v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True),
                            v2.RandomHorizontalFlip(),
                        ]
                    )
                batch = torch.stack([augment(image) for image in images])
                batch = batch.contiguous(memory_format=torch.channels_last)
                optimizer.zero_grad()
                loss = functional.cross_entropy(model(batch), y[rows].to(device), weight=weight)
                torch.autograd.backward(loss)
                optimizer.step()
                schedule.step()
            progress(epoch + 1, epochs)


def _logits(
    model: nn.Module, x: Images, rows: Sequence[int], device: torch.device, batch_size: int
) -> torch.Tensor:
    outputs: list[torch.Tensor] = []
    with torch.no_grad():  # not inference_mode: the temperature fit needs ordinary tensors
        for start in range(0, len(rows), batch_size):
            batch = x.take(rows[start : start + batch_size]).to(device)
            batch = batch.contiguous(memory_format=torch.channels_last)
            outputs.append(model(batch).float().cpu())
    return torch.cat(outputs)
