"""A stylised 2D face drawn from a handful of parameters: no weights, no image assets.

Every part (head, hair, eyes, pupils, brows, mouth) is a signed-distance shape evaluated on
the pixel grid by one code, with torch on a GPU (on the stage's stream) and with NumPy on a CPU,
where its many small operations cost a third of torch's. Edges are anti-aliased by turning each
shape's distance into pixel coverage, and the parts are painted back to front into an RGBA
image ready for the composite kernel. Each part is
evaluated only inside the box where its coverage can be above zero (the eyes, brows and mouth
are a few percent of the picture each), which gives the same pixels as evaluating it everywhere
at a fraction of the cost: painting zero coverage leaves a pixel exactly as it was.

`FaceState` is everything that moves: expression (smile, brows), eyes (openness, gaze), mouth
(openness and width, from the voice's viseme) and a head turn. The drawing is a pure function
of the state, the size and the theme: the same state gives the same pixels.

`FaceSprites` draws a state rounded to steps too small to see (a quarter pixel at most for any
part) and keeps the last few drawings: a face at rest, whose parameters still creep toward their
targets by imperceptible amounts, is drawn once, not on every frame.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from dataclasses import astuple, dataclass

import numpy as np
import torch

THEMES = {
    # name: (skin, hair, iris, mouth, lips) as RGB 0..255
    "warm": ((241, 194, 160), (92, 58, 40), (60, 110, 160), (120, 30, 40), (200, 100, 100)),
    "cool": ((214, 226, 240), (40, 52, 90), (50, 140, 120), (90, 30, 60), (170, 110, 150)),
    "mint": ((198, 236, 212), (30, 90, 70), (110, 70, 150), (110, 40, 50), (190, 120, 120)),
}
EYE_WHITE, PUPIL_DOT = (250, 250, 250), (20, 20, 25)
EYE_X, EYE_Y = 0.30, -0.12  # eye centres (±x, y) in face units (the head spans about −0.8..0.8 wide)
MOUTH_Y = 0.42
# The most any part moves, in face units (the face spans 2), for a change of 1 in any FaceState
# field: the mouth's curve (0.55 · smile · width up to 0.3) is the largest, then the mouth's
# opening (0.16) and width (0.14). Rounding a field to 1/n moves nothing by more than
# SWAY / n face units, i.e. SWAY / n · size / 2 pixels.
SWAY = 0.17
SETTLE_PX = 0.25  # how far a part may be off its exact place in a drawing from `FaceSprites`


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


Array = np.ndarray | torch.Tensor  # NumPy on a CPU, torch on a GPU (see `render_face`)


def _draws_with_numpy(device: str) -> bool:
    """Whether faces for `device` are drawn with NumPy (a CPU) rather than torch (a GPU)."""
    return device == "cpu"


def _clip_(x: Array, lo: float, hi: float) -> Array:
    """Clamp in place, whichever library `x` is from."""
    if isinstance(x, torch.Tensor):
        return x.clamp_(lo, hi)
    return np.clip(x, lo, hi, out=x)


def _hypot(a: Array, b: Array) -> Array:
    """√(a² + b²), written over `a`."""
    if isinstance(a, torch.Tensor):
        return torch.hypot(a, b, out=a)
    return np.hypot(a, b, out=a)


def _cover(distance: Array, pixel: float) -> Array:
    """Signed distance (negative inside) → coverage 0..1 over about one pixel, in place."""
    distance *= -1.0 / pixel
    distance += 0.5
    return _clip_(distance, 0.0, 1.0)


def _ellipse(u: Array, v: Array, cx: float, cy: float, rx: float, ry: float) -> Array:
    """Approximate signed distance to an ellipse (exact for circles; good near the edge otherwise)."""
    rx, ry = max(rx, 1e-4), max(ry, 1e-4)
    across = u - cx
    across /= rx
    down = v - cy
    down /= ry
    k = _hypot(across, down)
    k -= 1.0
    k *= min(rx, ry)
    return k


def _capsule(u: Array, v: Array, a: tuple[float, float], b: tuple[float, float], r: float) -> Array:
    """Signed distance to a thick line from a to b with round ends."""
    ax, ay = a
    bx, by = b
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy or 1e-9
    du, dv = u - ax, v - ay
    t = du * (dx / length2)
    t += dv * (dy / length2)
    _clip_(t, 0.0, 1.0)
    du -= t * dx
    dv -= t * dy
    distance = _hypot(du, dv)
    distance -= r
    return distance


def _maximum(a: Array, b: Array) -> Array:
    """The larger of two distances at each pixel (the intersection of two shapes), written over `a`."""
    if isinstance(a, torch.Tensor):
        return torch.maximum(a, b, out=a)
    return np.maximum(a, b, out=a)


def _span(lo: float, hi: float, size: int) -> slice:
    """The grid indices whose pixel centres lie within [lo, hi] (face units), a pixel of slack each side."""
    first = math.floor((lo + 1.0) / 2.0 * size - 0.5) - 1
    last = math.ceil((hi + 1.0) / 2.0 * size - 0.5) + 1
    return slice(min(size, max(0, first)), max(0, min(size, last + 1)))


def _reach(rx: float, ry: float, pixel: float, grow: float = 0.0) -> float:
    """How far out, as a multiple of its radii, `_ellipse` (minus `grow`) still covers part of a pixel."""
    rx, ry = max(rx, 1e-4), max(ry, 1e-4)
    return 1.0 + (grow + pixel / 2.0) / min(rx, ry)


def _paint(canvas: Array, coverage: Array, colour: Array) -> None:
    """Paint `colour` (from `_paint_colour`) over `canvas` (4×H×W float, premultiplied) where
    `coverage` says: each channel moves toward the colour's by the coverage."""
    if isinstance(canvas, torch.Tensor):
        canvas.lerp_(colour, coverage)  # one op
        return
    step = colour - canvas
    step *= coverage
    canvas += step


