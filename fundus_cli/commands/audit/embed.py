"""Images prepared once and embedded: the training set spilled to scratch, the synthetic and
holdout sets in memory, and the shifted views the registered distance searches."""

from __future__ import annotations


from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fundus_cli.commands.audit.config import AuditConfig
from fundus_cli.data import h5
from fundus_cli.data.quality import phash
from fundus_cli.privacy import preprocess as pp
from fundus_cli.privacy import views as vw
from fundus_cli.privacy import neighbours as nb
from fundus_cli.privacy.embeddings import Vectors, pixel_embedding, tiled_embedding
from fundus_cli.privacy.learned import LearnedEncoder, learned_embedding
from fundus_cli.progress import track


_SEED_VIEWS = 22  # sub-seed of the training sample that the view search's projection is fitted on


VIEW_DIMS = 64  # principal axes of the learned features used by the view search


_VIEW_FIT = 5000  # training images (one per duplicate group) the projection is fitted on


VIEW_K = 4  # candidates per shifted view


class Rows:
    """``rows[a:b]`` -> read(a, b): lets train_encoder slice a dataset file like an array."""

    def __init__(self, read: Callable[[int, int], np.ndarray], n: int) -> None:
        self._read, self._n = read, n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, sl: slice) -> np.ndarray:
        start, stop, _ = sl.indices(self._n)
        return self._read(start, stop)


class Spill:
    """float32 rows written once to a scratch file and read back by plain reads (not a memory
    map, whose touched pages would count as the process's memory)."""

    def __init__(self, path: Path, width: int, dtype: Any = np.float32) -> None:
        self.path, self.width, self.n, self.dtype = path, width, 0, np.dtype(dtype)
        self._file: Any = open(path, "wb")  # noqa: SIM115 - closed by finish()

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        assert rows.ndim == 2 and rows.shape[1] == self.width
        self._file.write(rows.tobytes())
        self.n += len(rows)

    def finish(self) -> None:
        self._file.close()

    def read(self, start: int, stop: int) -> np.ndarray:
        stop = min(stop, self.n)
        count = max(0, stop - start) * self.width
        rows = np.fromfile(self.path, dtype=self.dtype, count=count, offset=start * self.width * self.dtype.itemsize)
        return rows.reshape(-1, self.width)

    def take(self, rows: np.ndarray) -> np.ndarray:
        return np.stack([self.read(int(r), int(r) + 1)[0] for r in rows]) if len(rows) else \
            np.zeros((0, self.width), self.dtype)

    def chunks(self, size: int) -> Iterator[tuple[int, np.ndarray]]:
        for a in range(0, self.n, size):
            yield a, self.read(a, a + size)


@dataclass
class Side:
    """The synthetic or holdout images in memory, prepared once for every embedding."""

    rows: np.ndarray  # rows of the file
    pixels: np.ndarray  # float32 (n, 3 * mask pixels): preprocess.prepare inside the common mask
    learned: Vectors | None
    phash: np.ndarray | None  # uint64 (n,), computed from the images (a file's own column is not trusted)
    phash_flipped: np.ndarray | None
    views: np.ndarray | None = None  # float32 (n, views, dims): shifted views in the projected learned embedding


