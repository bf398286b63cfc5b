"""Brain geometry of a simulated participant: grid, head placement, tissue, intensity.

Scanner space
    The acquisition grid is axis-aligned (RAS+, no obliquity) and centred on
    the scanner's isocentre, world (0, 0, 0) mm. The presets keep ds003720's
    field of view, 192 x 192 x 136 mm: ``full`` 96 x 96 x 68 voxels at 2 mm,
    ``small`` 48 x 48 x 34 at 4 mm, ``tiny`` 24 x 24 x 17 at 8 mm.
Head placement
    The participant's brain is nilearn's MNI152 (2009, 1 mm) brain placed in
    the scanner by ``world = T(t) @ R(rx, ry, rz) @ S(sx, sy, sz) @ (mni - c)``,
    with ``c = (0, -17, 5)`` mm the centre of the MNI brain, per-axis scales
    ``s ~ 0.93 * N(1, 0.03)`` (real brains are smaller than the MNI average),
    rotations of s.d. (4, 1.5, 1.5) degrees (pitch varies most) and an
    in-plane shift of s.d. 4 mm; ``tz`` puts the top of the brain 6 +- 2 mm
    below the top of the slab, so, as in real 136 mm slabs, the inferior
    cerebellum may be cut.
Tissue
    Grey- and white-matter probabilities and the brain mask come from nilearn's
    packaged MNI152 templates (no download), smoothed with a Gaussian of FWHM
    one voxel (the partial-volume average of a voxel) and sampled trilinearly
    at every voxel's MNI position. CSF = brain - GM - WM (clipped at 0). A
    scalp shell 4-12 mm outside the brain gives the faint extra-cerebral
    signal of fat-suppressed EPI.
Intensity
    ``S0 = base * (1.0 GM + 0.75 WM + 1.5 CSF + 0.3 scalp) * dropout``: the
    T2*-weighted contrast (CSF brightest, grey above white), with
    susceptibility dropout (Gaussian signal losses at the orbitofrontal
    cortex and the temporal poles). This image belongs to the head and moves
    with it. The receive-coil bias field ``B`` (exp of a random second-order
    polynomial plus a radial term, brighter at the periphery as a 32-channel
    array is; mean 1 over the brain) belongs to the scanner and does not move.
    ``base`` is drawn per subject in [650, 950], so brain voxels read a few
    hundred to about 2,500: Siemens magnitude images in int16 (12-bit range).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "GRID_PRESETS",
    "Grid",
    "make_grid",
    "HeadPlacement",
    "sample_head_placement",
    "Anatomy",
    "build_anatomy",
    "voxel_mni",
]

#: Grid presets: name -> (shape, voxel size in mm). All share ds003720's field of view.
GRID_PRESETS: dict[str, tuple[tuple[int, int, int], float]] = {
    "full": ((96, 96, 68), 2.0),
    "small": ((48, 48, 34), 4.0),
    "tiny": ((24, 24, 17), 8.0),
}

_MNI_CENTRE = np.array([0.0, -17.0, 5.0])
_TISSUE_CONTRAST = {"gm": 1.0, "wm": 0.75, "csf": 1.5, "scalp": 0.3}
_DROPOUTS = (  # (MNI centre mm, s.d. mm, depth): exp(-depth) at the centre
    ((0.0, 35.0, -22.0), 12.0, 1.0),
    ((-38.0, 8.0, -35.0), 10.0, 0.8),
    ((38.0, 8.0, -35.0), 10.0, 0.8),
)


@dataclass(frozen=True)
class Grid:
    """An acquisition grid.

    Attributes
    ----------
    name : str
        Preset name (``"full"``, ``"small"``, ``"tiny"``).
    shape : tuple of int
        (x, y, z) voxels; z is the slice axis.
    voxel_mm : float
        Isotropic voxel size in mm.
    affine : ndarray of shape (4, 4)
        Voxel -> scanner world (mm), RAS+, centred on the isocentre.
    """

    name: str
    shape: tuple[int, int, int]
    voxel_mm: float
    affine: np.ndarray

    @property
    def n_voxels(self) -> int:
        return int(np.prod(self.shape))

    def world_coords(self, flat_index: np.ndarray | None = None) -> np.ndarray:
        """World (mm) coordinates of voxel centres, shape (n, 3), float64."""
        if flat_index is None:
            ijk = np.indices(self.shape).reshape(3, -1)
        else:
            ijk = np.stack(np.unravel_index(np.asarray(flat_index), self.shape))
        return (self.affine[:3, :3] @ ijk + self.affine[:3, 3:4]).T


def make_grid(name: str) -> Grid:
    """The grid preset ``name`` (see :data:`GRID_PRESETS`)."""
    if name not in GRID_PRESETS:
        raise ValueError(f"grid must be one of {', '.join(map(repr, GRID_PRESETS))}; got {name!r}")
    shape, v = GRID_PRESETS[name]
    affine = np.diag([v, v, v, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2.0 * v
    return Grid(name=name, shape=shape, voxel_mm=v, affine=affine)


@dataclass(frozen=True)
class HeadPlacement:
    """Where a participant's brain sits in the scanner.

    Attributes
    ----------
    world_from_mni : ndarray of shape (4, 4)
        MNI mm -> scanner world mm (an affine with per-axis scaling).
    scale : ndarray of shape (3,)
    rotation_deg : ndarray of shape (3,)
        Rotations about x, y, z in degrees.
    shift_mm : ndarray of shape (3,)
    """

    world_from_mni: np.ndarray
    scale: np.ndarray
    rotation_deg: np.ndarray
    shift_mm: np.ndarray

    @property
    def mni_from_world(self) -> np.ndarray:
        return np.linalg.inv(self.world_from_mni)

    def to_dict(self) -> dict:
        return {"world_from_mni": self.world_from_mni.tolist(), "scale": self.scale.tolist(),
                "rotation_deg": self.rotation_deg.tolist(), "shift_mm": self.shift_mm.tolist(),
                "mni_centre_mm": _MNI_CENTRE.tolist()}


def _rotation(deg: np.ndarray) -> np.ndarray:
    from realtime.preprocessing import rigid_matrix

    return rigid_matrix(np.r_[0.0, 0.0, 0.0, np.deg2rad(deg)])[:3, :3]


_TEMPLATE_AFFINE = np.array([[1.0, 0, 0, -98], [0, 1, 0, -134], [0, 0, 1, -72], [0, 0, 0, 1]])


def _templates() -> dict[str, np.ndarray]:
    """nilearn's packaged MNI152 1 mm templates (brain mask, GM, WM): name -> float32 data."""
    from nilearn import datasets

    out = {}
    for name, load in (("brain", datasets.load_mni152_brain_mask), ("gm", datasets.load_mni152_gm_template),
                       ("wm", datasets.load_mni152_wm_template)):
        img = load(resolution=1)
        if not np.allclose(img.affine, _TEMPLATE_AFFINE):
            raise ValueError(f"nilearn's MNI152 {name} template has an unexpected affine {img.affine.tolist()}; "
                             "this nilearn version is not supported")
        out[name] = np.asarray(img.get_fdata(dtype=np.float32))
    return out


