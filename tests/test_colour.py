"""Colour conversion references: known values, round trips, zero-copy plane views."""

from __future__ import annotations

import pytest
import torch

from kernels.colour import i420_planes, i420_to_rgb, rgb_to_i420


def flat(rgb: tuple[int, int, int], height: int = 4, width: int = 6) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.uint8).expand(height, width, 3).contiguous()


@pytest.mark.parametrize(
    ("rgb", "limited", "full"),
    [
        ((255, 255, 255), (235, 128, 128), (255, 128, 128)),
        ((0, 0, 0), (16, 128, 128), (0, 128, 128)),
        ((255, 0, 0), (81, 90, 240), (76, 85, 255)),  # BT.601 red, as every textbook table gives it
    ],
)
def test_known_bt601_values(rgb, limited, full):
    for expected, full_range in ((limited, False), (full, True)):
        y, u, v = i420_planes(rgb_to_i420(flat(rgb), matrix="bt601", full_range=full_range))
        assert (int(y[0, 0]), int(u[0, 0]), int(v[0, 0])) == expected


@pytest.mark.parametrize("matrix", ["bt601", "bt709"])
@pytest.mark.parametrize("full_range", [False, True])
def test_round_trip_of_a_smooth_image_is_close(matrix, full_range):
    height, width = 38, 54  # not multiples of any block size
    gy, gx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    rgb = torch.stack([gx * 255 // width, gy * 255 // height, (gx + gy) * 255 // (height + width)], -1)
    rgb = rgb.to(torch.uint8)
    back = i420_to_rgb(rgb_to_i420(rgb, matrix=matrix, full_range=full_range), matrix=matrix, full_range=full_range)
    error = (back.int() - rgb.int()).abs().float()
    assert float(error.mean()) < 3.0
    assert float(error.max()) < 16.0  # chroma is shared by 2×2 blocks, so edges may stray a little


def test_matrices_differ_on_saturated_colour():
    red = flat((255, 0, 0))
    assert not torch.equal(rgb_to_i420(red, matrix="bt601"), rgb_to_i420(red, matrix="bt709"))


def test_planes_are_views_of_the_packed_image():
    image = torch.zeros((12, 10), dtype=torch.uint8)  # 10x8 picture
    y, u, v = i420_planes(image)
    assert (y.shape, u.shape, v.shape) == ((8, 10), (4, 5), (4, 5))
    v.fill_(7)
    assert int(image.view(-1)[-1]) == 7
    assert y.data_ptr() == image.data_ptr()


@pytest.mark.parametrize("shape", [(13, 10), (12, 9)])
def test_odd_or_wrong_shapes_are_refused(shape):
    with pytest.raises(ValueError, match="I420"):
        i420_planes(torch.zeros(shape, dtype=torch.uint8))
