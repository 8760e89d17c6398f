"""A deterministic procedural image dataset that stands in for ImageNet.

Every image is a pure function of ``(seed, split, index)``: its parameters come from
``numpy.random.default_rng((SALT, seed, split_id, index))``, so any item can be drawn alone, in any
order, in any process, and is byte-identical each time.

A class is a combination of four attributes (a bijection for class indices below 1024):

* **shape family**: disc, square, triangle, star, cross, ring, ellipse, hexagon;
* **texture**: solid, stripes, checker, dots, with a **texture scale** (coarse or fine; a solid
  object at the fine scale is outlined in its secondary colour);
* **home palette**: one of 16 hues. Half the images of a class use their home palette, the other
  half a random one, so mean colour alone is a weak cue and shape and texture decide the class.

An image holds 1–3 objects of its class at random positions, sizes and rotations, on a textured
background (linear or radial gradient, low-frequency noise, soft stripes) of low saturation whose
style and colours do not depend on the class. Objects are rendered ``supersample`` times larger
and box-filtered down (antialiasing). The foreground mask is the union of the drawn objects at
the image resolution: a pixel is foreground when objects cover at least half of it.

All images of a batch are rendered together with numpy on coordinate grids, each object only in
its bounding window (the only per-image Python work is seeding its random generator): a 32-px
image costs about 0.4 ms of one core (``benchmarks/bench_data.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.colors import hsv_to_rgb

from harness.config.data import DataConfig
from harness.data.base import ImageDataset, check_split
from harness.errors import DataError
from harness.io import atomic_write, content_hash
from harness.logs import event, get_logger
from harness.progress import progress

log = get_logger(__name__)

GENERATOR_VERSION = 1  # bump when the rendering changes: it is part of the fingerprint
SALT = 0x48524E53  # separates these random streams from any other use of the same seed
SPLIT_IDS = {"train": 0, "val": 1}

TEXTURES = ("solid", "stripes", "checker", "dots")
TEXTURE_SCALES = ("coarse", "fine")
TEXTURE_FREQUENCY = (1.1, 1.8)  # texture cycles per object radius, per texture scale
SHADE_MID, SHADE_SLOPE = 0.9, 0.12  # object brightness = clip(0.9 - 0.12 * dy / radius, 0, 1)
OUTLINE_INSET = 0.75  # "solid" at the fine scale is outlined: the border outside 0.75 radii
NUM_PALETTES = 16
MAX_OBJECTS = 3
HOME_PALETTE_PROB = 0.5  # probability that an image uses its class's home palette
NOISE_GRID = 4  # the low-frequency background noise is a bilinear upsampling of a 4x4 grid
MAX_CHUNK_PIXELS = 1 << 21  # supersampled pixels rendered at once (bounds memory)
# a split this small (images + masks) is rendered once, on first use, and kept in memory: a
# CPU-study SiT step would otherwise spend ~15% of its time re-rendering its batch
IN_MEMORY_BYTES = 64 << 20

# Columns of the per-image block of uniform draws (fixed: changing it changes every image).
_N_OBJ, _PAL_HOME, _PAL_RAND, _HUE, _SAT, _VAL = range(6)
_BG_STYLE, _BG_H1, _BG_S1, _BG_V1, _BG_H2, _BG_S2, _BG_V2 = range(6, 13)
_BG_ANGLE, _BG_FREQ, _BG_PHASE, _BG_CX, _BG_CY = range(13, 18)
_BG_NOISE = 18  # NOISE_GRID**2 columns
_OBJ = _BG_NOISE + NOISE_GRID**2  # per object: cx, cy, radius, angle, texture phase
_OBJ_FIELDS = 5
NUM_DRAWS = _OBJ + MAX_OBJECTS * _OBJ_FIELDS


BACKGROUND_STYLES = {"textured": (0, 1, 2, 3), "gradient": (0, 1), "flat": (4,)}  # 4: one colour


@dataclass(frozen=True)
class Variety:
    """How varied the images are (the defaults are the full dataset).

    A class is always its shape and texture; ``home_palette_prob`` = 1 adds its colour as a cue,
    ``max_objects`` = 1 gives one large object per image, and ``backgrounds`` narrows the
    background styles. The per-image random draws are the same at every variety, so a change of
    variety changes what is drawn, not which random numbers are used.
    """

    max_objects: int = MAX_OBJECTS
    home_palette_prob: float = HOME_PALETTE_PROB
    backgrounds: str = "textured"
    object_scale: float = 1.0

    @classmethod
    def of(cls, cfg: DataConfig) -> Variety:
        return cls(cfg.max_objects, cfg.home_palette_prob, cfg.backgrounds, cfg.object_scale)


FULL_VARIETY = Variety()


@dataclass(frozen=True)
class ClassRecipe:
    """What makes a class: drawn objects share these attributes."""

    shape: int  # index into SHAPES
    texture: int  # index into TEXTURES
    texture_scale: int  # index into TEXTURE_SCALES
    palette: int  # home palette, 0..NUM_PALETTES-1

    @property
    def name(self) -> str:
        if TEXTURES[self.texture] == "solid":
            texture = ("plain", "outlined")[self.texture_scale]
        else:
            texture = f"{TEXTURES[self.texture]}-{TEXTURE_SCALES[self.texture_scale]}"
        return f"{SHAPES[self.shape]}-{texture}-p{self.palette:02d}"


def recipe_arrays(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shape, texture, texture scale and home palette of each label, four (N,) int64 arrays.

    Mixed-radix digits of the label (radices 8, 4, 2, 16) are sheared by the lower digits, which
    keeps the map a bijection on ``0 .. MAX_CLASSES-1`` and makes neighbouring classes differ in
    every attribute.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= MAX_CLASSES):
        raise DataError(f"class labels must lie in 0..{MAX_CLASSES - 1} (the generated classes)")
    d0, d1 = labels % len(SHAPES), (labels // len(SHAPES)) % len(TEXTURES)
    d2 = (labels // (len(SHAPES) * len(TEXTURES))) % len(TEXTURE_SCALES)
    d3 = labels // (len(SHAPES) * len(TEXTURES) * len(TEXTURE_SCALES))
    return (
        d0,
        (d1 + d0) % len(TEXTURES),
        (d2 + d1 + d0) % len(TEXTURE_SCALES),
        (d3 + 3 * d0 + 5 * d1 + 7 * d2) % NUM_PALETTES,
    )


def class_recipe(label: int) -> ClassRecipe:
    """The attributes of class ``label`` (see :func:`recipe_arrays`)."""
    shape, texture, scale, palette = (int(a[0]) for a in recipe_arrays(np.array([label])))
    return ClassRecipe(shape=shape, texture=texture, texture_scale=scale, palette=palette)


@dataclass
class Scenes:
    """Everything needed to render N images (struct of arrays; angles in radians, positions in
    [-1, 1] image coordinates with x to the right and y downwards, colours RGB in [0, 1])."""

    labels: np.ndarray  # (N,) int64
    shape: np.ndarray  # (N,) int: SHAPES index
    texture: np.ndarray  # (N,) int: TEXTURES index
    texture_scale: np.ndarray  # (N,) int: TEXTURE_SCALES index (solid: 1 = outlined)
    n_objects: np.ndarray  # (N,) int in 1..MAX_OBJECTS
    centers: np.ndarray  # (N, MAX_OBJECTS, 2) float: object centre (x, y)
    radii: np.ndarray  # (N, MAX_OBJECTS) float: object radius
    angles: np.ndarray  # (N, MAX_OBJECTS) float: object rotation
    texture_phase: np.ndarray  # (N, MAX_OBJECTS) float: texture offset in cycles
    primary: np.ndarray  # (N, 3) float: object colour
    secondary: np.ndarray  # (N, 3) float: texture colour
    bg_style: np.ndarray  # (N,) int: 0 linear, 1 radial, 2 noise, 3 stripes
    bg_colors: np.ndarray  # (N, 2, 3) float: the two background colours
    bg_angle: np.ndarray  # (N,) float: gradient / stripe direction
    bg_frequency: np.ndarray  # (N,) float: stripe cycles per unit length
    bg_phase: np.ndarray  # (N,) float: stripe phase
    bg_center: np.ndarray  # (N, 2) float: radial gradient centre
    bg_noise: np.ndarray  # (N, NOISE_GRID, NOISE_GRID) float in [0, 1]

    def __len__(self) -> int:
        return len(self.labels)


def draw_uniforms(seed: int, split: str, indices: np.ndarray) -> np.ndarray:
    """Per-image blocks of uniform draws, (N, NUM_DRAWS) float64; row i depends only on
    (seed, split, indices[i])."""
    split_id = SPLIT_IDS[check_split(split)]
    out = np.empty((len(indices), NUM_DRAWS))
    for row, index in enumerate(indices.tolist()):
        out[row] = np.random.default_rng((SALT, seed, split_id, index)).random(NUM_DRAWS)
    return out


def sample_scenes(
    seed: int,
    split: str,
    indices: np.ndarray,
    num_classes: int,
    variety: Variety = FULL_VARIETY,
) -> Scenes:
    """The scene parameters of images ``indices`` of ``split`` (labels are ``index % classes``)."""
    indices = np.asarray(indices, dtype=np.int64)
    u = draw_uniforms(seed, split, indices)  # (N, NUM_DRAWS)
    n = len(indices)
    labels = indices % num_classes
    shape, texture, scale, home = recipe_arrays(labels)

    most = variety.max_objects
    n_objects = 1 + np.minimum((u[:, _N_OBJ] * most).astype(np.int64), most - 1)
    random_palette = np.minimum((u[:, _PAL_RAND] * NUM_PALETTES).astype(np.int64), NUM_PALETTES - 1)
    palette = np.where(u[:, _PAL_HOME] < variety.home_palette_prob, home, random_palette)
    hue = (palette / NUM_PALETTES + (u[:, _HUE] - 0.5) * 0.05) % 1.0
    sat = 0.6 + 0.35 * u[:, _SAT]
    val = 0.6 + 0.4 * u[:, _VAL]
    primary = hsv_to_rgb(np.stack([hue, sat, val], axis=-1))
    secondary = hsv_to_rgb(np.stack([(hue + 0.08) % 1.0, 0.8 * sat, 0.5 * val], axis=-1))

    obj = u[:, _OBJ:].reshape(n, MAX_OBJECTS, _OBJ_FIELDS)
    single = (n_objects == 1)[:, None]
    radii = np.where(single, 0.32 + 0.23 * obj[..., 2], 0.22 + 0.18 * obj[..., 2])
    radii = radii * variety.object_scale

    bg_h1 = u[:, _BG_H1]
    bg_h2 = (bg_h1 + (u[:, _BG_H2] - 0.5) * 0.3) % 1.0
    bg1 = np.stack([bg_h1, 0.05 + 0.4 * u[:, _BG_S1], 0.25 + 0.6 * u[:, _BG_V1]], axis=-1)
    bg2 = np.stack([bg_h2, 0.05 + 0.4 * u[:, _BG_S2], 0.25 + 0.6 * u[:, _BG_V2]], axis=-1)
    return Scenes(
        labels=labels,
        shape=shape,
        texture=texture,
        texture_scale=scale,
        n_objects=n_objects,
        centers=(obj[..., 0:2] - 0.5) * (1.3 / max(1.0, variety.object_scale)),  # in frame
        radii=radii,
        angles=obj[..., 3] * 2 * np.pi,
        texture_phase=obj[..., 4],
        primary=primary,
        secondary=secondary,
        bg_style=_background_styles(u[:, _BG_STYLE], variety.backgrounds),
        bg_colors=hsv_to_rgb(np.stack([bg1, bg2], axis=1)),
        bg_angle=u[:, _BG_ANGLE] * 2 * np.pi,
        bg_frequency=0.75 + 1.25 * u[:, _BG_FREQ],
        bg_phase=u[:, _BG_PHASE] * 2 * np.pi,
        bg_center=(np.stack([u[:, _BG_CX], u[:, _BG_CY]], axis=-1) - 0.5) * 2,
        bg_noise=u[:, _BG_NOISE:_OBJ].reshape(n, NOISE_GRID, NOISE_GRID),
    )


def _background_styles(draws: np.ndarray, backgrounds: str) -> np.ndarray:
    """(N,) uniform draws -> background style indices, uniform over the allowed styles."""
    styles = np.asarray(BACKGROUND_STYLES[backgrounds])
    pick = np.minimum((draws * len(styles)).astype(np.int64), len(styles) - 1)
    return styles[pick]


# ---------------------------------------------------------------------------------------------
# Shapes and textures on object-local coordinates (u, v), in units of the object radius
# ---------------------------------------------------------------------------------------------
_SQRT3 = np.float32(np.sqrt(3.0))
_STAR_INNER = 0.45  # inner radius of the 5-point star (outer radius 1)
_STAR_SECTOR = np.float32(2 * np.pi / 5)
_STAR_P0 = np.array([1.0, 0.0], dtype=np.float32)  # outer vertex at angle 0
_STAR_P1 = _STAR_INNER * np.array([np.cos(np.pi / 5), np.sin(np.pi / 5)], dtype=np.float32)


def _inside_star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # fold the angle into [0, pi/5]: the boundary there is the segment outer vertex -> inner vertex
    phi = np.abs(np.mod(np.arctan2(v, u) + _STAR_SECTOR / 2, _STAR_SECTOR) - _STAR_SECTOR / 2)
    r = np.hypot(u, v)
    x, y = r * np.cos(phi), r * np.sin(phi)
    edge = _STAR_P1 - _STAR_P0
    return edge[0] * (y - _STAR_P0[1]) - edge[1] * (x - _STAR_P0[0]) >= 0


SHAPE_INSIDE = {
    "disc": lambda u, v: u * u + v * v <= 1.0,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.8,
    "triangle": lambda u, v: (v >= -0.5) & (_SQRT3 * np.abs(u) + v <= 1.0),
    "star": _inside_star,
    "cross": lambda u, v: (
        ((np.abs(u) <= 0.33) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.33) & (np.abs(u) <= 0.95))
    ),
    "ring": lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.55**2),
    "ellipse": lambda u, v: u * u + (v / 0.55) ** 2 <= 1.0,
    "hexagon": lambda u, v: (np.abs(v) <= _SQRT3 / 2) & (_SQRT3 * np.abs(u) + np.abs(v) <= _SQRT3),
}
SHAPES = tuple(SHAPE_INSIDE)  # disc, square, triangle, star, cross, ring, ellipse, hexagon
MAX_CLASSES = len(SHAPES) * len(TEXTURES) * len(TEXTURE_SCALES) * NUM_PALETTES  # 1024

# texture(s, t) -> True where the secondary colour shows; s, t are in texture cycles
TEXTURE_PATTERN = {
    "stripes": lambda s, t: np.mod(s, 1.0) < 0.5,
    "checker": lambda s, t: (np.floor(s) + np.floor(t)) % 2 == 1,
    "dots": lambda s, t: (np.mod(s, 1.0) - 0.5) ** 2 + (np.mod(t, 1.0) - 0.5) ** 2 < 0.1,
}


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
def _col(values: np.ndarray) -> np.ndarray:
    """(n,) -> (n, 1, 1) float32, to broadcast per-image values over an image grid."""
    return np.asarray(values, dtype=np.float32)[:, None, None]


def _pixel_centers(size: int) -> np.ndarray:
    """Pixel-centre coordinates of a ``size``-pixel axis, spanning [-1, 1]."""
    return ((np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1).astype(np.float32)


def _bilinear_matrix(size: int, grid: int) -> np.ndarray:
    """(size, grid) weights that upsample a ``grid``-point axis to ``size`` pixels, linearly."""
    pos = (np.arange(size) + 0.5) / size * (grid - 1)
    return np.maximum(0.0, 1.0 - np.abs(pos[:, None] - np.arange(grid)[None, :])).astype(np.float32)


def render_backgrounds(scenes: Scenes, resolution: int) -> np.ndarray:
    """Backgrounds at the image resolution, (N, R, R, 3) float32 in [0, 1]."""
    n = len(scenes)
    xs = _pixel_centers(resolution)
    x, y = xs[None, None, :], xs[None, :, None]  # (1, 1, R), (1, R, 1)
    t = np.zeros((n, resolution, resolution), dtype=np.float32)  # mix weight of colour 2
    for style in range(4):  # style 4 (flat) keeps t = 0: the first colour alone
        sel = np.nonzero(scenes.bg_style == style)[0]
        if sel.size == 0:
            continue
        angle = scenes.bg_angle[sel]
        along = _col(np.cos(angle)) * x + _col(np.sin(angle)) * y  # (n, R, R)
        if style == 0:  # linear gradient
            t[sel] = np.clip(0.5 + along / (2 * np.sqrt(2)), 0, 1)
        elif style == 1:  # radial gradient
            cx, cy = _col(scenes.bg_center[sel, 0]), _col(scenes.bg_center[sel, 1])
            t[sel] = np.clip(np.hypot(x - cx, y - cy) / 2, 0, 1)
        elif style == 2:  # low-frequency noise
            w = _bilinear_matrix(resolution, NOISE_GRID)  # (R, G)
            t[sel] = np.einsum("ij,njk,lk->nil", w, scenes.bg_noise[sel].astype(np.float32), w)
        else:  # soft stripes
            freq, phase = _col(scenes.bg_frequency[sel]), _col(scenes.bg_phase[sel])
            t[sel] = 0.5 + 0.5 * np.sin(2 * np.pi * freq * along + phase)
    c1 = scenes.bg_colors[:, 0].astype(np.float32)[:, None, None, :]  # (N, 1, 1, 3)
    c2 = scenes.bg_colors[:, 1].astype(np.float32)[:, None, None, :]
    return c1 + (c2 - c1) * t[..., None]


# how far each shape reaches from its centre, in radii (the square's corners: 0.8 * sqrt(2))
SHAPE_EXTENT = {"square": 1.14, "cross": 1.01}


def _draw_groups(scenes: Scenes) -> list[tuple[int, int, np.ndarray]]:
    """(object slot, shape family, image rows) in drawing order.

    Grouping by family lets each group use its own shape function on whole arrays, and keeping
    slot 0 of single-object images (large objects) apart gives the others smaller windows.
    """
    groups = []
    for k in range(MAX_OBJECTS):
        rows = np.nonzero(scenes.n_objects > k)[0]
        parts = (
            [rows] if k else [rows[scenes.n_objects[rows] == 1], rows[scenes.n_objects[rows] > 1]]
        )
        for part in parts:
            for family in np.unique(scenes.shape[part]):
                groups.append((k, int(family), part[scenes.shape[part] == family]))
    return groups


def render_objects(
    scenes: Scenes, resolution: int, supersample: int
) -> tuple[np.ndarray, np.ndarray]:
    """Objects, box-filtered from ``supersample``x resolution.

    Each object is evaluated only in a square window around it (its bounding box). The
    supersampled canvas holds two planes, the shaded weights of the primary and the secondary
    colour (both zero where no object is), so compositing moves little memory.

    Returns:
        premultiplied colour (N, R, R, 3) float32 and coverage (N, R, R) float32 in [0, 1].
    """
    n, ss = len(scenes), supersample
    size = resolution * ss
    centers = _pixel_centers(size)  # (S,)
    primary_plane = np.zeros((n, size, size), dtype=np.float32)
    secondary_plane = np.zeros((n, size, size), dtype=np.float32)
    primary_flat, secondary_flat = primary_plane.reshape(-1), secondary_plane.reshape(-1)
    for k, family, rows in _draw_groups(scenes):  # later objects are drawn over earlier ones
        shape = SHAPES[family]
        cx, cy = scenes.centers[rows, k, 0], scenes.centers[rows, k, 1]
        radius = scenes.radii[rows, k]
        # the image spans 2 units = S subpixels; the window is the shape's bounding square
        extent = SHAPE_EXTENT.get(shape, 1.0) * radius.max()
        win = min(size, int(np.ceil(extent * size)) + 2)
        offsets = np.arange(win)
        x0 = np.clip(np.floor((cx + 1) / 2 * size - win / 2).astype(np.int64), 0, size - win)
        y0 = np.clip(np.floor((cy + 1) / 2 * size - win / 2).astype(np.int64), 0, size - win)
        cols, lines = x0[:, None] + offsets, y0[:, None] + offsets  # (n, W) subpixel indices
        r = _col(radius)
        dx = (centers[cols][:, None, :] - _col(cx)) / r  # (n, 1, W)
        dy = (centers[lines][:, :, None] - _col(cy)) / r  # (n, W, 1)
        angle = scenes.angles[rows, k]
        cos, sin = _col(np.cos(angle)), _col(np.sin(angle))
        u, v = cos * dx + sin * dy, cos * dy - sin * dx  # (n, W, W) rotated local coordinates
        inside = SHAPE_INSIDE[shape](u, v)  # (n, W, W)
        shade = np.clip(SHADE_MID - SHADE_SLOPE * dy, 0.0, 1.0)  # lit from the top, (n, W, 1)
        pattern = _texture_pattern(scenes, rows, k, shape, u, v)  # (n, W, W) True: secondary colour
        flat = (rows[:, None, None] * size + lines[:, :, None]) * size + cols[:, None, :]
        primary_flat[flat] = np.where(inside, np.where(pattern, 0.0, shade), primary_flat[flat])
        secondary_flat[flat] = np.where(inside, np.where(pattern, shade, 0.0), secondary_flat[flat])

    def box(plane: np.ndarray) -> np.ndarray:  # (N, S, S) -> (N, R, R) mean over ss x ss blocks
        return plane.reshape(n, resolution, ss, resolution, ss).mean(axis=(2, 4), dtype=np.float32)

    primary_weight, secondary_weight = box(primary_plane), box(secondary_plane)
    coverage = box((primary_plane + secondary_plane) > 0)  # shading is > 0.7 wherever drawn
    premultiplied = (
        primary_weight[..., None] * scenes.primary.astype(np.float32)[:, None, None, :]
        + secondary_weight[..., None] * scenes.secondary.astype(np.float32)[:, None, None, :]
    )  # (N, R, R, 3)
    return premultiplied, coverage


def _texture_pattern(
    scenes: Scenes, rows: np.ndarray, k: int, shape: str, u: np.ndarray, v: np.ndarray
) -> np.ndarray:
    """Where the secondary colour shows on object slot ``k`` of ``rows``, (n, W, W) bool."""
    scale = scenes.texture_scale[rows]
    freq = _col(np.asarray(TEXTURE_FREQUENCY)[scale])
    phase = _col(scenes.texture_phase[rows, k])
    textures = scenes.texture[rows]
    pattern = np.zeros(u.shape, dtype=bool)
    for texture in np.unique(textures):
        sel = textures == texture
        if TEXTURES[texture] == "solid":  # plain, or outlined at the fine scale
            sel &= scale == 1
            if sel.any():
                inset = SHAPE_INSIDE[shape](u[sel] / OUTLINE_INSET, v[sel] / OUTLINE_INSET)
                pattern[sel] = ~inset
            continue
        fn = TEXTURE_PATTERN[TEXTURES[texture]]
        if sel.all():
            return fn(u * freq + phase, v * freq + phase)
        pattern[sel] = fn(u[sel] * freq[sel] + phase[sel], v[sel] * freq[sel] + phase[sel])
    return pattern


def render(scenes: Scenes, resolution: int, supersample: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Render scenes into images ``(N, R, R, 3) uint8`` and masks ``(N, R, R) bool``."""
    background = render_backgrounds(scenes, resolution)  # (N, R, R, 3)
    premultiplied, coverage = render_objects(scenes, resolution, supersample)
    image = background * (1.0 - coverage[..., None]) + premultiplied
    pixels = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    return pixels, coverage >= 0.5


