"""A stylised 2D face drawn from a handful of parameters: no weights, no image assets.

Every part (head, hair, eyes, pupils, brows, mouth) is a signed-distance shape evaluated on
the pixel grid with torch, so the same code draws on the GPU (on the stage's stream) and on
the CPU. Edges are anti-aliased by turning each shape's distance into pixel coverage, and the
parts are painted back to front into an RGBA image ready for the composite kernel. Each part is
evaluated only inside the box where its coverage can be above zero (the eyes, brows and mouth
are a few percent of the picture each), which gives the same pixels as evaluating it everywhere
at a fraction of the cost: painting zero coverage leaves a pixel exactly as it was.

`FaceState` is everything that moves: expression (smile, brows), eyes (openness, gaze), mouth
(openness and width, from the voice's viseme) and a head turn. The drawing is a pure function
of the state, the size and the theme: the same state gives the same pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

THEMES = {
    # name: (skin, hair, iris, mouth, lips) as RGB 0..255
    "warm": ((241, 194, 160), (92, 58, 40), (60, 110, 160), (120, 30, 40), (200, 100, 100)),
    "cool": ((214, 226, 240), (40, 52, 90), (50, 140, 120), (90, 30, 60), (170, 110, 150)),
    "mint": ((198, 236, 212), (30, 90, 70), (110, 70, 150), (110, 40, 50), (190, 120, 120)),
}
EYE_X, EYE_Y = 0.30, -0.12  # eye centres (±x, y) in face units (the head spans about −0.8..0.8 wide)
MOUTH_Y = 0.42


@dataclass(frozen=True)
class FaceState:
    smile: float = 0.0  # −1 (frown) … 1 (broad smile)
    brows: float = 0.0  # −1 (knitted, angry) … 1 (raised, surprised)
    eye_open: float = 1.0  # 0 (closed: a blink) … 1
    mouth_open: float = 0.0  # 0 … 1
    mouth_width: float = 0.5  # 0 (rounded, "oo") … 1 (wide, "ee")
    gaze_x: float = 0.0  # −1 … 1: where the pupils look
    gaze_y: float = 0.0
    turn: float = 0.0  # −1 … 1: head turned left … right


def _cover(distance: torch.Tensor, pixel: float) -> torch.Tensor:
    """Signed distance (negative inside) → coverage 0..1 over about one pixel."""
    return (0.5 - distance / pixel).clamp(0.0, 1.0)


def _ellipse(u: torch.Tensor, v: torch.Tensor, cx: float, cy: float, rx: float, ry: float) -> torch.Tensor:
    """Approximate signed distance to an ellipse (exact for circles; good near the edge otherwise)."""
    rx, ry = max(rx, 1e-4), max(ry, 1e-4)
    k = torch.sqrt(((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2)
    return (k - 1.0) * min(rx, ry)


def _capsule(
    u: torch.Tensor, v: torch.Tensor, a: tuple[float, float], b: tuple[float, float], r: float
) -> torch.Tensor:
    """Signed distance to a thick line from a to b with round ends."""
    ax, ay = a
    bx, by = b
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy or 1e-9
    t = (((u - ax) * dx + (v - ay) * dy) / length2).clamp(0.0, 1.0)
    return torch.sqrt((u - ax - t * dx) ** 2 + (v - ay - t * dy) ** 2) - r


def _span(lo: float, hi: float, size: int) -> slice:
    """The grid indices whose pixel centres lie within [lo, hi] (face units), a pixel of slack each side."""
    first = math.floor((lo + 1.0) / 2.0 * size - 0.5) - 1
    last = math.ceil((hi + 1.0) / 2.0 * size - 0.5) + 1
    return slice(min(size, max(0, first)), max(0, min(size, last + 1)))


def _reach(rx: float, ry: float, pixel: float, grow: float = 0.0) -> float:
    """How far out, as a multiple of its radii, `_ellipse` (minus `grow`) still covers part of a pixel."""
    rx, ry = max(rx, 1e-4), max(ry, 1e-4)
    return 1.0 + (grow + pixel / 2.0) / min(rx, ry)


def _paint(canvas: torch.Tensor, coverage: torch.Tensor, colour: tuple[int, int, int]) -> None:
    """Paint `colour` over `canvas` (4×H×W float, premultiplied) where `coverage` says."""
    rgb = torch.tensor(colour, dtype=canvas.dtype, device=canvas.device).view(3, 1, 1) / 255.0
    canvas[:3] = canvas[:3] * (1.0 - coverage) + rgb * coverage
    canvas[3] = canvas[3] * (1.0 - coverage) + coverage


def render_face(
    state: FaceState, size: int, *, theme: str = "warm", device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The face as size×size×4 uint8 RGBA (straight alpha), transparent around the head."""
    if theme not in THEMES:
        raise ValueError(f"unknown avatar theme {theme!r}; use one of {', '.join(THEMES)}")
    skin, hair, iris, mouth_colour, lips = THEMES[theme]
    axis = (torch.arange(size, dtype=torch.float32, device=device) + 0.5) / size * 2.0 - 1.0
    v_all, u_all = torch.meshgrid(axis, axis, indexing="ij")  # v down, u right, both −1..1
    pixel = 2.0 / size
    shift = 0.08 * state.turn  # features slide sideways as the head turns
    canvas_all = torch.zeros((4, size, size), dtype=torch.float32, device=device)

    def window(u0: float, u1: float, v0: float, v1: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The grid and the canvas (views) over the box u0..u1 × v0..v1, in face units."""
        rows, cols = _span(v0, v1, size), _span(u0, u1, size)
        return u_all[rows, cols], v_all[rows, cols], canvas_all[:, rows, cols]

    u, v, canvas = window(-1.0, 1.0, -1.0, 1.0)
    head = _ellipse(u, v, 0.0, 0.05, 0.74, 0.88)
    _paint(canvas, _cover(head, pixel), skin)
    u, v, canvas = window(-1.0, 1.0, -1.0, -0.32 + pixel)  # the cap is above v = −0.42 + 0.10·|u| ≤ −0.32
    hair_cap = torch.maximum(_ellipse(u, v, shift * 0.5, -0.30, 0.80, 0.62), v + 0.42 - 0.10 * u.abs())
    _paint(canvas, _cover(hair_cap, pixel), hair)

    for side in (-1.0, 1.0):
        ex = side * EYE_X + shift
        openness = max(0.0, min(1.0, state.eye_open))
        white_ry = 0.02 + 0.085 * openness
        k = _reach(0.13, white_ry, pixel)  # the pupil and its dot paint only inside the white
        u, v, canvas = window(ex - k * 0.13, ex + k * 0.13, EYE_Y - k * white_ry, EYE_Y + k * white_ry)
        white = _ellipse(u, v, ex, EYE_Y, 0.13, white_ry)
        _paint(canvas, _cover(white, pixel), (250, 250, 250))
        if openness > 0.15:
            px, py = ex + 0.05 * state.gaze_x, EYE_Y + 0.03 * state.gaze_y
            pupil = torch.maximum(_ellipse(u, v, px, py, 0.06, 0.06), white)  # inside the white only
            _paint(canvas, _cover(pupil, pixel), iris)
            dot = torch.maximum(_ellipse(u, v, px, py, 0.028, 0.028), white)
            _paint(canvas, _cover(dot, pixel), (20, 20, 25))
        lift = 0.07 * state.brows
        knit = -0.05 * min(0.0, state.brows)  # inner ends drop when the brows knit
        inner = (ex - side * 0.12, EYE_Y - 0.17 - lift + knit)
        outer = (ex + side * 0.12, EYE_Y - 0.19 - lift - 0.02 * state.smile)
        reach = 0.025 + pixel  # the capsule's radius and the pixel its edge is spread over
        u, v, canvas = window(
            min(inner[0], outer[0]) - reach,
            max(inner[0], outer[0]) + reach,
            min(inner[1], outer[1]) - reach,
            max(inner[1], outer[1]) + reach,
        )
        _paint(canvas, _cover(_capsule(u, v, inner, outer, 0.025), pixel), hair)

    width = 0.16 + 0.14 * max(0.0, min(1.0, state.mouth_width))
    height = 0.015 + 0.16 * max(0.0, min(1.0, state.mouth_open))
    k = _reach(width, height, pixel, grow=0.012)  # the lips: the mouth grown by 0.012
    bend = 0.55 * state.smile * width  # how far the corners rise (a smile) or fall (a frown)
    top, bottom = MOUTH_Y - k * height - max(0.0, bend), MOUTH_Y + k * height - min(0.0, bend)
    u, v, canvas = window(shift - k * width, shift + k * width, top, bottom)
    mu = u - shift
    curve = v - MOUTH_Y + 0.55 * state.smile * (mu / width).clamp(-1.0, 1.0) ** 2 * width
    mouth = _ellipse(mu, curve, 0.0, 0.0, width, height)
    _paint(canvas, _cover(mouth - 0.012, pixel), lips)
    _paint(canvas, _cover(mouth, pixel), mouth_colour)

    canvas = canvas_all
    alpha = canvas[3].clamp(0.0, 1.0)
    rgb = canvas[:3] / alpha.clamp(min=1e-6)  # back to straight alpha
    out = torch.cat((rgb, alpha[None]), dim=0).clamp(0.0, 1.0)
    return (out * 255.0 + 0.5).to(torch.uint8).permute(1, 2, 0).contiguous()
