"""Camera-sized JPEGs made offline from the real photographs scikit-learn ships.

Random crops of `sklearn.datasets.load_sample_images()` (two 640 x 427 photos), half of them
flipped, with colour, brightness and contrast jitter, upscaled (bicubic) to 12 MP (3000 x 4000)
or, for the first `big`, 48 MP (6000 x 8000), saved at JPEG quality 90. Deterministic: photo i
is the same in every run. Only Pillow and scikit-learn: no torch in these processes.

Usage: python bench/camera.py FOLDER COUNT [BIG]   (writes FOLDER/photo-<i>.jpg)
"""

import io
import multiprocessing
import os
import random
import sys
from pathlib import Path

from PIL import Image, ImageEnhance

CAMERA = (3000, 4000)
BIG = (6000, 8000)


def camera_photo(index: int, size: tuple[int, int]) -> bytes:
    """Photo `index`: a random crop of a sample photo, jittered and upscaled to `size`."""
    from sklearn.datasets import load_sample_images  # type: ignore[import-untyped]

    rng = random.Random(index)
    photos = load_sample_images().images
    source = Image.fromarray(photos[index % len(photos)])
    width = rng.randint(source.width // 3, source.width)
    height = rng.randint(source.height // 3, source.height)
    left, top = rng.randint(0, source.width - width), rng.randint(0, source.height - height)
    image = source.crop((left, top, left + width, top + height))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = ImageEnhance.Color(image).enhance(rng.uniform(0.6, 1.4))
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.8, 1.2))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.8, 1.2))
    image = image.resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _write(job: tuple[int, tuple[int, int], str]) -> None:
    index, size, path = job
    Path(path).write_bytes(camera_photo(index, size))


def main() -> int:
    folder, count = Path(sys.argv[1]), int(sys.argv[2])
    big = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    jobs = [
        (index, BIG if index < big else CAMERA, str(folder / f"photo-{index}.jpg"))
        for index in range(count + big)
    ]
    workers = max(1, min(len(os.sched_getaffinity(0)), 8))
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pool.map(_write, jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
