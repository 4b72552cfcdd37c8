"""Pictures of neural-field results, as PNG bytes (the caller decides where they go).

- `image_png`: an image (a rendered view, its ground truth) as an 8-bit RGB PNG.
- `mesh_png`: a shaded view of a triangle mesh in [-1, 1]^3, drawn with matplotlib's
  Agg canvas (no display, no global pyplot state). Faces are shaded by
  |normal . light|, so the orientation of a marching-cubes mesh does not matter; the
  shapes' y axis (up in the Stanford scans) is drawn upwards, the same view for every
  mesh so that pictures of one shape compare.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from torch import Tensor

if TYPE_CHECKING:  # the `fields` extra: a mesh is handed in, never made here
    import trimesh

__all__ = ["image_png", "mesh_png"]

LIGHT = np.array([0.4, -0.6, 0.7]) / np.linalg.norm([0.4, -0.6, 0.7])
AMBIENT = 0.25  # the brightness of a face seen edge-on to the light
ELEVATION, AZIMUTH = 15.0, -110.0  # degrees: a three-quarter view from slightly above
INCHES, DPI = 4.0, 100
Y_UP = [0, 2, 1]  # matplotlib's vertical axis is z: draw the shapes' (x, y, z) as (x, z, y)


def image_png(image: Tensor) -> bytes:
    """An (H, W, 3) image with values in [0, 1] as an 8-bit RGB PNG."""
    pixels = (image.detach().float().clamp(0, 1) * 255).round().byte().cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def mesh_png(mesh: trimesh.Trimesh, title: str = "") -> bytes:
    """A shaded view of a mesh in [-1, 1]^3; an empty mesh gives a picture that says so."""
    # matplotlib on first use only: a run that draws no mesh does not pay for importing it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    fig = Figure(figsize=(INCHES, INCHES), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(projection="3d")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    ax.set(xlim=(-1, 1), ylim=(-1, 1), zlim=(-1, 1))
    ax.set_box_aspect((1, 1, 1), zoom=1.35)
    ax.view_init(elev=ELEVATION, azim=AZIMUTH)
    if len(mesh.faces) == 0:
        ax.text2D(0.5, 0.5, "no surface", transform=ax.transAxes, ha="center")
    else:
        triangles = np.asarray(mesh.vertices)[np.asarray(mesh.faces)][:, :, Y_UP]
        shade = AMBIENT + (1 - AMBIENT) * np.abs(np.asarray(mesh.face_normals)[:, Y_UP] @ LIGHT)
        ax.add_collection3d(Poly3DCollection(triangles, facecolors=np.repeat(shade[:, None], 3, axis=1),
                                             edgecolors="none"))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
