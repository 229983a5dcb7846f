"""Decode untrusted image bytes into RGB pictures, and turn pictures into model input.

`open_image` is the only place that opens image bytes: it refuses what is not an image and what
is too large (judged from the header, before any pixel is decoded, against labelloop's own
`max_pixels`; Pillow's global `MAX_IMAGE_PIXELS` is neither used nor changed). `decode` then
refuses what is truncated, and normalises every mode Pillow knows (alpha, palette, CMYK,
grayscale, 16-bit, float) to 8-bit RGB with EXIF orientation applied.

Decoding at reduced scale: given `min_side`, a JPEG is decoded with Pillow's draft mode (libjpeg's
DCT scaling by 1/2, 1/4 or 1/8) to the smallest scale whose shorter side is still at least
`min_side`, so a 100 MP photo never exists at full size in memory; other formats are decoded in
full and then box-reduced by an integer factor that keeps the shorter side at least `min_side`.
`model_input` asks for twice the model's input size, then `preprocess` does the exact resize.
Against a full decode the model input differs by at most ~0.17 and on average ~0.01 (in
normalised units, where one 8-bit step is ~0.017; measured over scikit-learn's sample photos
upscaled to 4-12 MP, with and without added grain; tests/vision/test_draft.py holds the bound).

`preprocess` is the single definition of model input, shared by training and inference. It is
part of the embedding cache key through `PREPROCESS_VERSION`: bump the version whenever its
output changes (2: reduced-scale decoding).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import struct
from typing import cast

import torch
from PIL import Image, ImageFile, ImageOps

PREPROCESS_VERSION: int = 2

# Pixels an image may declare (its header, before decoding); [training] max_image_pixels.
DEFAULT_MAX_PIXELS = 150_000_000
# Decode at no less than this many times the model's input size, then resize exactly.
DRAFT_FACTOR = 2
# Pillow holds a decoded pixel in 4 bytes (RGB too); a conversion holds a second copy.
_BYTES_PER_PIXEL = 4 * 2

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_WHITE = (255, 255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_BOMB = (Image.DecompressionBombWarning, Image.DecompressionBombError)
_BROKEN = (OSError, SyntaxError, ValueError, EOFError)


class ImageError(Exception):
    """The bytes cannot be used as an image; `reason` (also `str(exc)`) says why, briefly."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


def content_hash(data: bytes) -> str:
    """The sha256 hex digest of the raw bytes (the image's identity in caches)."""
    return hashlib.sha256(data).hexdigest()


