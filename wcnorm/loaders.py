"""Batches: `ArrayLoader` for an in-memory split (uint8 NCHW, kept on the training device,
augmented there), `FolderLoader` for an image folder, and the epoch seeds that make a
resumed run draw what an uninterrupted one drew. The datasets themselves are
`wcnorm.data`'s."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, RandomSampler

from .data import ArraySplit, DataBundle, UnreadableImage


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's randomness (order, crops, flips), from the run's seed and
    the epoch alone: a resumed run draws what an uninterrupted one drew."""
    return int(seed) * 1_000_003 + int(epoch)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator all of one epoch's randomness comes from."""
    return torch.Generator().manual_seed(epoch_seed(seed, epoch))


def random_crop(x: torch.Tensor, pad: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Zero-pad a batch by `pad` and crop each image at its own offset (dy, dx) in [0, 2 pad]."""
    n, c, h, w = x.shape
    x = F.pad(x, (pad, pad, pad, pad))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    return x[torch.arange(n, device=x.device)[:, None, None, None], torch.arange(c, device=x.device)[None, :, None, None], rows, cols]


class ArrayLoader:
    """Batches of an in-memory uint8 dataset, augmented and normalised on `device`.

    The uint8 images live on `device` too (the fast path), or with `store_on_device=False`
    in host memory: each batch is then gathered there and copied over as uint8 (a quarter
    of the float bytes) before it is augmented. With `world_size > 1` each rank takes every
    world_size-th example of the same permutation (all ranks draw the same permutation from
    the same generator).
    """

    def __init__(self, split: ArraySplit, batch_size: int, *, mean, std, device, seed: int = 0,
                 train: bool = True, augment: bool = False, pad: int = 4, limit: int | None = None,
                 channels_last: bool = False, rank: int = 0, world_size: int = 1,
                 store_on_device: bool = True):
        self.device = torch.device(device)
        store = self.device if store_on_device else torch.device("cpu")
        self.x, self.y = split.x.to(store), split.y.to(store)
        self.pin = store.type == "cpu" and self.device.type == "cuda"  # page-locked batches copy async
        self.batch_size, self.train, self.augment, self.pad = batch_size, train, augment and train, pad
        self.seed, self.epoch, self.limit, self.channels_last = seed, 0, limit, channels_last
        self.rank, self.world_size = rank, world_size
        shape = (1, -1, 1, 1)
        self.mean = torch.tensor(mean, device=self.device).view(shape) * 255
        self.std = torch.tensor(std, device=self.device).view(shape) * 255

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _num_examples(self) -> int:
        if self.train:  # every rank must take the same number of steps (DDP syncs each one)
            return len(self.y) // self.world_size
        return len(range(self.rank, len(self.y), self.world_size))

    def __len__(self) -> int:
        n = self._num_examples()
        # Training drops a last batch of one, which BatchNorm cannot normalise.
        batches = n // self.batch_size + (n % self.batch_size > (1 if self.train else 0))
        return min(batches, self.limit) if self.limit else batches

    def __iter__(self):
        g = epoch_generator(self.seed, self.epoch)
        n = len(self.y)
        order = torch.randperm(n, generator=g) if self.train else torch.arange(n)
        if self.augment:  # one draw for the whole epoch, moved to the device once
            dy, dx = torch.randint(0, 2 * self.pad + 1, (2, n), generator=g)
            flip = torch.rand(n, generator=g) < 0.5
            # Drawn before sharding, so every rank's share is what one process would see.
            shard = slice(self.rank, None, self.world_size)
            dy, dx, flip = (t[shard].to(self.device) for t in (dy, dx, flip))
        order = order[self.rank :: self.world_size].to(self.x.device)
        for b in range(len(self)):
            sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
            idx = order[sl]
            x, y = self.x[idx], self.y[idx]
            if self.pin:
                x, y = x.pin_memory(), y.pin_memory()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.augment:
                x = random_crop(x, self.pad, dy[sl], dx[sl])
                x = torch.where(flip[sl, None, None, None], x.flip(3), x)
            x = (x.float() - self.mean) / self.std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y


class FolderLoader:
    """A DataLoader over an ImageFolder with per-epoch seeding and non-blocking copies."""

    def __init__(self, dataset, batch_size: int, *, device, seed: int = 0, train: bool = True,
                 num_workers: int = 4, limit: int | None = None, channels_last: bool = False,
                 rank: int = 0, world_size: int = 1):
        self.device, self.seed, self.limit, self.channels_last = torch.device(device), seed, limit, channels_last
        self.generator = torch.Generator()
        if world_size > 1:
            sampler = torch.utils.data.DistributedSampler(dataset, world_size, rank, shuffle=train, seed=seed)
        else:
            sampler = RandomSampler(dataset, generator=self.generator) if train else None
        self.loader = DataLoader(
            dataset, batch_size, sampler=sampler, num_workers=num_workers, drop_last=train and len(dataset) > batch_size,
            pin_memory=self.device.type == "cuda", persistent_workers=False, generator=self.generator,
        )

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(epoch_seed(self.seed, epoch))
        if hasattr(self.loader.sampler, "set_epoch"):
            self.loader.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return min(len(self.loader), self.limit) if self.limit else len(self.loader)

    def __iter__(self):
        try:
            for b, (x, y) in enumerate(self.loader):
                if b >= len(self):
                    break
                x = x.to(self.device, non_blocking=True)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                yield x, y.to(self.device, non_blocking=True)
        except UnreadableImage as err:
            # From a worker process the error comes back with the worker's traceback in
            # its message; the last line is ours and names the file.
            raise UnreadableImage(str(err).rpartition(f"{UnreadableImage.__name__}: ")[2].strip()) from None


def make_loaders(data: DataBundle, dataset_cfg, trainer_cfg, *, device, seed: int, data_on_device: bool,
                 channels_last: bool = False, rank: int = 0, world_size: int = 1):
    """The (train, test) loaders for a bundle, following the dataset and trainer configs."""
    # batch sizes are global: each of `world_size` ranks takes an even share
    bs = int(trainer_cfg.batch_size) // world_size
    common = dict(device=device, seed=seed, channels_last=channels_last, rank=rank, world_size=world_size)
    if data.is_array:
        train = ArrayLoader(data.train, bs, train=True, augment=bool(dataset_cfg.augment),
                            pad=int(dataset_cfg.get("crop_padding", 4)), limit=trainer_cfg.limit_batches,
                            mean=data.mean, std=data.std, store_on_device=data_on_device, **common)
    else:
        train = FolderLoader(data.train, bs, train=True, num_workers=int(trainer_cfg.num_workers),
                             limit=trainer_cfg.limit_batches, **common)
    return train, _eval_loader(data, data.test, trainer_cfg, data_on_device=data_on_device, **common)


def make_val_loader(data: DataBundle, trainer_cfg, *, device, data_on_device: bool, channels_last: bool = False,
                    rank: int = 0, world_size: int = 1):
    """The evaluation loader of the validation split (`dataset.val_split` of the training
    set, see `split_indices`), or None when there is none. Like the test loader: no
    augmentation, in order, `trainer.eval_batch_size`, `trainer.limit_eval_batches`."""
    if data.val is None:
        return None
    # seed=0: evaluation draws nothing at random (fixed order, no augmentation)
    return _eval_loader(data, data.val, trainer_cfg, device=device, seed=0, data_on_device=data_on_device,
                        channels_last=channels_last, rank=rank, world_size=world_size)


def _eval_loader(data: DataBundle, split, trainer_cfg, *, data_on_device: bool, world_size: int, **common):
    ebs = max(1, int(trainer_cfg.eval_batch_size or 2 * trainer_cfg.batch_size) // world_size)
    limit = trainer_cfg.limit_eval_batches
    if data.is_array:
        return ArrayLoader(split, ebs, train=False, limit=limit, mean=data.mean, std=data.std,
                           store_on_device=data_on_device, world_size=world_size, **common)
    return FolderLoader(split, ebs, train=False, num_workers=int(trainer_cfg.num_workers), limit=limit,
                        world_size=world_size, **common)