def _rgba(colour: tuple[int, int, int]) -> np.ndarray:
    """(r, g, b, 1) in 0..1 as a 4×1×1 array: a paint that covers what is under it."""
    return np.array([*(c / 255.0 for c in colour), 1.0], dtype=np.float32).reshape(4, 1, 1)


@functools.cache
def _paint_colour(colour: tuple[int, int, int], device: str) -> Array:
    """`_rgba(colour)`, made once per colour and device (on a GPU, one copy to the device instead
    of one per part and frame)."""
    paint = _rgba(colour)
    if _draws_with_numpy(device):
        return paint
    on_device = torch.from_numpy(paint).to(device)
    if on_device.is_cuda:  # shared by every stream that draws: let the copy land before any of them reads it
        torch.cuda.current_stream(on_device.device).synchronize()
    return on_device


@functools.lru_cache(maxsize=16)
def _bare_head(size: int, theme: str, device: str) -> tuple[Array, Array, Array]:
    """The face grid (u right, v down, both −1..1 at pixel centres) and a canvas with the head
    painted on it: no state moves the head, so it is drawn once per size, theme and device
    (the largest shape, and a fifth of a drawing's time on a CPU). Callers copy the canvas."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0  # float32 throughout
    v_all, u_all = np.meshgrid(axis, axis, indexing="ij")
    canvas = np.zeros((4, size, size), dtype=np.float32)
    head = _ellipse(u_all, v_all, 0.0, 0.05, 0.74, 0.88)
    _paint(canvas, _cover(head, 2.0 / size), _rgba(THEMES[theme][0]))  # drawn here, then moved to the device
    if _draws_with_numpy(device):
        return u_all, v_all, canvas
    u_dev, v_dev, canvas_dev = (torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in (u_all, v_all, canvas))
    if canvas_dev.is_cuda:  # shared by every stream that draws, as the paint colours are
        torch.cuda.current_stream(canvas_dev.device).synchronize()
    return u_dev, v_dev, canvas_dev


def render_face(
    state: FaceState, size: int, *, theme: str = "warm", device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The face as size×size×4 uint8 RGBA (straight alpha), transparent around the head.

    On a CPU the shapes are evaluated with NumPy, on a GPU with torch on the current stream: the
    same operations either way. A drawing is some 70 operations on small windows, and on a CPU a
    NumPy operation costs a fraction of a torch one's dispatch (each of which also gives up and
    takes back the GIL that the other stages' threads are waiting for)."""
    if theme not in THEMES:
        raise ValueError(f"unknown avatar theme {theme!r}; use one of {', '.join(THEMES)}")
    where = str(torch.device(device))
    _, hair, iris, mouth_colour, lips = (_paint_colour(colour, where) for colour in THEMES[theme])
    eye_white, pupil_dot = _paint_colour(EYE_WHITE, where), _paint_colour(PUPIL_DOT, where)
    u_all, v_all, head_canvas = _bare_head(size, theme, where)
    pixel = 2.0 / size
    shift = 0.08 * state.turn  # features slide sideways as the head turns
    canvas_all = head_canvas.copy() if isinstance(head_canvas, np.ndarray) else head_canvas.clone()

    def window(u0: float, u1: float, v0: float, v1: float) -> tuple[Array, Array, Array]:
        """The grid and the canvas (views) over the box u0..u1 × v0..v1, in face units."""
        rows, cols = _span(v0, v1, size), _span(u0, u1, size)
        return u_all[rows, cols], v_all[rows, cols], canvas_all[:, rows, cols]

    u, v, canvas = window(-1.0, 1.0, -1.0, -0.32 + pixel)  # the cap is above v = −0.42 + 0.10·|u| ≤ −0.32
    cap_edge = abs(u) * -0.10
    cap_edge += v + 0.42
    hair_cap = _maximum(_ellipse(u, v, shift * 0.5, -0.30, 0.80, 0.62), cap_edge)
    _paint(canvas, _cover(hair_cap, pixel), hair)

    for side in (-1.0, 1.0):
        ex = side * EYE_X + shift
        openness = max(0.0, min(1.0, state.eye_open))
        white_ry = 0.02 + 0.085 * openness
        k = _reach(0.13, white_ry, pixel)  # the pupil and its dot paint only inside the white
        u, v, canvas = window(ex - k * 0.13, ex + k * 0.13, EYE_Y - k * white_ry, EYE_Y + k * white_ry)
        white = _ellipse(u, v, ex, EYE_Y, 0.13, white_ry)
        if openness > 0.15:
            px, py = ex + 0.05 * state.gaze_x, EYE_Y + 0.03 * state.gaze_y
            pupil = _maximum(_ellipse(u, v, px, py, 0.06, 0.06), white)  # inside the white only
            dot = _maximum(_ellipse(u, v, px, py, 0.028, 0.028), white)
        _paint(canvas, _cover(white, pixel), eye_white)
        if openness > 0.15:
            _paint(canvas, _cover(pupil, pixel), iris)
            _paint(canvas, _cover(dot, pixel), pupil_dot)
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
    curve = _clip_(mu / width, -1.0, 1.0)
    curve *= curve
    curve *= 0.55 * state.smile * width
    curve += v - MOUTH_Y
    mouth = _ellipse(mu, curve, 0.0, 0.0, width, height)
    _paint(canvas, _cover(mouth - 0.012, pixel), lips)
    _paint(canvas, _cover(mouth, pixel), mouth_colour)
    return _straight_rgba(canvas_all)


