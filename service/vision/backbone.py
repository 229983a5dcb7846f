"""Frozen ResNet backbones that turn preprocessed images into embedding vectors.

A `BackboneSpec` names the embedding function (architecture, weights, input size), and its
`identity()` is the cache key of the embeddings it produces. Weights are one of:

- ``"imagenet"``: torchvision's default ImageNet weights, downloaded once into the TORCH_HOME
  cache (``$TORCH_HOME/hub/checkpoints``);
- ``"none"``: a random initialisation that is identical in every process (seed 0), for
  offline use and tests;
- a path to a ``.pth`` state dict of the same architecture (its ``fc.`` layer is ignored).
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from service.vision.images import PREPROCESS_VERSION

ARCHITECTURES: tuple[str, ...] = ("resnet18", "resnet34", "resnet50")

_INIT_SEED = 0


class WeightsError(Exception):
    """Backbone weights cannot be obtained or do not fit the architecture."""


@dataclass(frozen=True)
class BackboneSpec:
    """What computes an embedding: architecture, weights and input size."""

    architecture: str = "resnet18"
    weights: str = "imagenet"
    image_size: int = 224

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"unknown architecture {self.architecture!r}; expected one of {ARCHITECTURES}"
            )
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if not self.weights:
            raise ValueError('weights must be "imagenet", "none" or a file path')

    def identity(self) -> str:
        """Stable key of the embedding function, e.g. ``resnet18|none:seed0|224|p1``."""
        return f"{self.architecture}|{self._weights_id()}|{self.image_size}|p{PREPROCESS_VERSION}"

    def _weights_id(self) -> str:
        if self.weights == "imagenet":
            return f"imagenet:{_default_weights(self.architecture).name}"
        if self.weights == "none":
            return f"none:seed{_INIT_SEED}"
        path = _weights_path(self.weights)
        stat = path.stat()
        return f"file:{_file_digest(str(path), stat.st_mtime_ns, stat.st_size)[:16]}"


def _default_weights(architecture: str) -> Any:
    return torchvision.models.get_model_weights(architecture).DEFAULT


def _weights_path(weights: str) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"weights file not found: {path} "
            '(weights must be "imagenet", "none" or the path of a state dict file)'
        )
    return path.resolve()


@functools.lru_cache(maxsize=16)
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    """sha256 of a file; mtime and size are part of the cache key so edits are noticed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (cuda when available, else cpu), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name in ("cpu", "cuda"):
        return torch.device(name)
    prefix, _, index = name.partition(":")
    if prefix == "cuda" and index.isdigit():
        return torch.device("cuda", int(index))
    raise ValueError(f'unknown device {name!r}; expected "auto", "cpu", "cuda" or "cuda:N"')


@dataclass(frozen=True)
class ThreadPlan:
    """How the embedding stage shares the CPU: torch's intra-op threads run the forward pass,
    decoder threads decode and preprocess the next images meanwhile."""

    torch: int
    decode: int


