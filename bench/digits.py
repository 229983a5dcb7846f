"""Real data offline: scikit-learn's 1,797 handwritten digits, rendered as 64 px RGB PNGs.

The benchmarks' shared image set. It needs only Pillow and scikit-learn, so the scripts that
must run on a bare GPU machine (bench/vision_device.py) can use it too.
"""

import io

from PIL import Image


def digit_pngs(count: int | None = None) -> tuple[list[bytes], list[str]]:
    """The first ``count`` digits (all of them by default) as PNG bytes, with their labels."""
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]

    data = load_digits()
    pngs = []
    for pixels in data.images[:count]:
        buffer = io.BytesIO()
        image = Image.fromarray((pixels * 255 / 16).astype("uint8")).resize((64, 64))
        image.convert("RGB").save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    return pngs, [str(target) for target in data.target[:count]]
