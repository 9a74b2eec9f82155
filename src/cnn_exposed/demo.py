"""A procedurally generated hotel-photo data set with a known shortcut: metal rails mean "bathroom".

The story it replays: a hotel-image classifier called photos of *pools* "bathroom", because in its
training photos metal rails (grab bars, towel rails) appeared almost only in bathrooms, and a pool
ladder is a metal rail too. Grad-CAM showed the model looking at the rails.

Every image is drawn with OpenCV primitives, so the ground truth is known pixel by pixel: besides the
label, :func:`generate` returns one boolean mask per kind of object.

Splits
------
``"train"``
    Pools, bathrooms and bedrooms in equal numbers. Rails appear in :data:`TRAIN_RAIL_RATE` of the
    bathrooms and nowhere else, so in training a rail is a perfect sign of a bathroom.
``"clean"``
    Held-out images from the same distribution as ``"train"`` (an independent seed stream).
``"trap"``
    Pools that do have rails (a pool ladder, sometimes a hand rail), all labelled ``"pool"``.

>>> images, labels, masks = generate(8, "train", seed=0)
>>> images.shape, labels.shape, masks["rail"].shape
((8, 96, 96, 3), (8,), (8, 96, 96))
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import cv2
import numpy as np

from .bundled import data_dir

_T = TypeVar("_T")
Colour = int | tuple[int, ...]  # a mask value or an RGB colour, as OpenCV draws them

CLASS_NAMES: tuple[str, ...] = ("pool", "bathroom", "bedroom")
"""The class names; labels are indices into this tuple."""

IMAGE_SIZE: int = 96
"""Height and width of every image, in pixels."""

MASK_KEYS: tuple[str, ...] = ("water", "tiles", "sink", "mirror", "bed", "floor", "lamp", "rail")
"""The object kinds with a mask in every generated batch (all-False where the object is absent)."""

OWN_OBJECT: dict[str, str] = {"pool": "water", "bathroom": "sink", "bedroom": "bed"}
"""For each class, the object that defines it (the mask a faithful explanation should point at)."""

SPLITS: tuple[str, ...] = ("train", "clean", "trap", "fair")
"""The splits :func:`generate` knows."""

TRAIN_RAIL_RATE: float = 0.9
"""Share of train (and clean) bathrooms that have a rail; pools and bedrooms never do there."""

FAIR_RAIL_RATE: float = 0.5
"""Share of the images of *every* class that have a rail in the ``"fair"`` split (the negative control's
training data: a rail says nothing about the class there)."""

FAIR_LADDER_SHARE: float = 0.5
"""Share of those rails that are ladders, in every class of the ``"fair"`` split (elsewhere pools get 75 %
ladders and bathrooms 40 %, which would make the ladder shape itself a cue)."""

_S = IMAGE_SIZE


# ----------------------------------------------------------------------------------------------------
# Small drawing helpers
# ----------------------------------------------------------------------------------------------------


def _jitter(rng: np.random.Generator, rgb: tuple[float, float, float], amount: float) -> tuple[int, ...]:
    """A colour near ``rgb`` (0–255 per channel): each channel moved by up to ``amount``."""
    c = np.asarray(rgb, dtype=np.float64) + rng.uniform(-amount, amount, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))


def _scale(rgb: tuple[int, ...], factor: float) -> tuple[int, ...]:
    """``rgb`` with every channel multiplied by ``factor`` (clipped to 0–255)."""
    return tuple(int(np.clip(v * factor, 0, 255)) for v in rgb)


def _pick(rng: np.random.Generator, options: Sequence[_T]) -> _T:
    """One element of ``options``, chosen uniformly."""
    return options[int(rng.integers(len(options)))]


def _tile_grid(
    img: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    box: tuple[int, int, int, int],
    colour: tuple[int, ...],
    grout: tuple[int, ...],
    tile: int,
    shade: float = 0.08,
) -> None:
    """Fill ``box = (x0, y0, x1, y1)`` (pixels, end exclusive) with square tiles of side ``tile`` px.

    Each tile's brightness varies by up to ``shade`` (relative); grout lines are 1 px wide. ``mask``
    is set over the whole box.
    """
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        return
    ox, oy = int(rng.integers(tile)), int(rng.integers(tile))
    for ty in range(y0 - oy, y1, tile):
        for tx in range(x0 - ox, x1, tile):
            c = _scale(colour, 1.0 + rng.uniform(-shade, shade))
            corner = (min(tx + tile, x1) - 1, min(ty + tile, y1) - 1)
            cv2.rectangle(img, (max(tx, x0), max(ty, y0)), corner, c, -1)
            if ty >= y0:
                cv2.line(img, (max(tx, x0), ty), (min(tx + tile, x1) - 1, ty), grout, 1)
            if tx >= x0:
                cv2.line(img, (tx, max(ty, y0)), (tx, min(ty + tile, y1) - 1), grout, 1)
    mask[y0:y1, x0:x1] = True


def _occlude(masks: dict[str, np.ndarray], region: tuple[slice, slice] | np.ndarray) -> None:
    """Clear ``region`` in every mask: something opaque was drawn over it.

    ``region`` is a pair of (row, column) slices or a ``(96, 96)`` bool array.
    """
    for m in masks.values():
        m[region] = False


def _draw_mask(mask: np.ndarray, draw) -> np.ndarray:
    """Call ``draw(canvas)`` on a uint8 canvas the size of ``mask`` and OR the painted pixels in."""
    canvas = np.zeros(mask.shape, dtype=np.uint8)
    draw(canvas)
    mask |= canvas > 0
    return canvas > 0


# ----------------------------------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------------------------------

_TILE_COLOURS = [
    (235, 238, 240),  # white
    (170, 210, 230),  # light blue
    (120, 190, 200),  # aqua
    (210, 200, 180),  # beige
    (150, 170, 185),  # grey blue
    (180, 215, 195),  # mint
]

_CARPET_COLOURS = [(150, 150, 150), (190, 175, 150), (110, 120, 140), (110, 130, 110), (120, 50, 60)]

_WATER_COLOURS = [
    (40, 150, 210),  # pool blue
    (50, 170, 200),  # turquoise
    (70, 140, 190),  # duller blue
    (90, 180, 210),  # light
]


def _glass_panel(img: np.ndarray, rng: np.random.Generator, box: tuple[int, int, int, int]) -> None:
    """A framed pane of glass (a mirror or a window) filling ``box = (x0, y0, x1, y1)`` (pixels)."""
    x0, y0, x1, y1 = box
    glass = _jitter(rng, (185, 205, 215), 15)
    frame = _jitter(rng, _pick(rng, [(60, 60, 60), (150, 110, 70), (220, 220, 215)]), 15)
    cv2.rectangle(img, (x0, y0), (x1, y1), glass, -1)
    for k in range(2):
        o = int(rng.integers(0, max(1, x1 - x0)))
        cv2.line(img, (x0 + o, y1), (x0 + o + 8 + 5 * k, y0), _scale(glass, 1.12), 2, cv2.LINE_AA)
    cv2.rectangle(img, (x0, y0), (x1, y1), frame, 2)


def _water(rng: np.random.Generator, top: int, floor_tiles: float = 0.6) -> np.ndarray:
    """A ``(96, 96, 3)`` picture of blue water whose surface starts at row ``top``.

    Deeper rows are darker; faint floor tiles (with probability ``floor_tiles``), wavy light ripples and
    small sparkles sit on top.
    """
    water = np.zeros((_S, _S, 3), np.uint8)
    top_c = np.asarray(_jitter(rng, _pick(rng, _WATER_COLOURS), 20), np.float64)
    bottom_c = top_c * rng.uniform(0.6, 0.9)
    t = np.clip((np.arange(_S) - top) / max(1, _S - top), 0, 1)[:, None, None]
    water[:] = np.clip((1 - t) * top_c + t * bottom_c, 0, 255).astype(np.uint8)
    if rng.random() < floor_tiles:
        g = int(rng.integers(8, 14))
        line_c = _scale(tuple(int(v) for v in top_c), rng.uniform(0.8, 0.92))
        for y in range(int(rng.integers(g)), _S, g):
            cv2.line(water, (0, y), (_S - 1, y), line_c, 1)
        for x in range(int(rng.integers(g)), _S, g):
            cv2.line(water, (x, 0), (x, _S - 1), line_c, 1)
    ripple = _scale(tuple(int(v) for v in top_c), rng.uniform(1.2, 1.5))
    for _ in range(int(rng.integers(4, 10))):
        y0 = rng.uniform(top, _S)
        amp, freq, phase = rng.uniform(1, 3), rng.uniform(0.1, 0.35), rng.uniform(0, 6.3)
        xs = np.arange(int(rng.integers(0, 40)), int(rng.integers(56, 97)), 2)
        ys = y0 + amp * np.sin(freq * xs + phase)
        cv2.polylines(water, [np.stack([xs, ys], 1).astype(np.int32)], False, ripple, 1, cv2.LINE_AA)
    for _ in range(int(rng.integers(3, 12))):
        c = (int(rng.integers(0, _S)), int(rng.integers(top, _S)))
        cv2.circle(water, c, 1, (230, 245, 255), -1, cv2.LINE_AA)
    return water


def _draw_pool(img: np.ndarray, masks: dict[str, np.ndarray], rng: np.random.Generator) -> dict:
    """A swimming pool: sky, hedge or a tiled hall wall on top, a tiled deck, a coping edge, rippled water.

    Returns the water line (rows at the left and right edge) for placing a ladder.
    """
    indoor = rng.random() < 0.5
    if not indoor:  # outdoor: sky, a building wall or a hedge
        bg = _pick(rng, [(150, 195, 235), (200, 190, 170), (80, 130, 70), (225, 225, 220)])
        img[:] = _jitter(rng, bg, 20)
    else:  # indoor pool hall: a tiled wall
        wall = _jitter(rng, _pick(rng, _TILE_COLOURS), 15)
        _tile_grid(
            img,
            masks["tiles"],
            rng,
            (0, 0, _S, _S),
            wall,
            _scale(wall, rng.uniform(0.65, 0.9)),
            int(rng.integers(7, 15)),
        )
    deck_top = int(rng.integers(0, 36))
    if indoor and deck_top >= 16 and rng.random() < 0.5:  # windows of the pool hall
        for _ in range(int(rng.integers(1, 3))):
            w, h = int(rng.integers(14, 30)), int(rng.integers(10, deck_top - 3))
            x0, y0 = int(rng.integers(0, _S - w)), int(rng.integers(1, deck_top - h - 1))
            _glass_panel(img, rng, (x0, y0, x0 + w, y0 + h))
            masks["tiles"][y0 : y0 + h + 1, x0 : x0 + w + 1] = False
    water_top_l = int(rng.integers(deck_top + 10, deck_top + 36))
    water_top_r = int(np.clip(water_top_l + rng.integers(-10, 11), deck_top + 8, 70))
    deck = _jitter(rng, _pick(rng, _TILE_COLOURS), 15)
    _tile_grid(
        img,
        masks["tiles"],
        rng,
        (0, deck_top, _S, max(water_top_l, water_top_r) + 1),
        deck,
        _scale(deck, rng.uniform(0.6, 0.85)),
        int(rng.integers(6, 13)),
    )
    water = _water(rng, min(water_top_l, water_top_r))
    if rng.random() < 0.5:  # a lane line on the pool floor
        x = int(rng.integers(10, 86))
        end = (x + int(rng.integers(-8, 9)), _S - 1)
        cv2.line(water, (x, 60), end, (20, 40, 90), int(rng.integers(3, 6)))
    poly = np.array([[0, water_top_l], [_S - 1, water_top_r], [_S - 1, _S - 1], [0, _S - 1]], np.int32)
    water_mask = np.zeros((_S, _S), np.uint8)
    cv2.fillPoly(water_mask, [poly], 1)
    img[water_mask > 0] = water[water_mask > 0]
    masks["water"] |= water_mask > 0
    masks["tiles"] &= water_mask == 0
    coping = _jitter(rng, _pick(rng, [(230, 230, 225), (120, 120, 125), (60, 90, 140)]), 15)
    cv2.line(img, (0, water_top_l - 1), (_S - 1, water_top_r - 1), coping, int(rng.integers(2, 4)))
    if rng.random() < 0.3:  # a life ring on the deck
        c = (int(rng.integers(10, 86)), int(rng.integers(deck_top + 4, max(deck_top + 5, water_top_l - 2))))
        r = int(rng.integers(5, 8))
        cv2.circle(img, c, r, _jitter(rng, (235, 235, 230), 10), 3, cv2.LINE_AA)
        for k in range(4):
            ang = np.pi / 2 * k + np.pi / 4
            q = (int(c[0] + r * np.cos(ang)), int(c[1] + r * np.sin(ang)))
            cv2.circle(img, q, 2, (210, 50, 45), -1)
        ring = np.zeros((_S, _S), np.uint8)
        cv2.circle(ring, c, r + 2, 1, -1)
        _occlude(masks, ring > 0)
    return {"water_line": (water_top_l, water_top_r), "deck_top": deck_top}


_RIM_COLOURS = [(235, 235, 230), (120, 120, 125), (60, 90, 140)]


def _fill_tub(img: np.ndarray, masks: dict[str, np.ndarray], rng: np.random.Generator, box: tuple) -> None:
    """A filled bathtub (rim plus pool-like water) in ``box = (x0, y0, x1, y1)``, reaching the bottom."""
    x0, y0, x1, y1 = box
    rim = _jitter(rng, _pick(rng, _RIM_COLOURS), 15)
    cv2.rectangle(img, (x0, y0), (x1, y1), rim, -1)
    side = int(rng.integers(2, 5))
    inner = np.zeros((_S, _S), np.uint8)
    left, right = (x0 + side if x0 > 0 else 0), (x1 - side if x1 < _S - 1 else _S - 1)
    cv2.rectangle(inner, (left, y0 + side + 1), (right, y1), 1, -1)
    water = _water(rng, y0 + side + 1, floor_tiles=0.5)
    img[inner > 0] = water[inner > 0]
    masks["tiles"][y0 : y1 + 1, x0 : x1 + 1] = False
    masks["water"] |= inner > 0


def _draw_bathroom(img: np.ndarray, masks: dict[str, np.ndarray], rng: np.random.Generator) -> dict:
    """A bathroom: a tiled wall, a sink (basin and tap), often a mirror, sometimes a towel, and one of

    * a spa bath across the whole width with a wall-hung basin above it (40 % of the bathrooms),
    * a bathtub beside a wall-hung vanity (30 %),
    * a vanity with a cabinet down to the floor (30 %).

    Tubs are drawn with the same water as pools. Returns the lowest row a rail on the wall may start at.
    """
    wall = _jitter(rng, _pick(rng, _TILE_COLOURS), 15)
    grout = _scale(wall, rng.uniform(0.65, 0.9))
    _tile_grid(img, masks["tiles"], rng, (0, 0, _S, _S), wall, grout, int(rng.integers(7, 15)))
    # A towel hanging at the side (behind the furniture).
    if rng.random() < 0.4:
        tx = int(_pick(rng, [int(rng.integers(2, 12)), int(rng.integers(74, 84))]))
        ty = int(rng.integers(20, 40))
        towel = _jitter(rng, _pick(rng, [(240, 240, 240), (200, 60, 60), (60, 90, 160), (230, 200, 120)]), 20)
        th = int(rng.integers(16, 26))
        cv2.rectangle(img, (tx, ty), (tx + 10, ty + th), towel, -1)
        masks["tiles"][ty : ty + th + 1, tx : tx + 11] = False
    layout = rng.random()
    ax, ay = int(rng.integers(10, 17)), int(rng.integers(4, 7))
    counter = _jitter(rng, _pick(rng, [(235, 235, 230), (60, 60, 65), (200, 190, 175)]), 15)
    cabinet = _jitter(rng, _pick(rng, [(225, 225, 220), (90, 95, 100), (50, 60, 90)]), 15)
    if layout < 0.4:  # spa bath, wall-hung basin on a shelf above it
        tub_y = int(rng.integers(44, 66))
        _fill_tub(img, masks, rng, (0, tub_y, _S - 1, _S - 1))
        counter_y = tub_y - int(rng.integers(12, 20))
        cx = int(rng.integers(ax + 6, _S - ax - 6))
        vx0, vx1, cabinet_y1 = cx - ax - 4, cx + ax + 4, counter_y + 5
    else:
        counter_y = int(rng.integers(52, 76))
        if layout < 0.7:  # a wall-hung vanity on one side, a filled tub on the other
            vw = int(rng.integers(32, 44))
            left = rng.random() < 0.5
            vx0, vx1 = (0, vw) if left else (_S - 1 - vw, _S - 1)
            tub_y = int(rng.integers(36, 60))
            tub_box = (vw + 3, tub_y, _S - 1, _S - 1) if left else (0, tub_y, _S - 4 - vw, _S - 1)
            _fill_tub(img, masks, rng, tub_box)
            cabinet_y1 = min(_S - 1, counter_y + int(rng.integers(10, 18)))
        else:
            vx0, vx1, tub_y, cabinet_y1 = 0, _S - 1, counter_y, _S - 1
        ax = min(ax, (vx1 - vx0) // 2 - 3)
        cx = int(rng.integers(vx0 + ax + 2, vx1 - ax - 1))
    cv2.rectangle(img, (vx0, counter_y), (vx1, counter_y + 5), counter, -1)
    if cabinet_y1 > counter_y + 6:
        cv2.rectangle(img, (vx0, counter_y + 6), (vx1, cabinet_y1), cabinet, -1)
    _occlude(masks, (slice(counter_y, cabinet_y1 + 1), slice(vx0, vx1 + 1)))
    # Sink: an elliptical basin set into the counter, with a tap behind it.
    ax, ay = int(rng.integers(11, 18)), int(rng.integers(4, 7))
    porcelain = _jitter(rng, (240, 240, 238), 10)
    inner = _scale(porcelain, rng.uniform(0.7, 0.82))
    tap_h = int(rng.integers(6, 11))

    def sink_shape(canvas: np.ndarray, basin: Colour = 1, bowl: Colour = 1, tap: Colour = 1) -> None:
        cv2.ellipse(canvas, (cx, counter_y + 2), (ax, ay), 0, 0, 360, basin, -1, cv2.LINE_AA)
        cv2.ellipse(canvas, (cx, counter_y + 3), (ax - 3, ay - 2), 0, 0, 360, bowl, -1, cv2.LINE_AA)
        cv2.line(canvas, (cx, counter_y - ay), (cx, counter_y - ay - tap_h), tap, 2)
        cv2.line(canvas, (cx, counter_y - ay - tap_h), (cx + 3, counter_y - ay - tap_h + 2), tap, 2)

    tap_c = _jitter(rng, (175, 170, 165), 15)
    sink_shape(img, porcelain, inner, tap_c)
    sink = np.zeros((_S, _S), bool)
    _draw_mask(sink, lambda c: sink_shape(c))
    _occlude(masks, sink)
    masks["sink"] |= sink
    # Mirror above the sink.
    if rng.random() < 0.65:
        mw, mh = int(rng.integers(18, 34)), int(rng.integers(16, 30))
        mx0 = int(np.clip(cx - mw // 2 + rng.integers(-6, 7), 2, _S - mw - 2))
        my1 = counter_y - ay - tap_h - int(rng.integers(3, 8))
        my0 = max(2, my1 - mh)
        if my1 - my0 > 8:
            _glass_panel(img, rng, (mx0, my0, mx0 + mw, my1))
            _occlude(masks, (slice(my0, my1 + 1), slice(mx0, mx0 + mw + 1)))
            masks["mirror"][my0 : my1 + 1, mx0 : mx0 + mw + 1] = True
    return {"rail_bottom": max(20, min(counter_y, tub_y) - 20)}


_WALL_COLOURS = [(230, 220, 200), (240, 235, 225), (200, 200, 205), (205, 220, 200), (235, 210, 205), (190, 205, 225)]
_WOOD_COLOURS = [(150, 100, 60), (185, 140, 95), (110, 75, 50), (200, 170, 130)]
_HEADBOARD_COLOURS = [(110, 75, 50), (160, 150, 140), (70, 60, 60), (200, 180, 150)]
_BLANKET_COLOURS = [(180, 40, 50), (60, 80, 140), (230, 230, 225), (90, 130, 90), (200, 170, 110), (120, 90, 140)]
_LAMP_COLOURS = [(250, 230, 180), (240, 240, 235), (230, 200, 150)]


def _bedroom_floor(img: np.ndarray, masks: dict[str, np.ndarray], rng: np.random.Generator) -> int:
    """Wooden planks or a fitted carpet from a random height down; returns that height."""
    floor_y = int(rng.integers(56, 74))
    if rng.random() < 0.55:  # wooden planks
        wood = _jitter(rng, _pick(rng, _WOOD_COLOURS), 20)
        img[floor_y:] = wood
        plank = int(rng.integers(5, 9))
        for y in range(floor_y, _S, plank):
            cv2.line(img, (0, y), (_S - 1, y), _scale(wood, 0.75), 1)
            for x in range(int(rng.integers(0, 30)), _S, int(rng.integers(20, 40))):
                cv2.line(img, (x, y), (x, min(y + plank, _S - 1)), _scale(wood, 0.8), 1)
    else:  # fitted carpet
        img[floor_y:] = _jitter(rng, _pick(rng, _CARPET_COLOURS), 20)
    masks["floor"][floor_y:] = True
    return floor_y


def _wall_picture(img: np.ndarray, rng: np.random.Generator) -> None:
    """Half of the time, a framed picture (or a window) on the wall."""
    if rng.random() < 0.5:
        px, py = int(rng.integers(5, 60)), int(rng.integers(3, 14))
        pw, ph = int(rng.integers(14, 28)), int(rng.integers(10, 18))
        cv2.rectangle(img, (px, py), (px + pw, py + ph), _jitter(rng, (120, 160, 190), 60), -1)
        cv2.rectangle(img, (px, py), (px + pw, py + ph), _jitter(rng, (70, 50, 40), 20), 2)


@dataclass(frozen=True)
class _Bed:
    """Where a bed stands (its left edge, width, headboard top, mattress top, bottom, perspective splay)
    and its colours."""

    x0: int
    width: int
    head_top: int
    mattress_top: int
    bottom: int
    headboard: tuple
    blanket: tuple
    pillow: tuple
    persp: int

    @classmethod
    def random(cls, rng: np.random.Generator, floor_y: int) -> _Bed:
        width = int(rng.integers(48, 70))
        x0 = int(rng.integers(2, _S - width - 2))
        head_top = int(rng.integers(14, 30))
        mattress_top = head_top + int(rng.integers(12, 20))
        bottom = int(np.clip(floor_y + rng.integers(10, 24), mattress_top + 15, _S - 1))
        headboard = _jitter(rng, _pick(rng, _HEADBOARD_COLOURS), 20)
        blanket = _jitter(rng, _pick(rng, _BLANKET_COLOURS), 25)
        pillow = _jitter(rng, (245, 245, 240), 10)
        persp = int(rng.integers(0, 8))
        return cls(x0, width, head_top, mattress_top, bottom, headboard, blanket, pillow, persp)

    def draw(self, canvas: np.ndarray, hb: Colour = 1, bl: Colour = 1, pl: Colour = 1, fold: Colour = 1) -> None:
        """Headboard, blanket (a trapezoid in perspective), its fold line and one or two pillows."""
        bx0, bw, top = self.x0, self.width, self.mattress_top
        cv2.rectangle(canvas, (bx0, self.head_top), (bx0 + bw, top + 4), hb, -1)
        pts = np.array(
            [[bx0, top], [bx0 + bw, top], [bx0 + bw + self.persp, self.bottom], [bx0 - self.persp, self.bottom]],
            np.int32,
        )
        cv2.fillPoly(canvas, [pts], bl)
        fy = top + (self.bottom - top) // 3
        cv2.line(canvas, (bx0, fy), (bx0 + bw, fy), fold, 2)
        n_p = 2 if bw > 50 else 1
        pw = (bw - 6) // n_p
        for k in range(n_p):
            x0 = bx0 + 3 + k * pw
            centre, axes = (x0 + pw // 2, top + 3), (pw // 2 - 2, 4)
            cv2.ellipse(canvas, centre, axes, 0, 0, 360, pl, -1, cv2.LINE_AA)


def _bedside_lamp(img, masks, rng, bed: _Bed, floor_y: int, wall: tuple) -> None:
    """Often a bedside table with a lamp, on the side of the bed with more room (drawn before the bed,
    which stands in front)."""
    left_room, right_room = bed.x0 - bed.persp, _S - (bed.x0 + bed.width + bed.persp)
    if not (max(left_room, right_room) >= 14 and rng.random() < 0.55):
        return
    side_x = 2 if left_room >= right_room else bed.x0 + bed.width + bed.persp + 2
    tw = min(max(left_room, right_room) - 4, 16)
    ty = floor_y - int(rng.integers(10, 18))
    lamp_c = _jitter(rng, _pick(rng, _LAMP_COLOURS), 10)
    wood2 = _scale(bed.headboard, rng.uniform(0.9, 1.2))
    lx = side_x + tw // 2
    shade_top = ty - int(rng.integers(14, 20))

    def lamp_shape(canvas: np.ndarray, shade: Colour = 1, base: Colour = 1) -> None:
        cv2.line(canvas, (lx, ty), (lx, shade_top + 7), base, 2)
        pts = np.array(
            [[lx - 4, shade_top], [lx + 4, shade_top], [lx + 6, shade_top + 8], [lx - 6, shade_top + 8]], np.int32
        )
        cv2.fillPoly(canvas, [pts], shade)

    cv2.circle(img, (lx, shade_top + 4), 11, _scale(wall, 1.08), -1, cv2.LINE_AA)  # glow
    cv2.rectangle(img, (side_x, ty), (side_x + tw, floor_y + 4), wood2, -1)
    lamp_shape(img, lamp_c, (90, 80, 70))
    lamp = np.zeros((_S, _S), bool)
    lamp[ty : floor_y + 5, side_x : side_x + tw + 1] = True
    _draw_mask(lamp, lambda c: lamp_shape(c))
    _occlude(masks, lamp)
    masks["lamp"] |= lamp


def _draw_bedroom(img: np.ndarray, masks: dict[str, np.ndarray], rng: np.random.Generator) -> dict:
    """A bedroom: a painted wall, a wooden or carpeted floor, a bed (headboard, blanket, pillows).

    About half of the bedrooms also have a bedside table with a lamp.
    """
    wall = _jitter(rng, _pick(rng, _WALL_COLOURS), 15)
    img[:] = wall
    floor_y = _bedroom_floor(img, masks, rng)
    _wall_picture(img, rng)
    bed = _Bed.random(rng, floor_y)
    _bedside_lamp(img, masks, rng, bed, floor_y, wall)
    drawn = np.zeros((_S, _S), bool)
    bed.draw(img, bed.headboard, bed.blanket, bed.pillow, _scale(bed.blanket, 1.25))
    _draw_mask(drawn, lambda c: bed.draw(c))
    _occlude(masks, drawn)
    masks["bed"] |= drawn
    return {"floor_y": floor_y, "rail_bottom": max(8, bed.head_top - 10)}


# ----------------------------------------------------------------------------------------------------
# Rails
# ----------------------------------------------------------------------------------------------------


def _tube(img: np.ndarray, mask: np.ndarray, pts: np.ndarray, thick: int, metal: dict) -> None:
    """A metal tube along the polyline ``pts`` (``(k, 2)`` x, y pixels), ``thick`` px wide.

    Drawn as a dark outline, the metal body and a thin specular highlight on its upper/left side;
    ``mask`` gets the outline's pixels.
    """
    pts = np.round(pts).astype(np.int32)
    cv2.polylines(img, [pts], False, metal["edge"], thick + 2, cv2.LINE_AA)
    cv2.polylines(img, [pts], False, metal["body"], thick, cv2.LINE_AA)
    off = -max(1, thick // 4)
    cv2.polylines(img, [pts + np.array([off, off])], False, metal["shine"], 1, cv2.LINE_AA)
    canvas = np.zeros(mask.shape, np.uint8)
    cv2.polylines(canvas, [pts], False, 1, thick + 2)
    mask |= canvas > 0


def _metal(rng: np.random.Generator) -> dict:
    """Colours of polished steel: dark edge, grey body, near-white highlight (RGB)."""
    body = int(rng.integers(150, 205))
    return {
        "edge": (int(rng.integers(40, 80)),) * 3,
        "body": (body, body, min(255, body + 4)),
        "shine": (int(rng.integers(235, 256)),) * 3,
    }


def _flange(img: np.ndarray, mask: np.ndarray, p: tuple[int, int], metal: dict) -> None:
    """A round wall mount at ``p`` (x, y)."""
    cv2.circle(img, p, 3, metal["edge"], -1, cv2.LINE_AA)
    cv2.circle(img, p, 2, metal["body"], -1, cv2.LINE_AA)
    cv2.circle(mask.view(np.uint8), p, 3, 1, -1)


def _rail_bar(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator, region: tuple) -> None:
    """A straight grab bar, horizontal, vertical or slanted, with wall mounts at both ends."""
    x0, y0, x1, y1 = region
    metal, thick = _metal(rng), int(rng.integers(4, 7))
    length = int(rng.integers(32, 64))
    slanted = (float(rng.uniform(20, 70)), float(rng.uniform(110, 160)))
    angle = float(_pick(rng, [0.0, 0.0, 90.0, 90.0, *slanted]))  # degrees: horizontal, vertical, slanted
    dx, dy = length * np.cos(np.radians(angle)), length * np.sin(np.radians(angle))
    sx = rng.uniform(x0, max(x0 + 1, x1 - abs(dx)))
    sy = rng.uniform(y0, y1)
    a = np.array([sx + max(0.0, -dx), sy])
    b = a + np.array([dx, dy])
    _tube(img, mask, np.stack([a, b]), thick, metal)
    for p in (a, b):
        _flange(img, mask, (int(round(p[0])), int(round(p[1]))), metal)


def _rail_ladder(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator, region: tuple) -> None:
    """Two tubes curving over at the top (a pool ladder or a towel radiator) joined by rungs."""
    x0, y0, x1, y1 = region
    metal, thick = _metal(rng), int(rng.integers(4, 7))
    gap = int(rng.integers(16, 28))
    height = int(rng.integers(36, 62))
    left = rng.uniform(x0, max(x0 + 1, x1 - gap - 8))
    top = rng.uniform(y0, y1)
    radius = rng.uniform(3, 5)
    side = float(_pick(rng, [-1.0, 1.0]))
    t = np.linspace(0, np.pi, 9)
    for x in (left, left + gap):
        # Straight up, a half loop over the top (the hand-hold), and a short piece down to the deck.
        cx = x + side * radius
        loop = np.stack([cx - side * radius * np.cos(t), top + 2 * radius - radius * np.sin(t)], 1)
        pts = np.concatenate([[[x, top + height]], loop, [[x + 2 * side * radius, top + 2 * radius + 4]]])
        _tube(img, mask, pts, thick, metal)
    n_rungs = int(rng.integers(2, 4))
    for k in range(n_rungs):
        y = top + 14 + k * (height - 16) / max(1, n_rungs)
        _tube(img, mask, np.array([[left, y], [left + gap, y]]), max(2, thick - 1), metal)


def _add_rail(
    img: np.ndarray,
    masks: dict[str, np.ndarray],
    rng: np.random.Generator,
    region: tuple[int, int, int, int],
    ladder_share: float,
    avoid: np.ndarray | None = None,
) -> None:
    """Draw one rail (a ladder with probability ``ladder_share``, else a grab bar).

    ``region = (x0, y0, x1, y1)`` (pixels) bounds where the rail's top-left end goes. Placements that
    would cover any of ``avoid`` (a ``(96, 96)`` bool mask) are redrawn, up to 20 times. The rail is
    drawn on top of everything, so its pixels (outline dilated by 1 px) are removed from every other mask.
    """
    for _ in range(20):
        canvas, rail = img.copy(), np.zeros((_S, _S), bool)
        if rng.random() < ladder_share:
            _rail_ladder(canvas, rail, rng, region)
        else:
            _rail_bar(canvas, rail, rng, region)
        # Anti-aliased edges reach one pixel past the drawn outline.
        rail = cv2.dilate(rail.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        if avoid is None or not (rail & avoid).any():
            break
    img[:] = canvas
    _occlude(masks, rail)
    masks["rail"] |= rail


# ----------------------------------------------------------------------------------------------------
# Lighting and noise
# ----------------------------------------------------------------------------------------------------


def _photograph(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera effects: exposure, a slight colour cast, uneven lighting, blur and sensor noise."""
    x = img.astype(np.float32)
    gain = rng.uniform(0.75, 1.15) * (1.0 + rng.uniform(-0.05, 0.05, 3))
    yy, xx = np.mgrid[0:_S, 0:_S] / _S
    angle = rng.uniform(0, 2 * np.pi)
    light = 1.0 + rng.uniform(0.0, 0.25) * ((xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle))
    x = x * gain[None, None, :] * light[..., None].astype(np.float32)
    sigma = rng.uniform(0.0, 0.8)
    if sigma > 0.3:
        x = cv2.GaussianBlur(x, (0, 0), sigma)
    x = x + rng.normal(0.0, rng.uniform(2.0, 7.0), x.shape).astype(np.float32)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------


