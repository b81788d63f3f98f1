"""Procedural Shapes3D: a lit 3D scene on the exact factor grid of DeepMind's 3dshapes, rendered in numpy.

Scene (world axes: x right, y up, z away from the camera at orientation 0): a floor (y = 0), two walls meeting
in a corner behind the object, one object standing on the floor at the origin. A directional light gives Lambert
shading and a shadow of the object on the floor and walls. The ``orientation`` factor orbits the camera around
the object (the wall corner moves, a cube turns); ``scale`` and ``shape`` set the object.

Rendering is split in two, so a batch costs a few integer multiply-adds per pixel:

1. **Geometry, once per (scale, shape, orientation)** (8·4·15 = 480 combinations, computed lazily and cached):
   a ray caster with ``supersample``² rays per pixel gives, per pixel, the coverage-weighted shading of each of the
   three surfaces (floor, walls, object). These ``(3, H·W)`` maps are stored as Q12 fixed point (uint16).
2. **Colour, per image**: pixel = Σ_surface map_surface · albedo(hue_surface), in exact integer arithmetic.

Same factors give the same bytes on every machine: the geometry is float64 numpy math quantised to 1/4096, the
colouring integer-only, and nothing is random. Changing a hue changes only the pixels its surface covers.

Axis legend: ``n`` images, ``s`` surfaces (floor, wall, object), ``p`` pixels (H·W), ``c`` RGB channels,
``r`` rays.
"""

from __future__ import annotations

import colorsys

import numpy as np

from causalvq.data.base import FactorDataset

FACTOR_NAMES: tuple[str, ...] = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
FACTOR_SIZES: tuple[int, ...] = (10, 10, 10, 8, 4, 15)
SHAPE_NAMES: tuple[str, ...] = ("cube", "cylinder", "sphere", "capsule")
# Physical values of each factor, as in 3dshapes.h5's `labels` (hues in [0, 1), orientation in degrees).
FACTOR_VALUES: tuple[np.ndarray, ...] = (
    np.linspace(0.0, 1.0, 10, endpoint=False),
    np.linspace(0.0, 1.0, 10, endpoint=False),
    np.linspace(0.0, 1.0, 10, endpoint=False),
    np.linspace(0.75, 1.25, 8),
    np.arange(4, dtype=np.float64),
    np.linspace(-30.0, 30.0, 15),
)

_Q = 12  # fixed-point bits of the shading maps
_EPS = 1e-6
# Scene constants (world units; the object at scale 1 is about one unit tall).
_CORNER = 2.6  # distance from the object to the wall corner along +z
_CAM_POS = np.array([0.0, 3.0, -4.3])  # camera at orientation 0
_CAM_TARGET = np.array([0.0, 0.55, 1.0])
_FOV_DEG = 36.0
_LIGHT = np.array([-0.5, 1.0, -0.55])  # direction towards the key light (casts the shadow)
_AMBIENT, _DIFFUSE, _FILL = 0.24, 0.62, 0.26  # ambient, key light, and a shadowless fill light at the camera


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def hue_palette(saturation: float = 1.0, value: float = 1.0) -> np.ndarray:
    """RGB albedo of the 10 hues (evenly spaced on the HSV circle): ``int32 (10, 3)`` in 0..255."""
    rgb = [colorsys.hsv_to_rgb(float(h), saturation, value) for h in FACTOR_VALUES[0]]
    return np.round(np.asarray(rgb) * 255.0).astype(np.int32)


