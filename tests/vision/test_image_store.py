"""The on-disk image store: exact round trips, one file per store, gone when closed."""

import pytest
import torch

from service.vision.image_store import ImageStore, StackedImages, dequantize, quantize
from service.vision.images import decode_image, preprocess
from tests.fake_labelstudio import BLUE, RED, color_image


def pictures(n: int, size: int = 40) -> list[torch.Tensor]:
    return [
        preprocess(decode_image(color_image(RED if i % 2 else BLUE, seed=i, size=57)), size)
        for i in range(n)
    ]


def test_images_come_back_bit_for_bit_in_the_order_asked() -> None:
    images = pictures(5)
    with ImageStore(5, 40) as store:
        rows = [store.append(image) for image in images]
        assert rows == [0, 1, 2, 3, 4] and len(store) == 5
        batch = store.take([3, 0, 3])
        assert batch.dtype == torch.float32 and batch.shape == (3, 3, 40, 40)
        assert torch.equal(batch, torch.stack([images[3], images[0], images[3]]))
        view = store.rows([4, 1])
        assert len(view) == 2
        assert torch.equal(view.take(torch.tensor([1, 0])), torch.stack([images[1], images[4]]))
    assert torch.equal(StackedImages(images).take([2]), images[2].unsqueeze(0))


def test_eight_bits_per_channel_are_exact_for_every_pixel_value() -> None:
    pixels = torch.arange(256, dtype=torch.uint8).repeat(3, 1).view(1, 3, 16, 16)
    normalised = dequantize(pixels)
    assert torch.equal(quantize(normalised), pixels)


def test_the_store_is_one_file_deleted_on_close_and_refused_after() -> None:
    store = ImageStore(2, 40)
    store.append(pictures(1)[0])
    assert [p.name for p in store.folder.iterdir()] == ["images.u8"]
    assert (store.folder / "images.u8").stat().st_size == 3 * 40 * 40
    store.close()
    assert not store.folder.exists()
    store.close()  # twice is fine
    with pytest.raises(ValueError, match="closed"):
        store.take([0])


def test_leaving_the_block_by_an_error_deletes_the_store() -> None:
    with pytest.raises(RuntimeError), ImageStore(1, 40) as store:
        raise RuntimeError("the fine-tune failed")
    assert not store.folder.exists()


def test_what_is_not_a_preprocessed_image_is_refused_not_rounded() -> None:
    with ImageStore(3, 8) as store:
        with pytest.raises(ValueError, match="not a preprocessed image"):
            store.append(torch.randn(3, 8, 8))
        with pytest.raises(ValueError, match="expected"):
            store.append(torch.zeros(3, 4, 4))
        assert len(store) == 0
        store.append(dequantize(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))[0])
        with pytest.raises(IndexError):
            store.take([1])


def test_a_full_store_says_so() -> None:
    image = pictures(1)[0]
    with ImageStore(1, 40) as store:
        store.append(image)
        with pytest.raises(ValueError, match="full"):
            store.append(image)