def default_supersample(resolution: int) -> int:
    """3x below 64 px (small objects need the finer edge coverage), 2x from 64 px."""
    return 3 if resolution < 64 else 2


def render_indices(
    seed: int,
    split: str,
    indices: np.ndarray,
    num_classes: int,
    resolution: int,
    variety: Variety = FULL_VARIETY,
) -> tuple[np.ndarray, np.ndarray]:
    """Images and masks of ``indices``, rendered in memory-bounded chunks."""
    supersample = default_supersample(resolution)
    chunk = max(1, MAX_CHUNK_PIXELS // (resolution * supersample) ** 2)
    images = np.empty((len(indices), resolution, resolution, 3), dtype=np.uint8)
    masks = np.empty((len(indices), resolution, resolution), dtype=bool)
    for start in range(0, len(indices), chunk):
        part = indices[start : start + chunk]
        scenes = sample_scenes(seed, split, part, num_classes, variety)
        images[start : start + len(part)], masks[start : start + len(part)] = render(
            scenes, resolution, supersample
        )
    return images, masks


# ---------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------
class GeneratedDataset(ImageDataset):
    """The procedural dataset of ``DataConfig(source="generated")`` for one split.

    Args:
        cfg: the data config (resolution, num_classes, seed, train_images / val_images).
        split: ``"train"`` or ``"val"``.
        cache_dir: when given, the whole split is rendered once and kept in
            ``cache_dir/<fingerprint>.npz`` (worth it at high resolutions); default: no file.
            A split of at most ``IN_MEMORY_BYTES`` is then rendered once in memory instead.
    """

    has_masks = True

    def __init__(self, cfg: DataConfig, split: str, cache_dir: str | Path | None = None) -> None:
        if cfg.num_classes > MAX_CLASSES:
            raise DataError(
                f"data.num_classes={cfg.num_classes}: the generated dataset has at most "
                f"{MAX_CLASSES} classes"
            )
        self.split = check_split(split)
        self.resolution = cfg.resolution
        self.seed = cfg.seed
        self.variety = Variety.of(cfg)
        self._variety_key = cfg.variety  # only fields that differ from the full dataset
        self.size = cfg.train_images if split == "train" else cfg.val_images
        self.class_names = [class_recipe(c).name for c in range(cfg.num_classes)]
        self._labels = np.arange(self.size, dtype=np.int64) % cfg.num_classes
        self._cache: tuple[np.ndarray, np.ndarray] | None = None
        if cache_dir is not None:
            self._cache = self._load_or_build_cache(Path(cache_dir))

    def __len__(self) -> int:
        return self.size

    def labels(self) -> np.ndarray:
        return self._labels

    def fingerprint(self) -> str:
        return content_hash(
            {
                "source": "generated",
                "version": GENERATOR_VERSION,
                "seed": self.seed,
                "split": self.split,
                "size": self.size,
                "resolution": self.resolution,
                "num_classes": self.num_classes,
                **({"variety": self._variety_key} if self._variety_key else {}),
            }
        )

    def _load_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is None and self.size * self.resolution**2 * 4 <= IN_MEMORY_BYTES:
            self._cache = self._render_all(show_progress=False)
        if self._cache is not None:
            return self._cache[0][indices], self._cache[1][indices]
        return render_indices(
            self.seed, self.split, indices, self.num_classes, self.resolution, self.variety
        )

    def _load_or_build_cache(self, cache_dir: Path) -> tuple[np.ndarray, np.ndarray]:
        path = cache_dir / f"{self.fingerprint()}.npz"
        if path.exists():
            with np.load(path) as data:
                return data["images"], data["masks"]
        images, masks = self._render_all()
        with atomic_write(path) as handle:
            np.savez(handle, images=images, masks=masks)
        event(log, "data.cache_written", path=str(path), images=self.size)
        return images, masks

    def _render_all(self, show_progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Every image ``(N, R, R, 3) uint8`` and mask ``(N, R, R) bool`` of the split."""
        images = np.empty((self.size, self.resolution, self.resolution, 3), dtype=np.uint8)
        masks = np.empty((self.size, self.resolution, self.resolution), dtype=bool)
        step = 1024
        bar = (
            progress(total=self.size, desc=f"render {self.split}", unit="img")
            if show_progress
            else None
        )
        for start in range(0, self.size, step):
            idx = np.arange(start, min(start + step, self.size))
            images[idx], masks[idx] = render_indices(
                self.seed, self.split, idx, self.num_classes, self.resolution, self.variety
            )
            if bar is not None:
                bar.update(len(idx))
        if bar is not None:
            bar.close()
        return images, masks