# --- ray-object intersections: o, d are (r, 3); return t (r,) (inf on a miss) and unit normals (r, 3) ---
def _hit_sphere(o: np.ndarray, d: np.ndarray, centre: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    oc = o - centre
    b = np.einsum("rc,rc->r", oc, d)
    c = np.einsum("rc,rc->r", oc, oc) - radius * radius
    disc = b * b - c
    root = np.sqrt(np.maximum(disc, 0.0))
    t = -b - root
    t = np.where((disc > 0) & (t > _EPS), t, np.inf)
    n = (o + np.where(np.isfinite(t), t, 0.0)[:, None] * d - centre) / radius
    return t, n


def _hit_cylinder(o: np.ndarray, d: np.ndarray, radius: float, y0: float, y1: float,
                  top_cap: bool) -> tuple[np.ndarray, np.ndarray]:
    """Vertical cylinder around the y axis, y in [y0, y1]; side plus (optionally) the top disc."""
    a = d[:, 0] ** 2 + d[:, 2] ** 2
    b = o[:, 0] * d[:, 0] + o[:, 2] * d[:, 2]
    c = o[:, 0] ** 2 + o[:, 2] ** 2 - radius * radius
    disc = b * b - a * c
    safe_a = np.where(a > 1e-12, a, 1.0)
    t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / safe_a
    y = o[:, 1] + t_side * d[:, 1]
    t_side = np.where((disc > 0) & (a > 1e-12) & (t_side > _EPS) & (y >= y0) & (y <= y1), t_side, np.inf)
    t = t_side
    normal = np.stack([o[:, 0] + t_side * d[:, 0], np.zeros_like(a), o[:, 2] + t_side * d[:, 2]], 1) / radius
    if top_cap:
        safe_dy = np.where(np.abs(d[:, 1]) > 1e-12, d[:, 1], 1e-12)
        t_top = (y1 - o[:, 1]) / safe_dy
        px, pz = o[:, 0] + t_top * d[:, 0], o[:, 2] + t_top * d[:, 2]
        t_top = np.where((t_top > _EPS) & (d[:, 1] < 0) & (px * px + pz * pz <= radius * radius), t_top, np.inf)
        use_top = t_top < t
        t = np.where(use_top, t_top, t)
        normal = np.where(use_top[:, None], np.array([0.0, 1.0, 0.0]), normal)
    return t, normal


def _hit_box(o: np.ndarray, d: np.ndarray, half: float) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned box [-half, half] × [0, 2·half] × [-half, half] (slab method)."""
    lo = np.array([-half, 0.0, -half])
    hi = np.array([half, 2 * half, half])
    safe = np.where(np.abs(d) > 1e-12, d, 1e-12)
    t0, t1 = (lo - o) / safe, (hi - o) / safe  # (r, 3)
    tnear, tfar = np.minimum(t0, t1), np.maximum(t0, t1)
    axis = np.argmax(tnear, axis=1)
    t_in = tnear[np.arange(len(o)), axis]
    t_out = tfar.min(axis=1)
    t = np.where((t_in <= t_out) & (t_in > _EPS), t_in, np.inf)
    normal = np.zeros_like(o)
    normal[np.arange(len(o)), axis] = -np.sign(d[np.arange(len(o)), axis])
    return t, normal


def _hit_object(shape: int, scale: float, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intersect rays with object ``shape`` (0 cube, 1 cylinder, 2 sphere, 3 capsule) at ``scale``."""
    r, h = _HALF_WIDTH[shape] * scale, _HEIGHT[shape] * scale
    if shape == 0:
        return _hit_box(o, d, r)
    if shape == 1:
        return _hit_cylinder(o, d, r, 0.0, h, top_cap=True)
    if shape == 2:
        return _hit_sphere(o, d, np.array([0.0, r, 0.0]), r)
    # capsule: radius r, total height h, standing upright
    t, n = _hit_cylinder(o, d, r, r, h - r, top_cap=False)
    for cy in (r, h - r):
        ts, ns = _hit_sphere(o, d, np.array([0.0, cy, 0.0]), r)
        closer = ts < t
        t, n = np.where(closer, ts, t), np.where(closer[:, None], ns, n)
    return t, n


def _camera_basis(orientation_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Camera position ``(3,)`` and basis rows (forward, right, up) ``(3, 3)`` at one orientation."""
    fwd = _normalize(_CAM_TARGET - _CAM_POS)
    right = _normalize(np.cross(np.array([0.0, 1.0, 0.0]), fwd))
    up = np.cross(fwd, right)
    th = np.deg2rad(orientation_deg)
    rot = np.array([[np.cos(th), 0.0, np.sin(th)], [0.0, 1.0, 0.0], [-np.sin(th), 0.0, np.cos(th)]])
    return rot @ _CAM_POS, np.stack([fwd, right, up]) @ rot.T


def _camera_rays(orientation_deg: float, size: int, supersample: int) -> tuple[np.ndarray, np.ndarray]:
    """Origin and unit directions ``(r, 3)`` of ``(size·ss)²`` stratified rays, row-major from the top left."""
    m = size * supersample
    grid = (np.arange(m) + 0.5) / m * 2.0 - 1.0
    u, v = np.meshgrid(grid, -grid)  # (m, m): u right, v up
    origin, (fwd, right, up) = _camera_basis(orientation_deg)
    tan = np.tan(np.deg2rad(_FOV_DEG) / 2)
    d = _normalize(fwd + tan * (u.reshape(-1, 1) * right + v.reshape(-1, 1) * up))  # (r, 3)
    return np.broadcast_to(origin, d.shape), d


def _rays_in_screen_box(orientation_deg: float, size: int, supersample: int, points: np.ndarray) -> np.ndarray:
    """Indices of the rays whose sample lies in the screen rectangle around the projected ``points (k, 3)``
    (all in front of the camera), with a one-sample margin: the object's rays for its bounding box's corners."""
    m = size * supersample
    origin, (fwd, right, up) = _camera_basis(orientation_deg)
    tan = np.tan(np.deg2rad(_FOV_DEG) / 2)
    v = points - origin
    depth = v @ fwd
    u, w = (v @ right) / (depth * tan), (v @ up) / (depth * tan)  # screen coordinates in [-1, 1]
    cols = (u + 1) / 2 * m - 0.5
    rows = (1 - w) / 2 * m - 0.5
    c0, c1 = max(int(np.floor(cols.min())) - 1, 0), min(int(np.ceil(cols.max())) + 1, m - 1)
    r0, r1 = max(int(np.floor(rows.min())) - 1, 0), min(int(np.ceil(rows.max())) + 1, m - 1)
    return (np.arange(r0, r1 + 1)[:, None] * m + np.arange(c0, c1 + 1)[None, :]).reshape(-1)


_HALF_WIDTH = (0.5, 0.52, 0.58, 0.4)  # per shape, at scale 1 (cube half side, radii)
_HEIGHT = (1.0, 1.05, 1.16, 1.4)


def _bound(shape: int, scale: float) -> tuple[np.ndarray, float]:
    """Bounding sphere (centre, radius) of object ``shape`` at ``scale``, slightly padded."""
    height, half_width = _HEIGHT[shape] * scale, _HALF_WIDTH[shape] * scale * (np.sqrt(2.0) if shape == 0 else 1.0)
    return np.array([0.0, height / 2, 0.0]), float(np.hypot(height / 2, half_width)) * 1.01 + 1e-3


def _box_corners(shape: int, scale: float) -> np.ndarray:
    """Corners ``(8, 3)`` of the object's axis-aligned bounding box, slightly padded."""
    hw, h = _HALF_WIDTH[shape] * scale * 1.02, _HEIGHT[shape] * scale * 1.02
    return np.array([[x, y, z] for x in (-hw, hw) for y in (0.0, h) for z in (-hw, hw)])


class _Background:
    """Camera rays and their hits on floor and walls for one orientation (independent of the object)."""

    def __init__(self, orientation_deg: float, size: int, supersample: int) -> None:
        o, d = _camera_rays(orientation_deg, size, supersample)
        self.origin, self.dirs = o[0], d  # (3,), (r, 3)
        self.orientation, self.size, self.supersample = orientation_deg, size, supersample
        # Floor y = 0 (hit from above); left wall z - x = C and right wall z + x = C (hit from the room side).
        planes = [(np.array([0.0, 1.0, 0.0]), 0.0, 1.0),
                  (np.array([-1.0, 0.0, 1.0]) / np.sqrt(2), _CORNER / np.sqrt(2), -1.0),
                  (np.array([1.0, 0.0, 1.0]) / np.sqrt(2), _CORNER / np.sqrt(2), -1.0)]
        t_bg = np.full(len(d), np.inf)
        n_bg = np.zeros_like(d)
        surf = np.zeros(len(d), dtype=np.int64)
        for k, (normal, offset, sign) in enumerate(planes):
            denom = d @ normal
            t = (offset - self.origin @ normal) / np.where(np.abs(denom) > 1e-12, denom, 1e-12)
            closer = (t > _EPS) & (sign * denom < 0) & (t < t_bg)
            t_bg = np.where(closer, t, t_bg)
            n_bg = np.where(closer[:, None], sign * normal, n_bg)  # normal facing into the room
            surf = np.where(closer, min(k, 1), surf)  # 0 floor, 1 wall
        light = _normalize(_LIGHT)
        self.surface = surf
        self.t = t_bg
        self.points = self.origin + t_bg[:, None] * d  # (r, 3)
        self.normals = n_bg
        fill = _AMBIENT + _FILL * np.maximum(-np.einsum("rc,rc->r", n_bg, d), 0.0)  # (r,) ambient + headlight
        self.shade_dark = fill  # in the object's shadow
        self.shade = fill + _DIFFUSE * np.maximum(n_bg @ light, 0.0)  # (r,) lit by the key light
        m = size * supersample
        row, col = np.divmod(np.arange(m * m), m)
        self.pixel = (row // supersample) * size + col // supersample  # (r,) pixel of each ray
        n_pix = size * size
        self.base_maps = np.bincount(surf * n_pix + self.pixel, weights=self.shade, minlength=3 * n_pix)  # no object
        # Only rays near a sphere enclosing every object (largest scale) can change: keep their indices.
        top = float(FACTOR_VALUES[3][-1])
        bounds = [_bound(shape, top) for shape in range(len(SHAPE_NAMES))]
        cy = max(c[1] + r for c, r in bounds) / 2
        centre = np.array([0.0, cy, 0.0])
        radius = max(abs(c[1] - cy) + r for c, r in bounds)
        p = self.points
        along_s = centre @ light - p @ light  # (r,) = (centre - p)·L
        dist2 = np.einsum("rc,rc->r", centre - p, centre - p) - along_s * along_s
        self.shadow = np.flatnonzero((dist2 <= radius * radius) & (along_s > -radius))
        ps = p[self.shadow]
        self.shadow_p_dot_l, self.shadow_p_y = ps @ light, ps[:, 1]  # for exact per-object culling
        self.shadow_p_sq = np.einsum("rc,rc->r", ps, ps)


def _object_shading(bg: _Background, shape: int, scale: float) -> np.ndarray:
    """Coverage-weighted shading of floor, walls and object: ``float64 (3, H, W)`` in [0, 1].

    Starts from the background maps and adds the changes of the few rays the object covers or shadows.
    """
    light = _normalize(_LIGHT)
    size = bg.size
    n_pix = size * size
    centre, radius = _bound(shape, scale)
    # Primary rays in the screen rectangle of the object's bounding box.
    cand = _rays_in_screen_box(bg.orientation, size, bg.supersample, _box_corners(shape, scale))
    d = bg.dirs[cand]
    t_obj, n_obj = _hit_object(shape, scale, np.broadcast_to(bg.origin, d.shape), d)
    hit = t_obj < bg.t[cand]
    idx = cand[hit]
    on_object = np.zeros(len(bg.dirs), dtype=bool)
    on_object[idx] = True
    # Shadow rays from floor/wall points towards the light, culled by the bounding sphere (centre on the y axis).
    along_s = centre[1] * light[1] - bg.shadow_p_dot_l  # = (centre - p)·L
    dist2 = centre[1] ** 2 - 2 * centre[1] * bg.shadow_p_y + bg.shadow_p_sq - along_s * along_s
    near = bg.shadow[(dist2 <= radius * radius) & (along_s > -radius)]
    near = near[~on_object[near]]
    p = bg.points[near] + 1e-4 * bg.normals[near]
    t_sh, _ = _hit_object(shape, scale, p, np.broadcast_to(light, p.shape))
    dark = near[np.isfinite(t_sh)]
    # The object is convex: its faces turned from the light are its only unlit parts.
    n_hit = n_obj[hit]
    obj_shade = (_AMBIENT + _DIFFUSE * np.maximum(n_hit @ light, 0.0)
                 + _FILL * np.maximum(-np.einsum("rc,rc->r", n_hit, d[hit]), 0.0))
    bins = np.concatenate([bg.surface[idx] * n_pix + bg.pixel[idx], 2 * n_pix + bg.pixel[idx],
                           bg.surface[dark] * n_pix + bg.pixel[dark]])
    delta = np.concatenate([-bg.shade[idx], obj_shade, bg.shade_dark[dark] - bg.shade[dark]])
    maps = bg.base_maps + np.bincount(bins, weights=delta, minlength=3 * n_pix)
    maps = maps.reshape(3, size, size) / bg.supersample**2  # (s, H, W): mean over each pixel's rays
    return np.clip(maps, 0.0, 1.0)


def shading_maps(scale_idx: int, shape_idx: int, orientation_idx: int, size: int = 64,
                 supersample: int = 4) -> np.ndarray:
    """Coverage-weighted shading of floor, walls and object for one geometry: ``float64 (3, size, size)``.

    Pixel colour = Σ_s maps[s] · albedo_s. Antialiased by averaging ``supersample``² rays per pixel.
    """
    bg = _Background(float(FACTOR_VALUES[5][orientation_idx]), size, supersample)
    return _object_shading(bg, shape_idx, float(FACTOR_VALUES[3][scale_idx]))


class Shapes3D(FactorDataset):
    """Procedural 3dshapes: floor_hue 10, wall_hue 10, object_hue 10, scale 8, shape 4, orientation 15; 64×64 RGB.

    Args:
        image_size: image side (64 like the real dataset).
        supersample: rays per pixel side for antialiasing.
        saturation, value: HSV saturation and value of the hue albedos.
    """

    name = "shapes3d"
    factor_names = FACTOR_NAMES
    factor_sizes = FACTOR_SIZES
    factor_values = FACTOR_VALUES
    shape_names = SHAPE_NAMES

    def __init__(self, image_size: int = 64, supersample: int = 4, saturation: float = 1.0,
                 value: float = 1.0) -> None:
        if image_size < 8 or supersample < 1:
            raise ValueError(f"shapes3d: image_size must be >= 8 and supersample >= 1, got {image_size}, "
                             f"{supersample}")
        self.image_shape = (image_size, image_size, 3)
        self.supersample = supersample
        self.palette = hue_palette(saturation, value)  # (10, 3)
        n_geo = FACTOR_SIZES[3] * FACTOR_SIZES[4] * FACTOR_SIZES[5]
        self._maps = np.zeros((n_geo, 3, image_size * image_size), dtype=np.uint16)  # (geo, s, p) Q12
        self._ready = np.zeros(n_geo, dtype=bool)

    def geometry(self, scale_idx: int, shape_idx: int, orientation_idx: int) -> np.ndarray:
        """Cached Q12 shading maps of one (scale, shape, orientation): ``uint16 (3, H·W)``."""
        g = (scale_idx * FACTOR_SIZES[4] + shape_idx) * FACTOR_SIZES[5] + orientation_idx
        self._ensure(np.array([g]))
        return self._maps[g]

    def precompute(self) -> None:
        """Compute the geometry of all 480 (scale, shape, orientation) combinations now."""
        self._ensure(np.arange(len(self._ready)))

    def _ensure(self, geo: np.ndarray) -> None:
        size, ss = self.image_shape[0], self.supersample
        missing = np.unique(geo[~self._ready[geo]])
        by_orientation = missing % FACTOR_SIZES[5]
        for ori in np.unique(by_orientation):  # the background is shared by one orientation's geometries
            bg = _Background(float(FACTOR_VALUES[5][ori]), size, ss)
            for g in missing[by_orientation == ori]:
                sc, sh = divmod(int(g) // FACTOR_SIZES[5], FACTOR_SIZES[4])
                maps = _object_shading(bg, sh, float(FACTOR_VALUES[3][sc]))
                self._maps[g] = np.round(maps * (1 << _Q)).astype(np.uint16).reshape(3, -1)
                self._ready[g] = True

    def _render(self, factors: np.ndarray) -> np.ndarray:
        n = len(factors)
        geo = (factors[:, 3] * FACTOR_SIZES[4] + factors[:, 4]) * FACTOR_SIZES[5] + factors[:, 5]  # (n,)
        self._ensure(geo)
        maps = self._maps[geo]  # (n, s, p) uint16
        colours = self.palette[factors[:, :3]]  # (n, s, c) int32
        out = np.empty((n, maps.shape[2], 3), dtype=np.uint8)  # (n, p, c)
        half = 1 << (_Q - 1)
        for c in range(3):
            acc = maps[:, 0] * colours[:, 0, c, None]  # (n, p) int32, exact
            acc += maps[:, 1] * colours[:, 1, c, None]
            acc += maps[:, 2] * colours[:, 2, c, None]
            acc += half
            acc >>= _Q
            out[:, :, c] = np.minimum(acc, 255)
        return out.reshape(n, *self.image_shape)
