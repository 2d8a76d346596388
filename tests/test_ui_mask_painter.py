"""The mask painter's files: what is painted over the (shrunk) picture becomes the image's `<stem>_mask.png` at
the image's own size, which the trainer's scan then finds as its mask; loading shows the saved mask again."""
import numpy as np
import pytest
from PIL import Image

from trainer.data.scan import list_dataset
from ui.panel_masks import EDIT_SIDE, editor_value, mask_files, remove_mask, save_mask


@pytest.fixture
def photo(tmp_path):
    img = tmp_path / "ds" / "cat.jpg"
    img.parent.mkdir()
    Image.new("RGB", (1200, 800), (30, 120, 200)).save(img)
    (img.parent / "cat.txt").write_text("a cat")
    return img


def test_painted_left_half_becomes_the_mask_at_the_images_size(photo):
    value = editor_value(photo)
    h, w = value["background"].shape[:2]
    assert max(w, h) == EDIT_SIDE and (w, h) == (768, 512)  # shrunk to the painter, same shape
    assert not value["layers"][0][:, :, 3].any()  # no mask yet: nothing painted
    layer = value["layers"][0].copy()
    layer[:, : w // 2] = (255, 0, 255, 128)
    msg = save_mask(photo, {**value, "layers": [layer]})
    assert "cat_mask.png" in msg and "50%" in msg
    mask = np.asarray(Image.open(photo.with_name("cat_mask.png")))
    assert mask.shape == (800, 1200) and set(np.unique(mask)) == {0, 255}
    assert mask[:, :590].min() == 255 and mask[:, 610:].max() == 0
    # the trainer's scan: one training image, with its mask; the mask is no image of its own
    items = list_dataset(photo.parent).items
    assert [(it.rel, it.mask_file) for it in items] == [("cat.jpg", "cat_mask.png")]
    # loading it again shows the saved mask as the paint layer
    again = editor_value(photo)["layers"][0][:, :, 3] > 0
    assert again[:, : w // 2 - 2].all() and not again[:, w // 2 + 2:].any()


def test_nothing_painted_is_refused_and_writes_nothing(photo):
    with pytest.raises(ValueError, match="nothing is painted"):
        save_mask(photo, editor_value(photo))
    with pytest.raises(ValueError, match="nothing is painted"):
        save_mask(photo, None)
    assert mask_files(photo) == []


def test_saving_replaces_another_sidecar_and_remove_takes_it_away(photo):
    Image.new("L", (1200, 800), 255).save(photo.with_name("cat_mask.webp"))
    value = editor_value(photo)
    assert (value["layers"][0][:, :, 3] > 0).all()  # the old mask, shown
    layer = np.zeros_like(value["layers"][0])
    layer[:100, :100] = (255, 0, 255, 255)
    save_mask(photo, {**value, "layers": [layer]})
    assert [p.name for p in mask_files(photo)] == ["cat_mask.png"]  # one mask: the .webp one went
    assert "Removed `cat_mask.png`" in remove_mask(photo)
    assert mask_files(photo) == [] and photo.is_file() and photo.with_name("cat.txt").is_file()
    assert "has no mask" in remove_mask(photo)