def _straight_rgba(canvas: Array) -> torch.Tensor:
    """The premultiplied 4×H×W canvas as H×W×4 uint8 straight alpha, rounded to nearest. Written
    pixel by pixel as the result is laid out, so the last steps run over contiguous memory and
    nothing is transposed after them."""
    alpha = _clip_(canvas[3], 0.0, 1.0)
    if isinstance(canvas, torch.Tensor):
        out = torch.empty((*alpha.shape, 4), dtype=torch.float32, device=canvas.device)
        planes = out.permute(2, 0, 1)
        torch.div(canvas[:3], alpha.clamp(min=1e-6), out=planes[:3])
        planes[3].copy_(alpha)
        return out.mul_(255.0).add_(0.5).clamp_(0.0, 255.0).to(torch.uint8)  # all ≥ 0: truncation floors
    out = np.empty((*alpha.shape, 4), dtype=np.float32)
    planes = out.transpose(2, 0, 1)
    np.divide(canvas[:3], np.maximum(alpha, 1e-6), out=planes[:3])
    planes[3] = alpha
    out *= 255.0
    out += 0.5
    return torch.from_numpy(np.clip(out, 0.0, 255.0, out=out).astype(np.uint8))


def steps_per_unit(size: int) -> int:
    """How finely `FaceSprites` rounds each state field for a face `size` px wide: no part moves
    more than SETTLE_PX between neighbouring steps (58 steps per unit at 168 px)."""
    return max(8, math.ceil(SWAY * size / 2 / SETTLE_PX))


def settled(state: FaceState, size: int) -> FaceState:
    """`state` rounded to the steps a face `size` px wide can show."""
    steps = steps_per_unit(size)
    return FaceState(*(round(value * steps) / steps for value in astuple(state)))


class FaceSprites:
    """The faces drawn lately, by their settled state, size and theme: a face that has not moved by
    a visible amount is not drawn again. The tensors handed out are shared: read them, never write."""

    def __init__(self, entries: int = 16):
        self.entries = entries
        self.drawn = 0  # faces drawn (misses)
        self.reused = 0  # faces handed out again (hits)
        self._faces: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def face(
        self, state: FaceState, size: int, *, theme: str = "warm", device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """`render_face` of the settled state, drawn now or kept from before."""
        state = settled(state, size)
        key = (state, size, theme, str(device))
        face = self._faces.get(key)
        if face is not None:
            self._faces.move_to_end(key)
            self.reused += 1
            return face
        face = render_face(state, size, theme=theme, device=device)
        self._faces[key] = face
        if len(self._faces) > self.entries:
            self._faces.popitem(last=False)
        self.drawn += 1
        return face
