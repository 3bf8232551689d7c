"""Seeded synthetic abdominal CT with a pancreas and an optional pancreatic tumour.

Real pancreas CT with tumour labels is scarce and cannot ship with the package, so tests, the
napari sample and quick training runs use this phantom. It is built in millimetres around the
patient (not in voxels), so any shape and spacing give the same anatomy, and every organ has the
HU it has in a portal-venous CT, so CT windows and HU scaling behave as on real scans. The seed
varies body size, organ positions, pancreas curvature and thickness, and the tumour, which makes
the phantom usable as (easy) training data.

Layout: the array is stored as a DICOM-like file would be, index (column, row, slice) increasing
towards patient Left, Posterior and Superior (LPS); :func:`src_models.io.orientation.to_canonical`
turns it into the radiological view (anterior at the top, patient's right on the screen's left).
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.ndimage import gaussian_filter

from .io import Volume

Slices = tuple[slice, slice, slice]


class _Painter:
    """Ellipsoids in patient millimetres, evaluated only inside their bounding box.

    Coordinates: x towards the patient's left, y towards posterior, z towards superior, origin
    at the centre of the field of view. Arrays are (z, y, x), the canonical layout.
    """

    def __init__(self, shape_zyx: tuple[int, int, int], spacing_zyx: tuple[float, float, float]):
        self.shape = shape_zyx
        self.axes = [
            (np.arange(n) - (n - 1) / 2.0) * d for n, d in zip(shape_zyx, spacing_zyx, strict=True)
        ]

    def _window(self, axis: int, centre: float, radius: float) -> slice:
        coords = self.axes[axis]
        lo = int(np.searchsorted(coords, centre - radius, side="left"))
        hi = int(np.searchsorted(coords, centre + radius, side="right"))
        return slice(lo, max(lo, hi))

    def ellipsoid(
        self,
        centre: tuple[float, float, float],
        semi: tuple[float, float, float],
        angle: float = 0.0,
    ) -> tuple[Slices, np.ndarray]:
        """Box slices and boolean mask of an ellipsoid rotated by ``angle`` in the axial plane."""
        cx, cy, cz = centre
        a, b, c = semi
        reach = max(a, b)
        box = (
            self._window(0, cz, c),
            self._window(1, cy, reach),
            self._window(2, cx, reach),
        )
        z = self.axes[0][box[0]][:, None, None] - cz
        y = self.axes[1][box[1]][None, :, None] - cy
        x = self.axes[2][box[2]][None, None, :] - cx
        cos, sin = np.cos(angle), np.sin(angle)
        u = (x * cos + y * sin) / a
        v = (y * cos - x * sin) / b
        return box, (u * u + v * v) + (z / c) ** 2 <= 1.0

    def paint(
        self,
        target: np.ndarray,
        value: float | bool,
        centre: tuple[float, float, float],
        semi: tuple[float, float, float],
        angle: float = 0.0,
        within: np.ndarray | None = None,
    ) -> None:
        box, mask = self.ellipsoid(centre, semi, angle)
        if within is not None:
            mask &= within[box]
        target[box][mask] = value

    def tube(
        self,
        target: np.ndarray,
        value: float | bool,
        points: np.ndarray,
        radii: np.ndarray,
        within: np.ndarray | None = None,
    ) -> None:
        """A tube as a chain of spheres along ``points`` (N, 3) with ``radii`` (N,)."""
        for point, radius in zip(points, radii, strict=True):
            self.paint(target, value, tuple(point), (radius, radius, radius), within=within)


def _segment(start, end, step: float = 2.0) -> np.ndarray:
    start, end = np.asarray(start, float), np.asarray(end, float)
    n = max(2, int(np.ceil(np.linalg.norm(end - start) / step)) + 1)
    return start + np.linspace(0.0, 1.0, n)[:, None] * (end - start)


def _pancreas_curve(rng: np.random.Generator, z0: float) -> tuple[np.ndarray, np.ndarray]:
    """Centre line (N, 3) and in-plane radius (N,) from head (patient right) to tail (left)."""
    control = np.array(
        [
            [-48.0, 8.0, -10.0],  # head, beside the duodenum, right of midline
            [-22.0, -4.0, -4.0],
            [0.0, -12.0, 0.0],  # neck, in front of the mesenteric vessels
            [28.0, -12.0, 5.0],  # body, crossing anterior to the SMA and aorta
            [62.0, 12.0, 12.0],
            [92.0, 40.0, 18.0],  # tail, at the splenic hilum
        ]
    )
    control += rng.normal(0.0, [5.0, 4.0, 3.0], size=control.shape)
    control[:, 1] += rng.uniform(-6.0, 6.0) * np.sin(np.linspace(0, np.pi, len(control)))
    control[:, 2] += z0
    t = np.linspace(0.0, 1.0, len(control))
    spline = CubicSpline(t, control, axis=0)
    samples = np.linspace(0.0, 1.0, 70)
    scale = rng.uniform(0.85, 1.2)
    radius = np.interp(samples, [0.0, 0.2, 0.35, 0.7, 1.0], [16.0, 12.0, 9.0, 9.5, 6.5])
    radius *= scale * (1.0 + 0.08 * rng.standard_normal(samples.size))
    return spline(samples), radius


def make_phantom(
    seed: int = 0,
    shape: tuple[int, int, int] = (256, 256, 48),
    spacing: tuple[float, float, float] = (1.4, 1.4, 2.5),
    tumour: bool = True,
    noise: float | None = None,
) -> tuple[Volume, Volume]:
    """Make a synthetic portal-venous abdominal CT and its labels.

    Parameters
    ----------
    seed : int
        Seeds everything: the same seed gives the same voxels.
    shape : tuple of int
        (columns, rows, slices) of the stored array. The default, 358 x 358 x 120 mm, covers an
        adult abdomen and generates in well under a second.
    spacing : tuple of float
        Voxel size in mm along (columns, rows, slices); use e.g. ``(512, 512, 96)`` with
        ``(0.7, 0.7, 1.25)`` for a scanner-like grid.
    tumour : bool
        Add a hypodense tumour (label 2) inside the pancreas.
    noise : float, optional
        Standard deviation of the image noise in HU; by default drawn from 10 to 15 HU.

    Returns
    -------
    image : Volume
        int16 HU, index (column, row, slice) towards (L, P, S), RAS affine.
    labels : Volume
        uint8 on the same grid: 0 background, 1 pancreas, 2 tumour.
    """
    rng = np.random.default_rng(seed)
    nx, ny, nz = (int(n) for n in shape)
    dx, dy, dz = (float(s) for s in spacing)
    painter = _Painter((nz, ny, nx), (dz, dy, dx))
    img = np.full((nz, ny, nx), -1000.0, dtype=np.float32)
    cavity = np.zeros(img.shape, dtype=bool)
    tall = 10.0 * nz * dz  # extent along z of structures that run through every slice

    # Body wall: skin, subcutaneous fat, muscle, then the abdominal cavity with visceral fat.
    size = rng.uniform(0.88, 1.12)
    half_w, half_h = 165.0 * size, 118.0 * size * rng.uniform(0.92, 1.05)
    body_y = rng.uniform(-6.0, 6.0)
    for inset, value in ((0.0, 20.0), (2.5, -105.0), (16.0, 48.0), (26.0, -92.0)):
        painter.paint(img, value, (0.0, body_y, 0.0), (half_w - inset, half_h - inset, tall))
    painter.paint(cavity, True, (0.0, body_y, 0.0), (half_w - 26.0, half_h - 26.0, tall))
    table_y = body_y + half_h + 12.0
    rows = np.abs(painter.axes[1] - table_y) < 4.0
    img[:, rows, :] = np.where(np.abs(painter.axes[2]) < 190.0, 160.0, -1000.0)

    z0 = rng.uniform(-8.0, 8.0)  # level of the pancreatic neck
    spine_y = body_y + half_h - 78.0 * size

    # Bowel first, so that solid organs drawn later overlap it.
    for _ in range(int(rng.integers(10, 18))):
        centre = (
            rng.uniform(-95.0, 95.0) * size,
            body_y + rng.uniform(-85.0, -5.0) * size,
            rng.uniform(z0 - 70.0, z0 + 10.0),
        )
        semi = tuple(rng.uniform(10.0, 17.0, size=3))
        painter.paint(img, 45.0, centre, semi, rng.uniform(0, np.pi), within=cavity)
        inner = tuple(s - 3.0 for s in semi)
        painter.paint(img, rng.uniform(10.0, 35.0), centre, inner, within=cavity)
        if rng.random() < 0.45:
            gas = (centre[0], centre[1] - 0.4 * inner[1], centre[2])
            painter.paint(img, -1000.0, gas, (inner[0] * 0.7, inner[1] * 0.5, inner[2] * 0.7))
    colon_z = z0 + rng.uniform(20.0, 35.0)
    transverse = _segment(
        (-95.0 * size, body_y - 70.0, colon_z), (95.0 * size, body_y - 65.0, colon_z)
    )
    painter.tube(img, 45.0, transverse, np.full(len(transverse), 17.0), within=cavity)
    painter.tube(img, -1000.0, transverse, np.full(len(transverse), 12.0), within=cavity)
    for side in (-1.0, 1.0):
        painter.paint(
            img,
            45.0,
            (side * 105.0 * size, body_y + 5.0, colon_z - 80.0),
            (19.0, 19.0, 80.0),
            within=cavity,
        )
        painter.paint(
            img,
            -1000.0,
            (side * 105.0 * size, body_y, colon_z - 80.0),
            (12.0, 10.0, 78.0),
            within=cavity,
        )

    # Liver (patient right), gallbladder, spleen (left), stomach (left anterior).
    liver_hu = rng.uniform(55.0, 65.0)
    liver_c = (-88.0 * size + rng.uniform(-6, 6), body_y - 8.0, z0 + rng.uniform(55.0, 70.0))
    painter.paint(img, liver_hu, liver_c, (88.0 * size, 82.0 * size, 80.0), within=cavity)
    painter.paint(
        img, 8.0, (-42.0 * size, body_y - 52.0, z0 + 12.0), (14.0, 19.0, 24.0), within=cavity
    )
    painter.paint(
        img,
        rng.uniform(105.0, 125.0),
        (100.0 * size, body_y + 45.0, z0 + rng.uniform(30.0, 45.0)),
        (30.0, 52.0, 55.0),
        angle=0.55,
        within=cavity,
    )
    stomach_c = (45.0 * size, body_y - 48.0, z0 + rng.uniform(28.0, 40.0))
    painter.paint(img, 50.0, stomach_c, (52.0, 34.0, 42.0), angle=-0.35, within=cavity)
    painter.paint(
        img, rng.uniform(5.0, 25.0), stomach_c, (47.0, 29.0, 37.0), angle=-0.35, within=cavity
    )
    painter.paint(
        img,
        -1000.0,
        (stomach_c[0], stomach_c[1] - 18.0, stomach_c[2] + 6.0),
        (34.0, 11.0, 25.0),
        angle=-0.35,
    )

    # Kidneys: enhancing cortex, medulla, sinus fat.
    for side, dz_kidney in ((-1.0, rng.uniform(-25.0, -10.0)), (1.0, rng.uniform(-15.0, 0.0))):
        centre = (side * 74.0 * size, spine_y - 2.0, z0 + dz_kidney)
        angle = side * 0.45
        painter.paint(img, rng.uniform(150.0, 185.0), centre, (30.0, 24.0, 55.0), angle, cavity)
        painter.paint(img, rng.uniform(80.0, 110.0), centre, (21.0, 15.0, 45.0), angle, cavity)
        sinus = (centre[0] - side * 9.0, centre[1] - 3.0, centre[2])
        painter.paint(img, -60.0, sinus, (10.0, 7.0, 26.0), angle, cavity)

    # Spine: vertebral body with discs, canal, posterior elements, muscles; ribs up high.
    for side in (-1.0, 1.0):
        painter.paint(img, 50.0, (side * 36.0, spine_y + 46.0, 0.0), (24.0, 19.0, tall))
    for side in (-1.0, 1.0):
        painter.paint(img, 48.0, (side * 38.0, spine_y + 2.0, z0 - 80.0), (16.0, 16.0, 90.0))
    painter.paint(img, 850.0, (0.0, spine_y, 0.0), (23.0, 20.0, tall))
    painter.paint(img, rng.uniform(220.0, 320.0), (0.0, spine_y, 0.0), (19.5, 16.5, tall))
    disc_phase = rng.uniform(0.0, 34.0)
    discs = ((painter.axes[0] - disc_phase) % 34.0) < 7.0
    box, mask = painter.ellipsoid((0.0, spine_y, 0.0), (23.0, 20.0, tall))
    mask &= discs[:, None, None]
    img[box][mask] = 85.0
    painter.paint(img, 15.0, (0.0, spine_y + 29.0, 0.0), (9.0, 8.0, tall))
    painter.paint(img, 700.0, (0.0, spine_y + 52.0, 0.0), (6.0, 14.0, tall))
    for side in (-1.0, 1.0):
        painter.paint(img, 650.0, (side * 17.0, spine_y + 36.0, 0.0), (6.0, 6.0, tall))
        painter.paint(img, 600.0, (side * 32.0, spine_y + 24.0, 0.0), (14.0, 5.0, tall))
    for k in range(11):
        theta = np.pi * (0.1 + 0.8 * k / 10.0)
        rib = (np.cos(theta) * (half_w - 20.0), body_y - np.sin(theta) * (half_h - 20.0))
        rib_z = z0 + 25.0 + 34.0 * (k % 3)
        painter.paint(img, rng.uniform(450.0, 700.0), (rib[0], rib[1], rib_z), (7.0, 7.0, 6.0))

    # Vessels with contrast: aorta, IVC, SMA, SMV, portal and splenic veins.
    vessels = np.zeros(img.shape, dtype=bool)
    artery_hu, vein_hu = rng.uniform(170.0, 210.0), rng.uniform(145.0, 180.0)
    aorta = (14.0, spine_y - 32.0)
    painter.paint(vessels, True, (aorta[0], aorta[1], 0.0), (11.5, 11.5, tall))
    painter.paint(img, artery_hu, (aorta[0], aorta[1], 0.0), (11.5, 11.5, tall))
    painter.paint(img, vein_hu, (-24.0, spine_y - 28.0, 0.0), (14.0, 9.5, tall))
    sma = _segment(
        (aorta[0], aorta[1] - 8.0, z0 + 14.0), (aorta[0] - 2.0, body_y - 12.0, z0 - 70.0)
    )
    smv = _segment((-2.0, body_y - 8.0, z0 + 2.0), (-6.0, body_y - 20.0, z0 - 70.0))
    portal = _segment((-2.0, body_y - 6.0, z0 + 4.0), (-40.0 * size, body_y - 10.0, z0 + 38.0))
    for points, radius, value in (
        (sma, 4.0, artery_hu),
        (smv, 6.0, vein_hu),
        (portal, 7.5, vein_hu),
    ):
        painter.tube(vessels, True, points, np.full(len(points), radius))
        painter.tube(img, value, points, np.full(len(points), radius))

    # Duodenum: C-loop around the pancreatic head.
    centre, radius = _pancreas_curve(rng, z0)
    centre[:, 0] *= size
    head = centre[0]
    descending = _segment(
        (head[0] - 30.0, head[1] - 4.0, head[2] + 22.0),
        (head[0] - 28.0, head[1] + 4.0, head[2] - 28.0),
    )
    horizontal = _segment(descending[-1], (aorta[0] + 20.0, head[1] + 12.0, head[2] - 34.0))
    for points in (descending, horizontal):
        painter.tube(img, 45.0, points, np.full(len(points), 11.0), within=cavity)
        painter.tube(img, rng.uniform(5.0, 30.0), points, np.full(len(points), 7.5), within=cavity)

    # Pancreas along its curved centre line (vessels indent it), uncinate process below the head.
    pancreas = np.zeros(img.shape, dtype=bool)
    for point, r in zip(centre, radius, strict=True):
        painter.paint(pancreas, True, tuple(point), (r, 0.8 * r, 0.75 * r + 2.0))
    painter.paint(
        pancreas, True, (head[0] + 14.0, head[1] + 10.0, head[2] - 14.0), (13.0, 9.0, 11.0)
    )
    splenic = centre[20:] + np.array([0.0, 1.0, 0.0]) * (0.8 * radius[20:, None] + 1.0)
    painter.tube(vessels, True, splenic, np.full(len(splenic), 4.5))
    painter.tube(img, vein_hu, splenic, np.full(len(splenic), 4.5))
    pancreas &= ~vessels
    img[pancreas] = rng.uniform(70.0, 105.0)

    labels = pancreas.astype(np.uint8)
    if tumour:
        index = int(rng.integers(2, 18) if rng.random() < 0.6 else rng.integers(22, 60))
        r = max(8.0, radius[index] * rng.uniform(0.8, 1.3))
        where = tuple(centre[index] + rng.normal(0.0, 2.0, size=3))
        box, mask = painter.ellipsoid(
            where, (r, r * rng.uniform(0.7, 1.0), r * 0.8), rng.uniform(0, np.pi)
        )
        mask &= pancreas[box]
        img[box][mask] = rng.uniform(20.0, 40.0)
        labels[box][mask] = 2

    gaussian_filter(img, sigma=(0.35, 0.6, 0.6), output=img)
    sigma = rng.uniform(10.0, 15.0) if noise is None else float(noise)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)
    np.clip(img, -1024.0, 3071.0, out=img)
    hu = np.rint(img).astype(np.int16)

    affine = np.array(
        [
            [-dx, 0.0, 0.0, (nx - 1) / 2.0 * dx],
            [0.0, -dy, 0.0, (ny - 1) / 2.0 * dy],
            [0.0, 0.0, dz, -(nz - 1) / 2.0 * dz],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    info = {
        "format": "phantom",
        "modality": "CT",
        "seed": int(seed),
        "tumour": bool(tumour),
        "qform_code": 1,
        "sform_code": 1,
    }
    name = f"phantom seed {seed}"
    image = Volume(hu.transpose(2, 1, 0), affine, "", name, dict(info))
    label_volume = Volume(labels.transpose(2, 1, 0), affine, "", f"{name} labels", dict(info))
    return image, label_volume