class EncodedImage:
    """An image whose header is read and judged, none of its pixels decoded yet."""

    def __init__(self, image: ImageFile.ImageFile) -> None:
        self._image = image
        self.size: tuple[int, int] = image.size

    def decoded_bytes(self, min_side: int | None = None) -> int:
        """About the memory `decode(min_side)` holds at its peak (to bound images in flight)."""
        scale = _draft_scale(self.size, min_side) if self._image.format == "JPEG" else 1
        width, height = (-(-side // scale) for side in self.size)
        return width * height * _BYTES_PER_PIXEL

    def decode(self, min_side: int | None = None) -> Image.Image:
        """The 8-bit RGB picture, its shorter side at least `min_side` (None: full size)."""
        image = self._image
        try:
            if min_side:
                image.draft("RGB", (min_side, min_side))  # a square: EXIF rotation cannot matter
            image.load()
            rgb = _to_rgb(_oriented(image))
        except _BOMB as exc:
            raise ImageError(f"too large: {exc}") from exc
        except _BROKEN as exc:
            raise _load_error(exc) from exc
        if min_side and (factor := min(rgb.size) // min_side) >= 2:
            rgb = rgb.reduce(factor)
        return rgb


def open_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> EncodedImage:
    """Read and judge the header of `data`, or raise `ImageError`."""
    try:
        image = _open(data)
    except _BOMB as exc:  # a plugin's own check (a GIF frame, say)
        raise ImageError(f"too large: {exc}") from exc
    except _BROKEN as exc:
        raise _load_error(exc) from exc
    if image is None:
        raise ImageError("not an image: cannot identify format")
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(f"too large: {width}x{height} pixels exceeds max_pixels {max_pixels}")
    if width <= 0 or height <= 0:
        raise ImageError(f"empty image: {width}x{height} pixels")
    return EncodedImage(image)


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None
) -> Image.Image:
    """Decode `data` into a fully loaded 8-bit RGB image, or raise `ImageError`.

    With `min_side`, at reduced scale where the format allows (see the module's notes)."""
    return open_image(data, max_pixels=max_pixels).decode(min_side)


def model_input(data: bytes, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """`preprocess` of `data` decoded at reduced scale: what training and inference use."""
    return preprocess(decode_image(data, max_pixels=max_pixels, min_side=DRAFT_FACTOR * size), size)


def _open(data: bytes) -> ImageFile.ImageFile | None:
    """`Image.open` without Pillow's global pixel limit (labelloop judges with its own).

    The same search as Pillow's: the common plugins first, then all of them; a plugin that
    rejects the header is passed over."""
    prefix = data[:16]
    for load_plugins in (Image.preinit, Image.init):
        load_plugins()
        for name in list(Image.ID):
            factory, accept = Image.OPEN[name]
            try:
                accepted = True if accept is None else accept(prefix)
                if isinstance(accepted, str) or not accepted:  # a str: Pillow's warning text
                    continue
                return factory(io.BytesIO(data), "")
            except (SyntaxError, IndexError, TypeError, struct.error):
                continue
    return None


def _draft_scale(size: tuple[int, int], min_side: int | None) -> int:
    """The JPEG draft scale Pillow picks for a `min_side` square (see JpegImageFile.draft)."""
    if not min_side:
        return 1
    fits = min(size[0] // min_side, size[1] // min_side)
    return next((scale for scale in (8, 4, 2) if fits >= scale), 1)


def _oriented(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (in place: no second copy of a large picture); a
    malformed EXIF block is ignored, not fatal."""
    with contextlib.suppress(KeyError, TypeError, ValueError, SyntaxError, struct.error):
        ImageOps.exif_transpose(image, in_place=True)
    return image


def _load_error(exc: BaseException) -> ImageError:
    message = str(exc)
    if isinstance(exc, EOFError) or "truncated" in message.lower():
        return ImageError("truncated image")
    return ImageError(f"corrupt image: {message}" if message else "corrupt image")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any loaded Pillow image to RGB, compositing transparency onto white."""
    mode = image.mode
    if mode.startswith("I;16"):
        image = image.convert("I")
        mode = "I"
    if mode in ("I", "F"):
        image = _wide_to_l(image)
        mode = "L"
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE)
        background.alpha_composite(rgba)
        return background.convert("RGB")
    if mode == "RGB":
        return image
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV, ...


def _wide_to_l(image: Image.Image) -> Image.Image:
    """Scale a 32-bit integer ("I") or float ("F") image to 8-bit grayscale without clipping.

    Integer data in 0..255 is kept as is, 0..65535 (16-bit samples) is divided by 257, and
    anything else, like float data, is stretched from its own minimum to its maximum.
    """
    low, high = cast(tuple[float, float], image.getextrema())  # one band: (min, max)
    if image.mode == "I" and low >= 0 and high <= 255:
        scale, offset = 1.0, 0.0
    elif image.mode == "I" and low >= 0 and high <= 65535:
        scale, offset = 1.0 / 257.0, 0.0
    elif high > low:
        scale = 255.0 / (float(high) - float(low))
        offset = -float(low) * scale
    else:
        scale, offset = 0.0, 0.0
    return image.point(lambda value: value * scale + offset).convert("L")


def preprocess(image: Image.Image, size: int) -> torch.Tensor:
    """Model input for `image`: a (3, size, size) float32 tensor.

    The shorter side is resized to `size` (bilinear, antialiased), the centre `size` x `size`
    square is cropped, and the channels are normalised with the ImageNet mean and std.
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    if width <= height:
        new_width, new_height = size, max(size, int(size * height / width))
    else:
        new_width, new_height = max(size, int(size * width / height)), size
    if (new_width, new_height) != (width, height):
        # Pillow's bilinear filter widens its support when shrinking: that is the antialiasing.
        image = image.resize((new_width, new_height), Image.Resampling.BILINEAR)
    left = (new_width - size) // 2
    top = (new_height - size) // 2
    image = image.crop((left, top, left + size, top + size))
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    tensor = pixels.view(size, size, 3).permute(2, 0, 1).to(torch.float32).div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    return tensor.sub_(mean).div_(std).contiguous()