def unflatten(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Masked pixel rows back to prepared images (zeros outside the mask, as prepare leaves them)."""
    x = np.zeros((len(pixels), *mask.shape, 3), np.float32)
    x[:, mask] = pixels.reshape(len(pixels), -1, 3)
    return x


def vectors(name: str, pixels: np.ndarray, mask: np.ndarray, learned: Vectors | None) -> Vectors:
    if name == "learned":
        assert learned is not None
        return learned
    x = unflatten(pixels, mask)
    return pixel_embedding(x, mask) if name == "pixel" else tiled_embedding(x, mask)


def read_side(reader: h5.DatasetReader, rows: np.ndarray, *, mask: np.ndarray, encoder: LearnedEncoder | None,
               chunk: int, device: Any, hashes: bool, what: str,
               views: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> Side:
    pixels, learned, hs, hfs, vs = [], [], [], [], []
    with track(f"reading {what}", len(rows)) as advance:
        for a in range(0, len(reader), chunk):
            b = min(a + chunk, len(reader))
            sel = rows[(rows >= a) & (rows < b)] - a
            if len(sel) == 0:
                continue
            imgs, fov = reader.images(a, b)[sel], reader.fov_masks(a, b)[sel]
            x = pp.prepare(imgs, fov, mask=mask)
            pixels.append(x[:, mask].reshape(len(x), -1))
            if encoder is not None:
                learned.append(learned_embedding(encoder, imgs, fov, device=device))
            if hashes:
                hs.append(np.array([phash(i) for i in imgs], dtype=np.uint64))
                hfs.append(pp.flipped_phashes(imgs))
            if views is not None:
                vs.append(views(imgs, fov))
            advance(len(sel))
    return Side(rows=rows, pixels=np.concatenate(pixels), learned=Vectors.concat(learned) if learned else None,
                 phash=np.concatenate(hs) if hashes else None, phash_flipped=np.concatenate(hfs) if hashes else None,
                 views=np.concatenate(vs) if views is not None else None)


@dataclass(frozen=True)
class Views:
    """Shifted views of query images in the learned embedding, projected on its principal
    axes: the registered distance's candidates for copies moved too far for the embeddings'
    own searches (on phantoms the learned embedding ranked the source of an 8 px shifted
    copy first for 9 % of them, one of its views for all)."""

    encoder: LearnedEncoder
    offsets: list[tuple[int, int]]  # px at the working size
    projection: vw.Projection
    working_size: int
    device: Any

    def __call__(self, images: np.ndarray, fov: np.ndarray) -> np.ndarray:
        """uint8 images (n, S, S, 3) and their masks -> float32 (n, views, dims)."""
        s = images.shape[1]
        out = []
        for dy, dx in self.offsets:
            moved = vw.shift_images(images, round(dy * s / self.working_size), round(dx * s / self.working_size))
            v = learned_embedding(self.encoder, moved, fov, flips=False, device=self.device)
            out.append(self.projection(v.parts[0]))
        return np.stack(out, 1)


def view_embedder(cfg: AuditConfig, names: tuple[str, ...], encoder: LearnedEncoder | None, lrn: Spill | None,
                   t_dups: np.ndarray, n_t: int, max_shift: int, device: Any) -> Views | None:
    offsets = vw.view_offsets(max_shift)
    if "registered" not in names or encoder is None or lrn is None or not offsets:
        return None
    rows = nb.sample_train(n_t, _VIEW_FIT, dup_groups=t_dups, seed=cfg.seed, stream=_SEED_VIEWS)
    projection = vw.fit_projection(lrn.take(rows)[:, :encoder.model.feature_dim], dims=VIEW_DIMS)
    return Views(encoder=encoder, offsets=offsets, projection=projection, working_size=cfg.size, device=device)


def _view_candidates(views: Views, q_views: np.ndarray, lrn: Spill, *, chunk: int, dedupe: np.ndarray,
                     exclude: tuple[np.ndarray, np.ndarray] | None, device: Any) -> np.ndarray:
    """Training rows nearest to each view of each query (n, views * VIEW_K), the mirrored
    training images included (a view near a mirrored training image is a mirrored copy)."""
    n, n_views, dims = q_views.shape
    flat = np.ascontiguousarray(q_views.reshape(n * n_views, dims))
    d = lrn.width // 2

    def chunks() -> Iterator[tuple[int, Vectors]]:
        for a, rows in lrn.chunks(chunk):
            yield a, Vectors(parts=(views.projection(rows[:, :d]), views.projection(rows[:, d:])))

    excl = None if exclude is None else (np.repeat(exclude[0], n_views, axis=0), exclude[1])
    near = nb.nearest(Vectors(parts=(flat, flat)), chunks, k=VIEW_K, exclude=excl, dedupe=dedupe, device=str(device))
    return near.index.reshape(n, n_views * VIEW_K)