@functools.lru_cache(maxsize=1)
def _smoothed_templates(voxel_mm: float) -> dict[str, np.ndarray]:
    """The templates smoothed to the partial-volume average of a ``voxel_mm`` voxel."""
    from scipy import ndimage as ndi

    sd_mm = voxel_mm / (2.0 * math.sqrt(2.0 * math.log(2.0)))  # FWHM = one voxel
    return {k: ndi.gaussian_filter(v, sd_mm, mode="constant") for k, v in _templates().items()}


def sample_head_placement(grid: Grid, rng: np.random.Generator) -> HeadPlacement:
    """Draw a participant's head placement (see the module docstring).

    Parameters
    ----------
    grid : Grid
    rng : numpy.random.Generator

    Returns
    -------
    HeadPlacement
    """
    scale = 0.93 * (1.0 + 0.03 * rng.standard_normal()) * (1.0 + 0.015 * rng.standard_normal(3))
    rot = np.array([4.0, 1.5, 1.5]) * rng.standard_normal(3)
    shift = np.r_[4.0 * rng.standard_normal(2), 0.0]
    top_margin = 6.0 + 2.0 * rng.standard_normal()
    lin = _rotation(rot) @ np.diag(scale)
    data = _smoothed_templates(grid.voxel_mm)["brain"]
    ijk = np.argwhere(data[::4, ::4, ::4] > 0.5).T * 4  # a coarse sample of brain points is enough
    mni = _TEMPLATE_AFFINE[:3, :3] @ ijk + _TEMPLATE_AFFINE[:3, 3:4]
    z_top = float(np.max((lin @ (mni - _MNI_CENTRE[:, None]))[2]))
    slab_top = grid.affine[2, 3] + (grid.shape[2] - 0.5) * grid.voxel_mm
    shift[2] = slab_top - top_margin - z_top
    m = np.eye(4)
    m[:3, :3] = lin
    m[:3, 3] = shift - lin @ _MNI_CENTRE
    return HeadPlacement(world_from_mni=m, scale=scale, rotation_deg=rot, shift_mm=shift)


def voxel_mni(grid: Grid, placement: HeadPlacement, flat_index: np.ndarray | None = None) -> np.ndarray:
    """MNI (mm) position of voxel centres of the *unmoved* head, shape (n, 3)."""
    w = grid.world_coords(flat_index)
    a = placement.mni_from_world
    return w @ a[:3, :3].T + a[:3, 3]


