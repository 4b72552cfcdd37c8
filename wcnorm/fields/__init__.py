"""Neural fields: the pieces of NeRF and of 3D occupancy modelling.

- `rays`: one ray per pixel of a pinhole camera; NeRF's NDC rays for forward-facing
  scenes.
- `render`: stratified and hierarchical sampling along rays, volume rendering, and
  whole views rendered in chunks.
- `scenes`: the Blender-synthetic and LLFF scene layouts.
- `shapes`: meshes, occupancy labels (generalized winding numbers), marching cubes,
  Chamfer distance.
- `metrics`: PSNR, SSIM, IoU.
- `pictures`: rendered views and meshes as PNG images.

The models (`NeRF`, `OccupancyMLP`) are in `wcnorm.models.fields`. Nothing here
depends on the training loop: these are pure functions and plain data.
"""

from .metrics import iou, psnr, ssim
from .pictures import image_png, mesh_png
from .rays import camera_rays, ndc_rays, pixel_rays, viewing_directions
from .render import Rendering, RenderSettings, final_pass, render_rays, render_view
from .scenes import Scene, SceneError, check_scene, load_blender, load_llff, load_scene
from .shapes import (
    MeshError,
    OccupancySet,
    chamfer_distance,
    extract_surface,
    load_mesh,
    normalize_mesh,
    occupancy_sets,
    surface_chamfer,
)

__all__ = ["iou", "psnr", "ssim", "image_png", "mesh_png", "camera_rays", "ndc_rays", "pixel_rays",
           "viewing_directions", "RenderSettings", "Rendering", "render_rays", "final_pass",
           "render_view", "Scene", "SceneError", "check_scene", "load_blender", "load_llff",
           "load_scene", "MeshError", "OccupancySet",
           "chamfer_distance", "extract_surface", "load_mesh", "normalize_mesh",
           "occupancy_sets", "surface_chamfer"]
