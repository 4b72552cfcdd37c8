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

The models (`NeRF`, `OccupancyMLP`) are in `wcnorm.models.coordinate_mlps`. Nothing here
depends on the training loop: these are pure functions and plain data.
"""

from __future__ import annotations

import importlib

# name -> its module. Resolved on first use (PEP 562): a run that trains a classifier, or
# reads one scene, does not import matplotlib, trimesh, igl, scipy and scikit-image.
_WHERE = {
    "metrics": ("iou", "psnr", "ssim"),
    "pictures": ("image_png", "mesh_png"),
    "rays": ("camera_rays", "ndc_rays", "pixel_rays", "viewing_directions"),
    "render": ("Rendering", "RenderSettings", "final_pass", "render_rays", "render_view"),
    "scenes": ("Scene", "SceneError", "check_scene", "load_blender", "load_llff", "load_scene"),
    "shapes": ("MeshError", "OccupancySet", "chamfer_distance", "extract_surface", "load_mesh",
               "normalize_mesh", "occupancy_sets", "surface_chamfer"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)


__all__ = ["iou", "psnr", "ssim", "image_png", "mesh_png", "camera_rays", "ndc_rays", "pixel_rays",
           "viewing_directions", "RenderSettings", "Rendering", "render_rays", "final_pass",
           "render_view", "Scene", "SceneError", "check_scene", "load_blender", "load_llff",
           "load_scene", "MeshError", "OccupancySet",
           "chamfer_distance", "extract_surface", "load_mesh", "normalize_mesh",
           "occupancy_sets", "surface_chamfer"]
