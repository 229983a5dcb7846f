"""Tests of service.vision: decoding, preprocessing, backbones and heads (CPU, small)."""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from PIL import Image

from service.vision.backbone import (
    Backbone,
    BackboneSpec,
    WeightsError,
    build_resnet,
    forward_batch,
    resolve_device,
)
from service.vision.compare import paired, refit_predictions
from service.vision.head import Head, evaluate, fold_of, holdout_mask, train_head
from service.vision.images import (
    DEFAULT_MAX_PIXELS,
    PREPROCESS_VERSION,
    ImageError,
    content_hash,
    decode_image,
    open_image,
    preprocess,
)
from service.vision.metrics import compute_metrics

SIZE = 64
CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from threads, and lose a lot on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator)
    return Image.frombytes("RGB", (width, height), bytes(pixels.flatten().tolist()))


def png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR is patched to claim width x height (CRC fixed up)."""
    data = bytearray(encode(Image.new("RGB", (1, 1)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_content_hash_is_sha256() -> None:
    assert content_hash(b"abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_white(mode: str) -> None:
    image = Image.new("RGBA", (4, 2), (0, 0, 0, 0))
    image.putpixel((0, 0), (200, 0, 0, 255))
    decoded = decode_image(encode(image.convert(mode), "PNG"))
    assert decoded.mode == "RGB"
    assert decoded.getpixel((3, 1)) == (255, 255, 255)
    expected = (200, 0, 0) if mode == "RGBA" else (60, 60, 60)  # LA: grey of that red
    assert decoded.getpixel((0, 0)) == pytest.approx(expected, abs=2)


def test_palette_transparency_is_white() -> None:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    image.putpixel((1, 1), 1)
    data = encode(image, "PNG", transparency=0)
    decoded = decode_image(data)
    assert decoded.mode == "RGB"
    assert decoded.getpixel((0, 0)) == (255, 255, 255)
    assert decoded.getpixel((1, 1)) == (10, 200, 30)


@pytest.mark.parametrize("fmt", ["TIFF", "JPEG"])
def test_cmyk(fmt: str) -> None:
    data = encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), fmt)
    decoded = decode_image(data)
    assert decoded.mode == "RGB"
    assert decoded.getpixel((4, 4)) == pytest.approx((255, 0, 0), abs=8)


def test_grayscale() -> None:
    decoded = decode_image(encode(Image.new("L", (3, 3), 77), "PNG"))
    assert decoded.mode == "RGB"
    assert decoded.getpixel((1, 1)) == (77, 77, 77)


def _row_values(image: Image.Image) -> list[int]:
    return [int(image.getpixel((x, 0))[0]) for x in range(image.width)]  # type: ignore[index]


def test_16bit_gradient_stays_a_gradient() -> None:
    width = 256
    samples = [round(x * 65535 / (width - 1)) for x in range(width)]
    image = Image.frombytes("I;16", (width, 1), struct.pack(f"<{width}H", *samples))
    data = encode(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    row = _row_values(decode_image(data))
    assert row == sorted(row)
    assert row[0] <= 1 and row[-1] >= 254
    assert len(set(row)) > 200  # scaled, not clipped to a few values


def test_32bit_integer_image_with_16bit_samples() -> None:
    width = 64
    image = Image.new("I", (width, 1))
    image.putdata([x * 1000 for x in range(width)])
    row = _row_values(decode_image(encode(image, "TIFF")))
    assert row == sorted(row) and len(set(row)) == width


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(image, "JPEG", exif=exif.tobytes())
    assert Image.open(io.BytesIO(data)).size == (40, 20)
    assert decode_image(data).size == (20, 40)


def test_garbage_is_not_an_image() -> None:
    with pytest.raises(ImageError) as caught:
        decode_image(b"this is not an image at all")
    assert caught.value.reason == "not an image: cannot identify format"
    assert str(caught.value) == caught.value.reason


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated(fmt: str, keep: float) -> None:
    data = encode(noise(96, 96), fmt)
    with pytest.raises(ImageError) as caught:
        decode_image(data[: int(len(data) * keep)])
    assert caught.value.reason == "truncated image"


def test_huge_header_is_refused_before_decoding() -> None:
    # The file holds one pixel, so if the pixels were decoded the error would be "truncated
    # image", not "too large"; Pillow's own limit (~89 MP, a warning that pytest makes an
    # error) is neither consulted nor changed.
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError) as caught:
        decode_image(png_claiming(30_000, 30_000))
    assert caught.value.reason == "too large: 30000x30000 pixels exceeds max_pixels 150000000"
    with pytest.raises(ImageError, match="too large: 13000x13000"):
        open_image(png_claiming(13_000, 13_000))  # over ours, under Pillow's hard error
    assert before == Image.MAX_IMAGE_PIXELS


@pytest.mark.parametrize("side", [7_000, 10_000])  # 48 MP, 100 MP: over Pillow's ~89 MP too
def test_camera_sized_headers_are_accepted_by_default(side: int) -> None:
    assert open_image(png_claiming(side, side)).size == (side, side)
    assert DEFAULT_MAX_PIXELS == 150_000_000


def test_max_pixels_is_respected() -> None:
    data = encode(Image.new("RGB", (100, 60)), "PNG")
    assert decode_image(data, max_pixels=6000).size == (100, 60)
    with pytest.raises(ImageError, match="too large: 100x60"):
        decode_image(data, max_pixels=5999)


def test_preprocess() -> None:
    tensor = preprocess(Image.new("RGB", (100, 50), (255, 255, 255)), SIZE)
    assert tensor.shape == (3, SIZE, SIZE) and tensor.dtype == torch.float32
    white = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(tensor[:, 10, 10], white, atol=1e-5)
    # The centre crop keeps the middle: a wide image with a red middle becomes all red.
    image = Image.new("RGB", (300, 100), (0, 0, 0))
    image.paste((255, 0, 0), (100, 0, 200, 100))
    cropped = preprocess(image, SIZE)
    middle = cropped[:, :, 4:-4]  # bilinear blurs the red/black edges a little
    assert middle[0].min() > 2.0 and middle[1].max() < -1.5


# --- backbone -----------------------------------------------------------------------------


def spec(**changes: Any) -> BackboneSpec:
    return BackboneSpec(
        **{"architecture": "resnet18", "weights": "none", "image_size": SIZE, **changes}
    )


@pytest.fixture(scope="module")
def images() -> list[torch.Tensor]:
    return [preprocess(noise(80, 70, seed), SIZE) for seed in range(5)]


def test_identity() -> None:
    assert spec().identity() == f"resnet18|none:seed0|{SIZE}|p{PREPROCESS_VERSION}"
    assert spec().identity() == spec().identity()
    others = {
        spec(architecture="resnet50").identity(),
        spec(weights="imagenet").identity(),
        spec(image_size=SIZE + 32).identity(),
    }
    assert len(others | {spec().identity()}) == 4
    assert "imagenet:IMAGENET1K_V1" in BackboneSpec().identity()
    with pytest.raises(ValueError, match="architecture"):
        BackboneSpec(architecture="vgg16")


def test_identity_of_a_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    path.write_bytes(b"one")
    first = spec(weights=str(path)).identity()
    assert first.split("|")[1] == f"file:{content_hash(b'one')[:16]}"
    path.write_bytes(b"two!")
    assert spec(weights=str(path)).identity() != first


def test_resolve_device() -> None:
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type in ("cpu", "cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda").type == "cuda"
    for bad in ("gpu", "cuda:x", "", "mps"):
        with pytest.raises(ValueError):
            resolve_device(bad)


def test_none_weights_are_identical_across_builds(images: list[torch.Tensor]) -> None:
    torch.manual_seed(123)
    expected_draw = torch.rand(1)
    torch.manual_seed(123)
    first = Backbone(spec(), CPU)
    assert torch.equal(torch.rand(1), expected_draw)  # the caller's RNG is left alone
    second = Backbone(spec(), CPU)
    a, b = first.embed(images[:2]), second.embed(images[:2])
    assert a.shape == (2, 512) and a.dtype == torch.float32 and a.device == CPU
    assert torch.equal(a, b)
    assert not a.is_inference()  # usable in autograd and in-place outside inference mode


def test_forward_count_batching_and_empty(images: list[torch.Tensor]) -> None:
    small = Backbone(spec(), CPU, batch_size=2)
    assert small.dim == 512 and small.forward_count == 0
    batched = small.embed(images)
    assert small.forward_count == 5
    whole = Backbone(spec(), CPU).embed(images)
    assert torch.allclose(batched, whole, atol=1e-4)
    empty = small.embed([])
    assert empty.shape == (0, 512) and small.forward_count == 5
    with pytest.raises(ValueError, match="shape"):
        small.embed([torch.zeros(3, SIZE + 1, SIZE)])


def test_the_cpu_forwards_small_batches_and_a_gpu_large_ones() -> None:
    """On the CPU a batch of 32 at 224 px holds ~210 MB of activations for no speed."""
    assert Backbone(spec(), CPU).batch_size == 8
    assert forward_batch(torch.device("cuda", 0)) == 32


def _resnet18_seeded(seed: int, num_classes: int = 1000) -> torch.nn.Module:
    torch.manual_seed(seed)
    model: torch.nn.Module = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    return model


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model_other_fc"])
def test_weights_file_round_trip(tmp_path: Path, images: list[torch.Tensor], wrap: str) -> None:
    model = _resnet18_seeded(7, num_classes=3 if wrap == "model_other_fc" else 1000)
    state = {f"module.{k}" if wrap != "plain" else k: v for k, v in model.state_dict().items()}
    saved: object = {"plain": state, "state_dict": {"state_dict": state}}.get(
        wrap, {"model": state, "epoch": 3}
    )
    path = tmp_path / "weights.pth"
    torch.save(saved, path)
    backbone = Backbone(spec(weights=str(path)), CPU)
    model.fc = torch.nn.Identity()
    with torch.no_grad():
        expected = model.eval()(torch.stack(images[:2]))
    embedded = backbone.embed(images[:2])
    assert torch.allclose(embedded, expected, atol=1e-4)
    assert not torch.allclose(embedded, Backbone(spec(), CPU).embed(images[:2]), atol=1e-2)


def test_weights_file_errors(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        build_resnet(spec(weights=str(tmp_path / "missing.pth")))
    with pytest.raises(WeightsError, match="not found"):
        spec(weights=str(tmp_path / "missing.pth")).identity()
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        build_resnet(spec(weights=str(garbage)))
    other = tmp_path / "resnet18.pth"
    torch.save(_resnet18_seeded(0).state_dict(), other)
    with pytest.raises(WeightsError, match="not a resnet34 state dict"):
        build_resnet(spec(architecture="resnet34", weights=str(other)))


def test_imagenet_download_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def offline(url: str, *args: object, **kwargs: object) -> None:
        calls.append(url)
        raise OSError("network is unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsError) as caught:
        build_resnet(BackboneSpec(weights="imagenet"))
    message = str(caught.value)
    assert calls and '"none"' in message and "state_dict.pth" in message
    assert "TORCH_HOME" in message and str(tmp_path) in message


# --- head ---------------------------------------------------------------------------------


def test_holdout_mask_is_stable() -> None:
    pinned = "0011000000000000100000000000011011010000"  # ids 1..40; must never change
    assert "".join(str(int(m)) for m in holdout_mask(range(1, 41))) == pinned
    ids = list(range(10_000, 12_000))
    mask = holdout_mask(ids)
    assert mask == holdout_mask(ids) and holdout_mask(ids[:50]) == mask[:50]
    assert 0.17 < sum(mask) / len(mask) < 0.23
    assert 0.45 < sum(holdout_mask(ids, 0.5)) / len(ids) < 0.55
    assert not any(holdout_mask(ids, 0.0)) and all(holdout_mask(ids, 1.0))


def clusters(per_class: int = 60, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    generator = torch.Generator().manual_seed(seed)
    names = ["cat", "ant", "bee"]
    centres = torch.eye(3, dim) * 6.0 + 10.0
    x = torch.cat([centres[c] + torch.randn(per_class, dim, generator=generator) for c in range(3)])
    return x, [name for name in names for _ in range(per_class)]


def test_train_head_separates_clusters() -> None:
    x, labels = clusters()
    result = train_head(x, labels, list(range(len(labels))))
    metrics = result.metrics
    assert metrics is not None
    assert result.head.labels == ["ant", "bee", "cat"] == metrics.labels
    assert metrics.accuracy > 0.9 and metrics.macro_f1 > 0.9
    assert metrics.n_train + metrics.n_holdout == len(labels) and metrics.n_holdout > 10
    assert sum(map(sum, metrics.confusion)) == metrics.n_holdout
    assert len(metrics.confusion) == 3 and all(len(row) == 3 for row in metrics.confusion)
    assert set(metrics.per_class) == {"ant", "bee", "cat"}
    assert sum(c["support"] for c in metrics.per_class.values()) == metrics.n_holdout
    assert json.loads(json.dumps(metrics.to_dict()))["labels"] == metrics.labels
    again = train_head(x, labels, list(range(len(labels))))
    assert torch.equal(result.head.predict_proba(x), again.head.predict_proba(x))


def test_train_head_on_inference_tensors_with_imbalance() -> None:
    x, labels = clusters(per_class=40)
    keep = [i for i, label in enumerate(labels) if label != "ant" or i % 8 == 0]  # 5 ants
    with torch.inference_mode():
        frozen = x[keep].clone()
    result = train_head(frozen, [labels[i] for i in keep], keep, holdout_fraction=0.0)
    assert result.metrics is not None and result.metrics.scheme == "5-fold"  # 85 labels
    predicted = result.head.predict_proba(x).argmax(dim=1)
    assert (predicted[40:80] == 0).float().mean() > 0.9  # the rare class, ant, is learned


def test_too_few_labels_give_no_metrics() -> None:
    kept = [i for i in range(200) if not holdout_mask([i])[0]][:4]
    held = [i for i in range(200) if holdout_mask([i])[0]][:2]
    x = torch.tensor([[0.0, 1.0], [0.1, 0.9], [1.0, 0.0], [0.9, 0.1]])
    labels = ["a", "a", "b", "b"]
    nothing_held = train_head(x, labels, kept)
    assert nothing_held.metrics is None and nothing_held.head.labels == ["a", "b"]
    class_b_only_held = train_head(x, labels, kept[:2] + held)
    assert class_b_only_held.metrics is None
    probabilities = class_b_only_held.head.predict_proba(x)
    assert probabilities.argmax(dim=1).tolist() == [0, 0, 1, 1]  # trained on everything


def test_one_class_is_an_error() -> None:
    with pytest.raises(ValueError, match="need at least two classes, got 1"):
        train_head(torch.zeros(3, 4), ["a"] * 3, [1, 2, 3])


def test_head_bytes_round_trip() -> None:
    x, labels = clusters(per_class=10)
    head = train_head(x, labels, list(range(len(labels)))).head
    restored = Head.from_bytes(head.to_bytes())
    assert restored.labels == head.labels and restored.dim == 16
    assert torch.equal(restored.predict_proba(x), head.predict_proba(x))
    assert torch.allclose(head.predict_proba(x).sum(dim=1), torch.ones(len(x)))
    with pytest.raises(ValueError, match="not a serialised Head"):
        Head.from_bytes(b"junk")


def test_metrics_by_hand() -> None:
    metrics = compute_metrics([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], ["a", "b", "c"], n_train=9)
    assert metrics.confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert metrics.accuracy == pytest.approx(3 / 5)
    assert metrics.per_class["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2.0}
    assert metrics.per_class["b"]["precision"] == pytest.approx(2 / 3)
    assert metrics.per_class["c"]["f1"] == 0.0
    assert metrics.macro_f1 == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert (metrics.n_train, metrics.n_holdout) == (9, 5)


def test_evaluate_rejects_unknown_labels() -> None:
    head = Head(["a", "b"], 2)
    assert evaluate(head, torch.zeros(0, 2), []).n_holdout == 0
    with pytest.raises(ValueError, match="unknown"):
        evaluate(head, torch.zeros(1, 2), ["z"])


def test_few_labels_are_cross_validated_on_stable_folds() -> None:
    x, labels = clusters(per_class=20)
    ids = list(range(1000, 1060))
    result = train_head(x, labels, ids)
    assert result.metrics is not None
    assert result.metrics.scheme == "5-fold"
    assert result.metrics.n_holdout == 60  # every label predicted once, by a head without it
    assert result.metrics.accuracy > 0.9
    # Fold 0 is exactly the held-out fifth, and a task's fold never depends on the others.
    assert [fold_of(t) == 0 for t in ids] == holdout_mask(ids, 0.2)
    assert [fold_of(t) for t in ids[:10]] == [fold_of(t) for t in range(1000, 1010)]


def test_temperature_calibrates_confidence_without_changing_predictions() -> None:
    # Overlapping clusters: a head fitted on them is too sure of itself on new points.
    x, labels = clusters(per_class=60)
    x = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(1)) * 6.0
    result = train_head(x, labels, list(range(len(labels))))
    head = result.head
    assert result.metrics is not None and result.metrics.scheme == "holdout"
    held = [i for i, out in enumerate(holdout_mask(list(range(len(labels))))) if out]
    index = {label: c for c, label in enumerate(head.labels)}
    y = torch.tensor([index[labels[i]] for i in held])
    calibrated = head.predict_proba(x[held])
    temperature = float(head.temperature)
    head.temperature.fill_(1.0)
    raw = head.predict_proba(x[held])
    assert temperature != 1.0
    assert torch.equal(calibrated.argmax(dim=1), raw.argmax(dim=1))
    nll = torch.nn.functional.nll_loss
    assert nll(calibrated.log(), y) <= nll(raw.log(), y) + 1e-6


@pytest.mark.parametrize(("per_class", "scheme"), [(20, "5-fold"), (60, "holdout")])
def test_held_out_predictions_are_what_the_metrics_count(per_class: int, scheme: str) -> None:
    x, labels = clusters(per_class=per_class)
    x = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(2)) * 4.0  # some errors
    ids = list(range(500, 500 + len(labels)))
    result = train_head(x, labels, ids)
    assert result.metrics is not None and result.metrics.scheme == scheme
    if scheme == "holdout":
        assert sorted(result.held_out) == [t for t in ids if fold_of(t) == 0]
    assert len(result.held_out) == result.metrics.n_holdout
    truth = dict(zip(ids, labels, strict=True))
    classes = result.head.labels
    again = compute_metrics(
        [classes.index(truth[t]) for t in result.held_out],
        [classes.index(label) for label in result.held_out.values()],
        classes,
    )
    assert again.macro_f1 == pytest.approx(result.metrics.macro_f1)
    assert 0.5 < again.accuracy < 1.0


def test_a_refit_never_trains_on_the_fold_it_predicts() -> None:
    # Task 7 is labelled ant in training but sits among the cats: a head trained on it
    # memorises it (the noise dimensions let it); a head refit without its fold calls it a cat.
    x, labels = clusters(per_class=20)
    ids = list(range(1, 61))
    labels[6] = "ant"
    noise = torch.randn(60, 48, generator=torch.Generator().manual_seed(3))
    wide = torch.cat([x, noise], dim=1)
    fitted_on_all = train_head(wide, labels, ids).head
    assert fitted_on_all.labels[int(fitted_on_all.predict_proba(wide[[6]]).argmax())] == "ant"
    refit = refit_predictions(wide, labels, ids, wide[[6]], [7], ["ant", "bee", "cat"])
    assert refit == {7: "cat"}
    # A fold whose training part lacks a second class predicts nothing.
    others = [t for t in range(100, 200) if fold_of(t) != fold_of(7)][:2]
    lonely = refit_predictions(
        x[:3], ["ant", "cat", "cat"], [7, *others], x[:1], [7], ["ant", "cat"]
    )
    assert lonely == {}


def test_paired_noise_shrinks_with_the_number_of_held_out_tasks() -> None:
    classes = ["a", "b"]
    same = paired(["a", "b"] * 10, ["a", "b"] * 10, ["a", "b"] * 10, classes)
    assert (same.new_f1, same.old_f1, same.noise) == (1.0, 1.0, 0.0)
    # One image apart: a difference the noise covers, at 50 tasks and at 500.
    noises = []
    for n in (50, 500):
        true = ["a"] * (n - n // 10) + ["b"] * (n // 10)
        new = [*true[:-1], "a"]
        result = paired(true, new, true, classes)
        assert result.old_f1 == 1.0 and -result.difference < result.noise
        noises.append(result.noise)
    assert noises[1] < noises[0] / 3
    # A head that is wrong on a third of them is not noise.
    true = ["a", "b"] * 30
    bad = [label if i % 3 else ("b" if label == "a" else "a") for i, label in enumerate(true)]
    worse = paired(true, bad, true, classes)
    assert -worse.difference > 3 * worse.noise
    # The bootstrap's macro-F1 is compute_metrics' macro-F1.
    figures = compute_metrics([0, 1] * 30, [classes.index(label) for label in bad], classes)
    assert worse.new_f1 == pytest.approx(figures.macro_f1)
    with pytest.raises(ValueError, match="no task"):
        paired([], [], [], classes)
