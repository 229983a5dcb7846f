"""Decode untrusted image bytes into RGB pictures, and turn pictures into model input.

`decode_image` is the only place that opens image bytes: it refuses what is not an image, what
is truncated and what is too large (judged from the header, before any pixel is decoded), and
normalises every mode Pillow knows (alpha, palette, CMYK, grayscale, 16-bit, float) to 8-bit
RGB with EXIF orientation applied.

`preprocess` is the single definition of model input, shared by training and inference. It is
part of the embedding cache key through `PREPROCESS_VERSION`: bump the version whenever its
output changes.
"""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
from typing import cast

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

PREPROCESS_VERSION: int = 1

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_WHITE = (255, 255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


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


def decode_image(data: bytes, *, max_pixels: int = 40_000_000) -> Image.Image:
    """Decode `data` into a fully loaded 8-bit RGB image, or raise `ImageError`."""
    with warnings.catch_warnings():
        # Pillow's own bomb check warns (or raises past twice its limit) inside open();
        # make the warning an exception here only, leaving Pillow's global limit alone.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise ImageError(f"too large: {exc}") from exc
        except UnidentifiedImageError as exc:
            raise ImageError("not an image: cannot identify format") from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise _load_error(exc) from exc
        with image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    f"too large: {width}x{height} pixels exceeds max_pixels {max_pixels}"
                )
            if width <= 0 or height <= 0:
                raise ImageError(f"empty image: {width}x{height} pixels")
            try:
                image.load()
                rgb = _to_rgb(_oriented(image))
            except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
                raise ImageError(f"too large: {exc}") from exc
            except (OSError, SyntaxError, ValueError, EOFError) as exc:
                raise _load_error(exc) from exc
    return rgb


def _oriented(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a malformed EXIF block is ignored, not fatal."""
    try:
        return ImageOps.exif_transpose(image)
    except (KeyError, TypeError, ValueError, SyntaxError, struct.error):
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
        return image.copy()
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