@dataclass
class Anatomy:
    """A participant's anatomy on the grid (the head at its reference position).

    Attributes
    ----------
    grid : Grid
    placement : HeadPlacement
    brain : ndarray of bool, shape grid.shape
        Brain mask (smoothed MNI mask > 0.5).
    gm, wm, csf : ndarray of float32, shape grid.shape
        Tissue fractions (0..1).
    head : ndarray of bool, shape grid.shape
        Brain or scalp: where the tissue image is non-zero.
    s0 : ndarray of float32, shape grid.shape
        Tissue intensity (moves with the head), before the coil bias.
    bias : ndarray of float32, shape grid.shape
        Receive-coil sensitivity (fixed to the scanner), mean 1 over the brain.
    base : float
        The subject's intensity scale (``S0`` of pure grey matter, unit bias).
    """

    grid: Grid
    placement: HeadPlacement
    brain: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    head: np.ndarray
    s0: np.ndarray
    bias: np.ndarray
    base: float

    def to_dict(self) -> dict:
        return {"grid": self.grid.name, "shape": list(self.grid.shape), "voxel_mm": self.grid.voxel_mm,
                "affine": self.grid.affine.tolist(), "placement": self.placement.to_dict(),
                "base_intensity": self.base, "tissue_contrast": dict(_TISSUE_CONTRAST),
                "dropouts": [{"mni_mm": list(c), "sd_mm": s, "depth": d} for c, s, d in _DROPOUTS],
                "n_brain_voxels": int(self.brain.sum())}


def _bias_field(grid: Grid, brain: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    w = grid.world_coords()
    r_norm = 0.5 * grid.voxel_mm * max(grid.shape)  # half the field of view, mm
    u = w / r_norm
    terms = [u[:, 0], u[:, 1], u[:, 2], u[:, 0] ** 2, u[:, 1] ** 2, u[:, 2] ** 2,
             u[:, 0] * u[:, 1], u[:, 0] * u[:, 2], u[:, 1] * u[:, 2]]
    coef = 0.08 * rng.standard_normal(len(terms))
    log_b = sum(c * t for c, t in zip(coef, terms)) + 0.25 * (u[:, 0] ** 2 + u[:, 1] ** 2)
    b = np.exp(log_b).reshape(grid.shape)
    return (b / b[brain].mean()).astype(np.float32)


def build_anatomy(grid: Grid, placement: HeadPlacement, rng: np.random.Generator) -> Anatomy:
    """Tissue fractions, tissue intensity and coil bias of a participant on the grid.

    Parameters
    ----------
    grid : Grid
    placement : HeadPlacement
    rng : numpy.random.Generator
        Draws the bias field and the base intensity.

    Returns
    -------
    Anatomy
    """
    from scipy import ndimage as ndi

    tpl = _smoothed_templates(grid.voxel_mm)
    # grid voxel -> template voxel, for scipy's affine_transform (output -> input)
    a = np.linalg.inv(_TEMPLATE_AFFINE) @ placement.mni_from_world @ grid.affine
    sample = {k: ndi.affine_transform(v, a[:3, :3], a[:3, 3], output_shape=grid.shape, order=1,
                                      mode="constant", cval=0.0).astype(np.float32)
              for k, v in tpl.items()}
    brain = sample["brain"] > 0.5
    frac = np.clip(sample["brain"], 0.0, 1.0)
    gm = np.clip(sample["gm"], 0.0, 1.0)
    wm = np.clip(sample["wm"], 0.0, 1.0)
    csf = np.clip(frac - gm - wm, 0.0, 1.0)
    dist = ndi.distance_transform_edt(~brain, sampling=grid.voxel_mm)
    scalp = ((dist > 4.0) & (dist <= 12.0)).astype(np.float32)
    mni = voxel_mni(grid, placement)
    loss = np.zeros(grid.n_voxels)
    for c, sd, depth in _DROPOUTS:
        loss += depth * np.exp(-0.5 * np.sum((mni - np.asarray(c)) ** 2, axis=1) / sd**2)
    dropout = np.exp(-loss).reshape(grid.shape)
    base = float(rng.uniform(650.0, 950.0))
    c = _TISSUE_CONTRAST
    s0 = base * (c["gm"] * gm + c["wm"] * wm + c["csf"] * csf + c["scalp"] * scalp) * dropout
    bias = _bias_field(grid, brain, rng)
    return Anatomy(grid=grid, placement=placement, brain=brain, gm=gm.astype(np.float32),
                   wm=wm.astype(np.float32), csf=csf.astype(np.float32), head=(s0 > 0),
                   s0=s0.astype(np.float32), bias=bias, base=base)
