"""The scenes of the synthetic shapes dataset (bench.demo.synthetic): shapes placed on a background,
drawn with PIL, and captions that truly describe them. Pure functions of a numpy Generator; the files
are written by bench.demo.synthetic."""

from __future__ import annotations

import math
import re

import numpy as np

KINDS = ("circle", "square", "triangle", "star", "cross", "diamond")  # category ids 1..6 in this order
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 155, 50),
    "blue": (35, 70, 215),
    "yellow": (235, 200, 20),
    "purple": (135, 45, 170),
    "orange": (245, 125, 15),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250),
    "gray": (212, 212, 212),
    "beige": (238, 228, 200),
}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}
# Zero-shot prompt templates written to classes.json; "{}" is the class name.
ZEROSHOT_TEMPLATES = ("a {}", "a picture of a {}", "a drawing of a {}", "a photo of a {}",
                      "a simple {} shape")

# Radius of the circle that encloses a shape, as a fraction of min(width, height). The ranges are
# chosen so that the smallest large shape has a larger area than the biggest small one (whatever
# the kinds), which makes "largest shape" unambiguous.
_LARGE_R = (0.21, 0.26)
_SMALL_R = (0.09, 0.12)

# Fixed words of the caption templates and prompts below (kept in sync by tests/test_data.py).
_TEMPLATE_WORDS = (
    "a an and on the in at of with next to left right top bottom center corner background picture "
    "image simple drawing drawn shape shapes biggest is including colored photo one two three"
)


def caption_vocabulary() -> list[str]:
    """Every lower-case word the generator can emit in captions, class names and prompts (sorted).

    Captions are lower-case words separated by single spaces, plus the punctuation ',' and ':'.
    """
    words = set(_TEMPLATE_WORDS.split())
    words.update(KINDS)
    words.update(COLOURS)
    words.update(BACKGROUNDS)
    words.update(("small", "large"))
    for t in ZEROSHOT_TEMPLATES:
        words.update(tokens(t.replace("{}", "")))
    return sorted(words)


def tokens(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


# ----------------------------------------------------------------------------------------------
# geometry


def _unit_polygon(kind: str) -> np.ndarray:
    """Vertices [K, 2] of a shape centred at 0 and enclosed by the unit circle (y points down)."""
    if kind == "circle":
        a = np.linspace(0.0, 2 * math.pi, 40, endpoint=False)
        return np.stack([np.cos(a), np.sin(a)], 1)
    if kind == "square":
        h = 1 / math.sqrt(2)
        return np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
    if kind == "triangle":
        a = np.deg2rad([-90.0, 30.0, 150.0])
        return np.stack([np.cos(a), np.sin(a)], 1)
    if kind == "star":
        a = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)
    if kind == "cross":
        w = 0.3
        L = math.sqrt(1 - w * w)
        return np.array([[-w, -L], [w, -L], [w, -w], [L, -w], [L, w], [w, w], [w, L], [-w, L],
                         [-w, w], [-L, w], [-L, -w], [-w, -w]])
    if kind == "diamond":
        return np.array([[0.0, -1.0], [0.6, 0.0], [0.0, 1.0], [-0.6, 0.0]])
    raise ValueError(kind)


def _polygon_area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


_ROWS = ("top", "middle", "bottom")
_COLS = ("left", "middle", "right")


def _position_phrase(row: str, col: str) -> str:
    if row == "middle" and col == "middle":
        return "in the center"
    if row == "middle":
        return f"on the {col}"
    if col == "middle":
        return f"at the {row}"
    return f"in the {row} {col} corner"


def image_sizes(image_size: tuple[int, int]) -> list[tuple[int, int]]:
    """Landscape, portrait, square and wide variants, so Phi-3-vision's HD crops see variety."""
    w, h = image_size
    m = (w + h) // 2
    return [(w, h), (h, w), (m, m), (round(w * 1.25), h)]


class _Shape:
    def __init__(self, kind: str, colour: str, large: bool, cx: float, cy: float, r: float, angle: float,
                 width: int, height: int) -> None:
        self.kind, self.colour, self.large, self.radius = kind, colour, large, r
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        self.points = _unit_polygon(kind) @ rot.T * r + np.array([cx, cy])
        self.area = _polygon_area(self.points)
        self.cx, self.cy = cx, cy
        self.row = _ROWS[min(2, int(3 * cy / height))]
        self.col = _COLS[min(2, int(3 * cx / width))]

    @property
    def size(self) -> str:
        return "large" if self.large else "small"

    @property
    def position(self) -> str:
        return _position_phrase(self.row, self.col)

    def bbox(self) -> list[float]:
        x0, y0 = self.points.min(0)
        x1, y1 = self.points.max(0)
        return [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)]


