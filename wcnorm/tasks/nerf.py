"""NeRF: a radiance field fitted to the training views of one scene (Mildenhall et al.,
ECCV 2020), scored by PSNR and SSIM on views it was not trained on.

- Data: every pixel of every training view is one example (a ray and its colour).
  An epoch is `dataset.steps_per_epoch` steps of `trainer.batch_size` random rays
  (`PoolLoader`); the rays of a batch are made on the device from its pixels' indices.
- Loss: the MSE of the rendered colour, summed over the coarse and fine passes (NeRF's
  loss); the epoch's sums are [loss x rays, squared error of the final colour, rays]
  -> `train_loss`, `train_psnr` (from the epoch's mean squared error).
- Evaluation, every `dataset.eval_every` epochs and after the last: the views of
  `dataset.val_source` (evenly spaced, at most `dataset.eval_views`) rendered whole, in
  chunks of `trainer.eval_batch_size` rays -> `val_psnr`, `val_ssim` (means over the
  views), each rendering and its ground truth written to ``renders/epoch_<NNN>/`` as
  ``<view>_pred.png`` and ``<view>_gt.png`` (the view's file name: r_0, image001). Blender
  scenes have a val split; LLFF scenes have none, and theirs is a fixed subset of the
  *training* views (docs/fields.md). With `dataset.val_split` > 0 the val views are
  instead training views held out of training (`held_out_views`), whatever
  `val_source` says: the only split that may choose a learning rate for every layout.
- End of run: the test views, all of them, -> `final_test_psnr`, `final_test_ssim`,
  pictures in ``renders/test/``. The test split is loaded only then.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from ..fields.metrics import SSIM_RADIUS, psnr, ssim
from ..fields.pictures import image_png
from ..fields.render import RenderSettings, final_pass, render_rays, render_view
from ..fields.scenes import Rays, Scene, load_blender, load_llff
from ..models.coordinate_mlps import build
from ..outputs import RENDERS, atomic_write_bytes
from .field_common import TEST_SPLIT, PoolLoader, field_model, held_out_views, scene_options
from .task import Task, sums_tensor

SCENE_LOADERS = {"blender": load_blender, "llff": load_llff}
HELD_OUT = "held_out"  # result.json's val_source when dataset.val_split held training views out


class RadianceField(nn.Module):
    """What the NeRF task trains: the coarse (and fine) networks and how their rays are
    rendered. One forward renders a batch of rays, so that data parallelism sees one
    call per step; rays are sampled at random depths while training (``self.training``)
    and at fixed ones otherwise."""

    def __init__(self, network: nn.Module, settings: RenderSettings):
        super().__init__()
        self.network, self.settings = network, settings
        self.wcnorm_classifier = [f"network.{name}" for name in network.wcnorm_classifier]

    def _passes(self):
        """(coarse field, fine field or None): a `CoarseFineNeRF`'s two networks, or one
        `NeRF` that renders a single pass."""
        net = self.network
        return (net.coarse, net.fine) if hasattr(net, "fine") else (net, None)

    def forward(self, origins: Tensor, directions: Tensor, viewdirs: Tensor) -> dict:
        coarse, fine = self._passes()
        return render_rays(coarse, fine, origins, directions, self.settings, viewdirs=viewdirs,
                           perturb=self.training)

    def render_view(self, rays: Rays, chunk: int) -> Tensor:
        """A whole view (H, W, 3), `chunk` rays at a time, without gradients."""
        coarse, fine = self._passes()
        return render_view(coarse, fine, rays.origins, rays.directions, self.settings,
                           viewdirs=rays.viewdirs, chunk=chunk)["rgb"]


def evenly_spaced(n: int, k: int | None) -> list[int]:
    """k of the indices 0..n-1, evenly spaced, first and last included (all if k is None)."""
    if k is None or k >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})


class NeRFTask(Task):
    metric, higher_is_better, unit = "val_psnr", True, "rays"
    log_keys = ("train_loss", "train_psnr", "val_psnr", "val_ssim")

    def __init__(self, train: Scene, val: Scene, val_views: list[int], model: RadianceField,
                 train_loader: PoolLoader, *, load_test, chunk: int, eval_every: int, epochs: int,
                 limit_views: int | None, val_source: str, run_dir: Path | None, rank: int = 0,
                 world_size: int = 1):
        self.data, self.val, self.val_views = train, val, val_views
        self.model, self.train_loader = model, train_loader
        self.load_test = load_test  # the test views: loaded by `finish` alone
        self.chunk, self.eval_every, self.epochs, self.limit_views = chunk, eval_every, epochs, limit_views
        self.val_source, self.run_dir, self.rank, self.world_size = val_source, run_dir, rank, world_size

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        origins, directions, viewdirs, target = batch
        passes = model(origins, directions, viewdirs)
        loss = sum(F.mse_loss(p.rgb.float(), target) for p in passes.values())
        squared_error = (final_pass(passes).rgb.detach().float() - target).square().sum()
        n = len(target)
        return loss, sums_tensor(loss.detach() * n, squared_error, n, device=target.device)

    def train_metrics(self, sums: Tensor) -> dict:
        n = max(sums[2].item(), 1)
        mse = sums[1].item() / (3 * n)  # per colour channel, as PSNR is defined
        return {"train_loss": sums[0].item() / n, "train_psnr": -10 * math.log10(mse) if mse > 0 else math.inf}

    def evaluate(self, model, *, autocast, reduce, epoch: int) -> dict:
        if epoch % self.eval_every and epoch != self.epochs:
            return {}
        views = self.val_views[: self.limit_views][self.rank :: self.world_size]
        folder = self.run_dir / RENDERS / f"epoch_{epoch:03d}" if self.run_dir else None
        sums = reduce(self._score(model, self.val, views, autocast, folder))
        n = sums[2].item()
        return {"val_psnr": sums[0].item() / n, "val_ssim": sums[1].item() / n}

    def finish(self, model: nn.Module, run_dir: Path | None) -> dict:
        model.eval()
        test = self.load_test()
        views = list(range(len(test)))[: self.limit_views]
        folder = Path(run_dir) / RENDERS / TEST_SPLIT if run_dir else None
        sums = self._score(model, test, views, nullcontext, folder)
        n = sums[2].item()
        return {"final_test_psnr": sums[0].item() / n, "final_test_ssim": sums[1].item() / n,
                "test_views": len(views), "val_source": self.val_source,
                "renders": f"{RENDERS}/{TEST_SPLIT}"}

    def _score(self, model: RadianceField, scene: Scene, views: list[int], autocast,
               folder: Path | None) -> Tensor:
        """[sum of PSNRs, sum of SSIMs, views] of `views` of `scene`; each rendering and
        its ground truth are written into `folder` (if given)."""
        scores = []
        for view in views:
            with autocast():
                rgb = model.render_view(scene.view_rays(view), self.chunk).float().clamp(0, 1)
            truth = scene.images[view]
            # SSIM's 11 x 11 window needs views at least that large (not so tiny test scenes)
            similarity = ssim(rgb, truth) if min(truth.shape[:2]) > 2 * SSIM_RADIUS else torch.nan
            scores.append(sums_tensor(psnr(rgb, truth), similarity, 1, device=rgb.device))
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
                stem = scene.files[view].stem if scene.files else f"{view:03d}"
                for role, image in (("pred", rgb), ("gt", truth)):
                    atomic_write_bytes(folder / f"{stem}_{role}.png", image_png(image))
        return torch.stack(scores).sum(0) if scores else torch.zeros(3, dtype=torch.float64,
                                                                       device=scene.images.device)


def ray_batches(scene: Scene):
    """`fetch` for a `PoolLoader` over a scene's pixels: flat indices (view, row, column in
    C order) -> (origins, directions, viewdirs, colours), made on the scene's device."""
    height, width = scene.height, scene.width

    def fetch(indices: Tensor) -> tuple[Tensor, ...]:
        view, pixel = indices // (height * width), indices % (height * width)
        row, col = pixel // width, pixel % width
        rays = scene.pixel_rays(view, row, col)
        return rays.origins, rays.directions, rays.viewdirs, scene.images[view, row, col]

    return fetch