def thread_plan(device: torch.device, cores: int | None = None) -> ThreadPlan:
    """On the CPU, half the cores decode and the rest run the forward pass (2 cores: one each).

    Decoding a camera photo at reduced scale plus its preprocessing costs about as much CPU as
    ResNet18's forward pass of it, so an even split keeps both stages busy; giving torch every
    core instead makes its threads contend with the decoders, and an OpenMP region runs at the
    pace of its slowest, preempted, thread. On a GPU the forward pass costs the CPU little:
    every core decodes, and torch keeps its threads.
    """
    cores = cores or available_cores()
    if device.type == "cpu":
        decode = max(1, cores // 2)
        return ThreadPlan(torch=max(1, cores - decode), decode=decode)
    return ThreadPlan(torch=torch.get_num_threads(), decode=cores)


def available_cores() -> int:
    """The cores this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def build_resnet(spec: BackboneSpec) -> nn.Module:
    """The torchvision ResNet of `spec`, classifier `fc` included, with its weights loaded."""
    constructor = getattr(torchvision.models, spec.architecture)
    if spec.weights == "imagenet":
        weights = _default_weights(spec.architecture)
        try:
            model: nn.Module = constructor(weights=weights)
        except (OSError, RuntimeError, ValueError, EOFError) as exc:
            raise WeightsError(
                f"could not load the ImageNet weights {weights.name} for {spec.architecture} "
                f"({type(exc).__name__}: {exc}). They are downloaded on first use into the "
                f"TORCH_HOME cache ({torch.hub.get_dir()}/checkpoints). Offline, either copy "
                'the file there, or set weights = "none" (random, for testing) or '
                'weights = "/path/to/state_dict.pth".'
            ) from exc
        return model
    path = None if spec.weights == "none" else _weights_path(spec.weights)
    # Random init from a fixed seed, so that "none" (and an fc absent from a file) is
    # identical in every process; forking keeps the caller's RNG state untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_INIT_SEED)
        model = constructor(weights=None)
    if path is not None:
        _load_state_dict_file(model, path, spec.architecture)
    return model


def _load_state_dict_file(model: nn.Module, path: Path, architecture: str) -> None:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and format errors all mean "not a state dict"
        raise WeightsError(f"cannot read weights file {path}: {exc}") from exc
    state = _unwrap_state_dict(loaded, path)
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("fc.") or _fits(own, k, v)}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    if missing or result.unexpected_keys:
        raise WeightsError(
            f"weights file {path} is not a {architecture} state dict: "
            f"missing {_few(missing)}, unexpected {_few(result.unexpected_keys)}"
        )


def _unwrap_state_dict(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(loaded, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise WeightsError(f"weights file {path} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in loaded.items()}


def _fits(own: Mapping[str, torch.Tensor], key: str, value: torch.Tensor) -> bool:
    return key in own and own[key].shape == value.shape


def _few(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:5])
    return f"[{shown}{', ...' if len(keys) > 5 else ''}] ({len(keys)})"


def forward_batch(device: torch.device) -> int:
    """Images per forward pass: 32 on a GPU (it wants them), 8 on the CPU. A CPU runs resnet18
    no slower at 8 than at 32 (15.8 against 10.2 images/s, one thread, measured under load),
    and at 224 px the batch's activations weigh ~210 MB at 32 (conv1's and bn1's outputs, 103
    MB each) against ~55 MB at 8: the difference is most of a photo job's peak above the
    import of torch (bench/photos.py)."""
    return 32 if device.type == "cuda" else 8


class Backbone:
    """A frozen ResNet without its classifier: preprocessed images in, embeddings out."""

    def __init__(
        self, spec: BackboneSpec, device: torch.device, *, batch_size: int | None = None
    ) -> None:
        batch_size = forward_batch(device) if batch_size is None else batch_size
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        model = build_resnet(spec)
        fc = model.fc
        if not isinstance(fc, nn.Linear):
            raise TypeError(f"{spec.architecture} has no linear fc layer")
        self.spec = spec
        self.device = device
        self.dim: int = fc.in_features
        self.batch_size = batch_size
        self.forward_count = 0
        model.fc = nn.Identity()
        model.requires_grad_(False)
        self.model = model.eval().to(device).to(memory_format=torch.channels_last)

    def embed(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """(N, dim) float32 CPU embeddings of preprocessed (3, S, S) image tensors."""
        size = self.spec.image_size
        for index, image in enumerate(images):
            if image.shape != (3, size, size):
                raise ValueError(
                    f"image {index} has shape {tuple(image.shape)}, expected (3, {size}, {size})"
                )
        outputs: list[torch.Tensor] = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                chunk = images[start : start + self.batch_size]
                batch = torch.stack(list(chunk)).to(self.device, dtype=torch.float32)
                batch = batch.contiguous(memory_format=torch.channels_last)
                outputs.append(self.model(batch).float().cpu())
                self.forward_count += len(chunk)
        if not outputs:
            return torch.empty((0, self.dim), dtype=torch.float32)
        # Concatenating outside inference mode gives an ordinary tensor that callers may
        # modify in place or use in autograd (e.g. to train a head).
        return torch.cat(outputs)