def place_shapes(rng: np.random.Generator, main_kind: str, width: int, height: int) -> list[_Shape]:
    """1-3 non-overlapping shapes in distinct grid cells; the first ("main") one is the largest."""
    m = min(width, height)
    n_wanted = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
    shapes: list[_Shape] = []
    used: set[tuple[str, str]] = set()
    cells_taken: set[tuple[int, int]] = set()
    tries = 0
    while len(shapes) < n_wanted and tries < 200:
        tries += 1
        first = not shapes
        kind = main_kind if first else KINDS[int(rng.integers(len(KINDS)))]
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        # With several shapes only the main one is large; a lone shape is large 70% of the time.
        large = first and (n_wanted > 1 or rng.random() < 0.7)
        lo, hi = _LARGE_R if large else _SMALL_R
        r = float(rng.uniform(lo, hi)) * m
        row, col = int(rng.integers(3)), int(rng.integers(3))
        angle = 0.0 if kind == "circle" else float(np.deg2rad(rng.uniform(-12, 12)))
        ux, uy = float(rng.random()), float(rng.random())
        if (kind, colour) in used or (row, col) in cells_taken:
            continue
        cx = _coord_in_cell(col, width, r, ux)
        cy = _coord_in_cell(row, height, r, uy)
        if any(math.hypot(cx - s.cx, cy - s.cy) < r + s.radius + 0.03 * m for s in shapes):
            continue
        shapes.append(_Shape(kind, colour, large, cx, cy, r, angle, width, height))
        used.add((kind, colour))
        cells_taken.add((row, col))
    return shapes


def _coord_in_cell(cell: int, extent: int, r: float, u: float) -> float:
    """A coordinate inside grid cell `cell` (0..2) that keeps a shape of radius r inside the image."""
    lo = max(cell * extent / 3, r + 1)
    hi = min((cell + 1) * extent / 3 - 1e-3, extent - r - 1)
    if hi < lo:  # tiny images: stay inside the picture, the label follows the actual position
        lo = hi = min(max(extent / 2, r + 1), extent - r - 1)
    return lo + u * (hi - lo)


def draw_scene(width: int, height: int, background: str, shapes: list[_Shape], rng: np.random.Generator):
    """Render at 2x and downsample, which anti-aliases the edges."""
    from PIL import Image, ImageDraw

    bg = _jitter(BACKGROUNDS[background], 4, rng)
    im = Image.new("RGB", (2 * width, 2 * height), bg)
    draw = ImageDraw.Draw(im)
    for s in shapes:
        fill = _jitter(COLOURS[s.colour], 12, rng)
        draw.polygon([(float(2 * x), float(2 * y)) for x, y in s.points], fill=fill)
    return im.resize((width, height), Image.Resampling.LANCZOS)


def _jitter(rgb: tuple[int, int, int], amount: int, rng: np.random.Generator) -> tuple[int, int, int]:
    d = rng.integers(-amount, amount + 1, size=3)
    return tuple(int(v) for v in np.clip(np.array(rgb) + d, 0, 255))


# ----------------------------------------------------------------------------------------------
# captions


def _np(s: _Shape, size: bool = False) -> str:
    """Noun phrase: 'a large red circle', 'an orange star'."""
    words = ([s.size] if size else []) + [s.colour, s.kind]
    return ("an " if words[0][0] in "aeiou" else "a ") + " ".join(words)


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def caption_candidates(shapes: list[_Shape], background: str) -> list[str]:
    """At least 8 distinct true descriptions; each names the colour and kind of the main shape."""
    main = shapes[0]
    if len(shapes) == 1:
        s = main
        return [
            f"{_np(s, True)} {s.position}",
            f"{_np(s)} on a {background} background",
            f"a picture of {_np(s, True)}",
            f"one {s.colour} {s.kind} {s.position}",
            f"a {s.kind} colored {s.colour} {s.position}",
            f"{_np(s)} drawn {s.position} of the picture",
            f"a {background} image with {_np(s, True)}",
            f"a simple drawing of {_np(s)} {s.position}",
        ]
    n = NUMBER_WORDS[len(shapes)]
    others = shapes[1:]
    return [
        f"{n} shapes: {_join([_np(s, True) for s in shapes])}",
        _join([f"{_np(s, True)} {s.position}" for s in shapes]),
        f"{_np(main, True)} next to {_join([_np(s, True) for s in others])}",
        f"{n} shapes on a {background} background, the biggest is {_np(main)}",
        f"a picture of {_join([_np(s) for s in shapes])}",
        f"{_np(main, True)} {main.position} with {_join([_np(s, True) for s in others])}",
        f"a simple drawing of {_join([_np(s) for s in shapes])}",
        f"{n} colored shapes, including {_np(main, True)} {main.position}",
    ]


def num_captions(j: int) -> int:
    """5 captions, with a few images getting 6 or 7 like real COCO (fixed pattern: every split of
    at least 8 images has both)."""
    if j % 13 == 7:
        return 7
    if j % 9 == 4:
        return 6
    return 5