def nerf_task(cfg: DictConfig, device: torch.device, *, rank: int = 0, world_size: int = 1,
              run_dir: Path | None = None) -> NeRFTask:
    """The NeRF task of `cfg` (dataset=blender or llff, model=nerf), its model on `device`."""
    d, t = cfg.dataset, cfg.trainer
    load, options = SCENE_LOADERS[d.name], scene_options(d)
    train = load(d.root, "train", **options).to(device)
    val_source = d.val_source
    if d.get("val_split"):  # views held out of training: the split a search tunes on
        held = held_out_views(len(train), float(d.val_split), f"the {len(train)} training views of {d.root}")
        val, val_source = train.views(held), HELD_OUT
        train = train.views([v for v in range(len(train)) if v not in held])
    else:
        val = train if val_source == "train" else load(d.root, val_source, **options).to(device)
    settings = train.render_settings(n_coarse=cfg.model.n_coarse, n_fine=cfg.model.n_fine)
    name, model_options = field_model(cfg.model)
    model = RadianceField(build(name, coarse_fine=settings.n_fine > 0, **model_options), settings).to(device)
    loader = PoolLoader(train.images[..., 0].numel(), int(t.batch_size), int(d.steps_per_epoch),
                        ray_batches(train), seed=cfg.seed, device=device, limit=t.limit_batches,
                        rank=rank, world_size=world_size)
    return NeRFTask(
        train, val, evenly_spaced(len(val), d.eval_views), model, loader,
        load_test=lambda: load(d.root, TEST_SPLIT, **options).to(device),
        chunk=int(t.eval_batch_size or 2 * t.batch_size), eval_every=int(d.eval_every),
        epochs=int(t.epochs), limit_views=t.limit_eval_batches, val_source=val_source,
        run_dir=Path(run_dir) if run_dir else None, rank=rank, world_size=world_size)
