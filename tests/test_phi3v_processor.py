"""Phi-3-vision image processor: the reference's test vectors, geometry, padding, normalization, modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bench.errors import ConfigError
from bench.models.phi3v.processor import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    Phi3VImageProcessor,
    num_img_tokens_for,
)

torch.set_num_threads(1)
MEAN = torch.tensor(OPENAI_CLIP_MEAN)[:, None, None]
STD = torch.tensor(OPENAI_CLIP_STD)[:, None, None]


def _random(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _normalized(colour) -> torch.Tensor:
    """[3,1,1] normalized value of an RGB colour (0..255)."""
    return (torch.tensor(colour, dtype=torch.float32)[:, None, None] / 255 - MEAN) / STD


# (num_crops, (width, height), (rows, cols), num_img_tokens): the reference's table.
VECTORS = [
    (4, (500, 500), (2, 2), 757),
    (16, (500, 500), (4, 4), 2509),
    (16, (640, 480), (3, 4), 1921),
    (16, (480, 640), (4, 3), 1933),
    (16, (1920, 1080), (3, 5), 2353),
]


@pytest.mark.parametrize("num_crops,size,grid,tokens", VECTORS)
def test_reference_vectors(num_crops, size, grid, tokens):
    proc = Phi3VImageProcessor(num_crops)
    out = proc.preprocess_one(Image.new("RGB", size, (120, 30, 200)))
    rows, cols = grid
    assert out["image_size"] == (rows * 336, cols * 336)
    assert out["num_img_tokens"] == tokens == num_img_tokens_for(rows, cols)
    assert out["num_real_crops"] == 1 + rows * cols
    assert out["pixel_values"].shape == (num_crops + 1, 3, 336, 336)
    assert out["pixel_values"].dtype == torch.float32
    assert proc.grid(*size) == grid


@pytest.mark.parametrize(
    "size", [(1, 1), (500, 500), (640, 480), (480, 640), (1920, 1080), (3000, 20), (7, 900)]
)
def test_one_crop_gives_313_tokens(size):
    out = Phi3VImageProcessor(1).preprocess_one(Image.new("RGB", size))
    assert out["num_img_tokens"] == 313 and out["image_size"] == (336, 336)
    assert out["pixel_values"].shape == (2, 3, 336, 336)


def test_tiny_and_large_and_extreme_images():
    proc = Phi3VImageProcessor(4)
    tiny = proc.preprocess_one(Image.new("RGB", (1, 1), (0, 255, 0)))
    # 1x1 is square: upscaled to 672x672, no padding, every pixel the colour.
    assert tiny["image_size"] == (672, 672)
    assert torch.allclose(
        tiny["pixel_values"][:5], _normalized((0, 255, 0)).expand(5, 3, 336, 336), atol=1e-6
    )
    big = proc.preprocess_one(Image.new("RGB", (4000, 3000)))
    assert big["image_size"] == (672, 672) and big["num_img_tokens"] == 757
    # A 5000x2 panorama: new_h = int(1344 / 2500) = 0 in the reference (a crash); one row is kept.
    pano = proc.preprocess_one(Image.new("RGB", (5000, 2), (0, 0, 0)))
    assert pano["image_size"] == (336, 1344) and pano["num_real_crops"] == 5
    assert torch.isfinite(pano["pixel_values"]).all()


def _expected_hd(
    img: Image.Image, new_w: int, new_h: int, top: int, target: int, portrait: bool
) -> torch.Tensor:
    """Normalized HD tensor built by hand: numbers computed outside the code under test."""
    src = img.transpose(Image.Transpose.TRANSPOSE) if portrait else img
    resized = np.asarray(src.resize((new_w, new_h), Image.Resampling.BILINEAR), dtype=np.uint8)
    canvas = np.full((target, new_w, 3), 255, dtype=np.uint8)
    canvas[top : top + new_h] = resized
    if portrait:
        canvas = canvas.transpose(1, 0, 2)
    x = torch.from_numpy(canvas.copy()).permute(2, 0, 1).float() / 255
    return (x - MEAN) / STD


@pytest.mark.parametrize("portrait", [False, True])
def test_crops_global_view_padding_against_hand_computation(portrait):
    # 500x300: ratio 5/3, scale 2 (2*ceil(1.2)=4 <= 4, 3*ceil(1.8)=6 > 4), new_w 672,
    # new_h int(672*3/5) = 403, padded to 672 with top int(269/2) = 134.
    img = _random(500, 300, seed=1)
    if portrait:
        img = img.transpose(Image.Transpose.TRANSPOSE)  # 300x500
    out = Phi3VImageProcessor(4).preprocess_one(img)
    hd = _expected_hd(img, 672, 403, 134, 672, portrait)
    assert out["image_size"] == tuple(hd.shape[1:]) == (672, 672)
    pv = out["pixel_values"]
    k = 1
    for r in range(2):  # row-major crops
        for c in range(2):
            assert torch.allclose(
                pv[k], hd[:, r * 336 : (r + 1) * 336, c * 336 : (c + 1) * 336], atol=1e-6
            ), (r, c)
            k += 1
    glb = F.interpolate(hd[None], size=(336, 336), mode="bicubic", align_corners=False)[0]
    assert torch.allclose(pv[0], glb, atol=1e-5)
    # White padding: 134 rows (landscape) / columns (portrait) before the image, 135 after.
    white = _normalized((255, 255, 255))
    full = torch.cat([torch.cat([pv[1], pv[2]], 2), torch.cat([pv[3], pv[4]], 2)], 1)
    if portrait:
        full = full.transpose(1, 2)
    assert torch.allclose(full[:, :134], white.expand(3, 134, 672), atol=1e-6)
    assert torch.allclose(full[:, 537:], white.expand(3, 135, 672), atol=1e-6)
    assert not torch.allclose(full[:, 134:135], white.expand(3, 1, 672), atol=1e-3)
    assert not torch.allclose(full[:, 536:537], white.expand(3, 1, 672), atol=1e-3)


def test_padding_value_and_zero_crops_at_the_end():
    colour = (10, 200, 60)
    # 1344x200 with num_crops 16: ratio 6.72, scale 8 (8*ceil(1.19)=16; 9*2=18 > 16): new_w 2688,
    # new_h about 400, padded to 672: grid 2x8 = 16 crops.
    out = Phi3VImageProcessor(16).preprocess_one(Image.new("RGB", (1344, 200), colour))
    assert out["image_size"] == (672, 2688) and out["num_real_crops"] == 17
    out = Phi3VImageProcessor(16).preprocess_one(Image.new("RGB", (1000, 200), colour))
    # ratio 5: s*ceil(s/5) <= 16 -> s=8 (8*2=16), new_w 2688, new_h int(537.6)=537, target 672, top 67.
    assert out["image_size"] == (672, 2688)
    out = Phi3VImageProcessor(4).preprocess_one(Image.new("RGB", (900, 300), colour))
    # ratio 3: s=3 (3*1=3; 4*2=8 > 4): new_w 1008, new_h 336, no padding: 1x3 crops, 1 zero crop.
    assert out["image_size"] == (336, 1008) and out["num_real_crops"] == 4
    pv = out["pixel_values"]
    assert torch.allclose(pv[1:4], _normalized(colour).expand(3, 3, 336, 336), atol=1e-6)
    assert torch.equal(pv[4], torch.zeros(3, 336, 336))
    # Padded positions hold exactly (1 - mean) / std.
    out = Phi3VImageProcessor(4).preprocess_one(Image.new("RGB", (672, 100), colour))
    # ratio 6.72 -> s=4, new_w 1344, new_h int(1344/6.72) = 200, target 336, top int(136/2) = 68.
    pv = out["pixel_values"]
    assert out["image_size"] == (336, 1344) and out["num_real_crops"] == 5
    white = (1 - MEAN) / STD
    for crop in pv[1:5]:
        assert torch.allclose(crop[:, :68], white.expand(3, 68, 336), atol=1e-6)
        assert torch.allclose(crop[:, 268:], white.expand(3, 68, 336), atol=1e-6)
        assert torch.allclose(crop[:, 68:268], _normalized(colour).expand(3, 200, 336), atol=1e-6)


def test_batch_call():
    proc = Phi3VImageProcessor(4)
    images = [_random(300, 200, 0), _random(100, 400, 1), Image.new("RGB", (50, 50))]
    out = proc(images)
    assert out["pixel_values"].shape == (3, 5, 3, 336, 336)
    assert out["image_sizes"].dtype == torch.long
    assert out["image_sizes"].tolist() == [[672, 672], [1344, 336], [672, 672]]
    assert out["num_img_tokens"] == [757, 781, 757]
    for i, im in enumerate(images):
        assert torch.equal(out["pixel_values"][i], proc.preprocess_one(im)["pixel_values"])


def test_modes_are_converted_to_rgb():
    proc = Phi3VImageProcessor(1)
    ref = proc.preprocess_one(Image.new("RGB", (40, 30), (10, 20, 30)))["pixel_values"]
    rgba = proc.preprocess_one(Image.new("RGBA", (40, 30), (10, 20, 30, 0)))["pixel_values"]
    assert torch.equal(rgba, ref)  # alpha dropped, not composited
    pal = Image.new("P", (40, 30), 3)
    pal.putpalette([0, 0, 0] * 3 + [10, 20, 30] + [0, 0, 0] * 252)
    assert torch.equal(proc.preprocess_one(pal)["pixel_values"], ref)
    grey = proc.preprocess_one(Image.new("L", (40, 30), 77))["pixel_values"]
    assert torch.equal(grey, proc.preprocess_one(Image.new("RGB", (40, 30), (77, 77, 77)))["pixel_values"])
    i16 = Image.fromarray(np.full((30, 40), 65535, dtype=np.uint16))
    assert i16.mode.startswith("I")
    white = proc.preprocess_one(i16)["pixel_values"]
    assert torch.equal(
        white, proc.preprocess_one(Image.new("RGB", (40, 30), (255, 255, 255)))["pixel_values"]
    )


def test_config_and_errors():
    proc = Phi3VImageProcessor.from_preprocessor_config({"num_crops": 16, "image_processor_type": "x"})
    assert proc.num_crops == 16 and proc.image_mean == OPENAI_CLIP_MEAN
    assert Phi3VImageProcessor.from_preprocessor_config({}).num_crops == 1
    for bad in (0, -1, 2.5, True, "4"):
        with pytest.raises(ConfigError, match="num_crops"):
            Phi3VImageProcessor(bad)
    with pytest.raises(ConfigError, match="image_std"):
        Phi3VImageProcessor(4, image_std=(0.1, 0.0, 0.2))