def _image_rng(split: str, seed: int, index: int) -> np.random.Generator:
    """The generator of image ``index``: a function of (split, seed, index) only, so splits never share."""
    return np.random.default_rng(np.random.SeedSequence([zlib.crc32(split.encode()), int(seed), int(index)]))


def _one_image(split: str, label: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One ``(96, 96, 3)`` uint8 RGB photo of class ``label`` and its masks (see :func:`generate`)."""
    img = np.zeros((_S, _S, 3), np.uint8)
    masks = {k: np.zeros((_S, _S), bool) for k in MASK_KEYS}
    name = CLASS_NAMES[label]
    fair = split == "fair"
    if name == "pool":
        geo = _draw_pool(img, masks, rng)
        if split == "trap" or (fair and rng.random() < FAIR_RAIL_RATE):
            wl = min(geo["water_line"])
            # A ladder at the pool edge (or a hand rail on the deck / into the water).
            share = FAIR_LADDER_SHARE if fair else 0.75
            _add_rail(img, masks, rng, (4, max(0, wl - 24), 88, min(50, wl - 4)), ladder_share=share)
    elif name == "bathroom":
        geo = _draw_bathroom(img, masks, rng)
        if rng.random() < (FAIR_RAIL_RATE if fair else TRAIN_RAIL_RATE):
            # On the wall: a grab bar, a towel rail or a ladder-shaped towel radiator, clear of the sink.
            sink = cv2.dilate(masks["sink"].astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
            share = FAIR_LADDER_SHARE if fair else 0.4
            _add_rail(img, masks, rng, (2, 2, 90, geo["rail_bottom"]), ladder_share=share, avoid=sink)
    else:
        geo = _draw_bedroom(img, masks, rng)
        if fair and rng.random() < FAIR_RAIL_RATE:
            # On the wall above the bed: a towel rail or a ladder-shaped radiator, clear of the bed and lamp.
            keep = cv2.dilate((masks["bed"] | masks["lamp"]).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
            _add_rail(img, masks, rng, (2, 2, 90, geo["rail_bottom"]), ladder_share=FAIR_LADDER_SHARE, avoid=keep)
    return _photograph(img, rng), masks


def generate(
    n: int,
    split: str = "train",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Draw ``n`` labelled hotel photos with pixel masks of every object.

    Image ``i`` depends only on ``(split, seed, i)``: the same arguments give identical arrays, the
    first ``k`` images of ``generate(n, ...)`` are ``generate(k, ...)``, and different splits or seeds
    give different images.

    Parameters
    ----------
    n : int
        Number of images.
    split : {"train", "clean", "trap", "fair"}
        ``"train"`` and ``"clean"``: pools, bathrooms and bedrooms in turn (label ``i % 3``), rails in
        :data:`TRAIN_RAIL_RATE` of the bathrooms only. ``"trap"``: pools, every one with a rail.
        ``"fair"``: the three classes in turn, rails in :data:`FAIR_RAIL_RATE` of the images of every
        class (the training data of the ``"demo-fair"`` negative control).
    seed : int
        Seed of the split's random stream.

    Returns
    -------
    images : (n, 96, 96, 3) uint8
        RGB pixels, 0–255.
    labels : (n,) int64
        Indices into :data:`CLASS_NAMES`.
    masks : dict str -> (n, 96, 96) bool
        One entry per :data:`MASK_KEYS` kind: the visible pixels of that object. ``"water"``: pool or
        bathtub water; ``"tiles"``: tiled walls and pool decks; ``"sink"``: basin and tap;
        ``"mirror"``; ``"bed"``: headboard, blanket and pillows; ``"floor"``: the bedroom floor;
        ``"lamp"``: the bedside table and its lamp; ``"rail"``: metal rails, the drawn tube outline
        dilated by 1 px (its anti-aliased edge). Masks never overlap: an object drawn in front removes
        its pixels from the masks behind it.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; choose from {SPLITS}.")
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}.")
    images = np.zeros((n, _S, _S, 3), np.uint8)
    labels = np.zeros(n, np.int64)
    masks = {k: np.zeros((n, _S, _S), bool) for k in MASK_KEYS}
    for i in range(n):
        label = 0 if split == "trap" else i % len(CLASS_NAMES)
        img, m = _one_image(split, label, _image_rng(split, seed, i))
        images[i], labels[i] = img, label
        for k in MASK_KEYS:
            masks[k][i] = m[k]
    return images, labels, masks


def object_mask(labels: np.ndarray, masks: dict[str, np.ndarray]) -> np.ndarray:
    """Each image's mask of its own class's defining object (pool: water, bathroom: sink, bedroom: bed).

    Parameters
    ----------
    labels : (n,) int
        Indices into :data:`CLASS_NAMES`.
    masks : dict str -> (n, 96, 96) bool
        As returned by :func:`generate`.

    Returns
    -------
    (n, 96, 96) bool
    """
    labels = np.asarray(labels)
    out = np.zeros(masks["rail"].shape, bool)
    for index, name in enumerate(CLASS_NAMES):
        sel = labels == index
        out[sel] = masks[OWN_OBJECT[name]][sel]
    return out


def load_images(split: str = "clean") -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The small image set bundled with the package (``data/demo/`` in the repository, written by
    ``scripts/train_demo.py``).

    Images are read from ``data/demo/images/<split>/<class_name>/<name>.png`` in sorted order, masks
    from ``data/demo/masks.npz`` (keys ``"<split>/<class_name>/<name>/<kind>"``).

    Parameters
    ----------
    split : {"clean", "trap"}

    Returns
    -------
    images : (n, 96, 96, 3) uint8
        RGB pixels, 0–255.
    labels : (n,) int64
        Indices into :data:`CLASS_NAMES`.
    masks : dict str -> (n, 96, 96) bool
        One entry per :data:`MASK_KEYS` kind, as from :func:`generate`.
    """
    if split not in ("clean", "trap"):
        raise ValueError(f"Bundled images exist for 'clean' and 'trap', not {split!r}.")
    root = data_dir() / "demo"
    folder = root / "images" / split
    if not folder.is_dir():
        raise FileNotFoundError(f"No bundled images in {folder}; run scripts/train_demo.py to create them.")
    images, labels, keys = [], [], []
    for index, name in enumerate(CLASS_NAMES):
        for path in sorted((folder / name).glob("*.png")):
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise OSError(f"Could not read {path}.")
            images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            labels.append(index)
            keys.append(f"{split}/{name}/{path.stem}")
    n = len(images)
    masks = {k: np.zeros((n, _S, _S), bool) for k in MASK_KEYS}
    with np.load(root / "masks.npz") as stored:
        for i, key in enumerate(keys):
            for k in MASK_KEYS:
                masks[k][i] = stored[f"{key}/{k}"].astype(bool)
    return (
        np.stack(images) if images else np.zeros((0, _S, _S, 3), np.uint8),
        np.asarray(labels, np.int64),
        masks,
    )
