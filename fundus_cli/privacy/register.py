"""Shift-registered pixel distance: is s a training image moved by a few pixels?

The pixel embedding compares s and t pixel by pixel, so a copy translated by 8 px (at the
64 px working size) looks as unrelated as any other image. Here s (and its mirror image)
is slid over t by every integer shift within +-``max_shift`` px. For each shift the two are
compared on the overlap: the pixels x inside the common disc where x + shift is inside it
too, and where t shows its photograph (its own field of view; a disc cut off by the frame
has black bands that a shifted copy carries into other places). There the Pearson
correlation r of the two images is taken over their RGB values after removing each image's
per-channel means (white balance and the channels' different levels, which every fundus
photograph shares, would otherwise make all pairs look alike), and the distance is
sqrt(2 - 2 r) at the best shift and flip: 0 for a translated copy whatever its brightness
and contrast, about 0.4-1 for distinct photographs.

Cost: every pair is two cross-correlations of three channels (the query and its mirror
image against t), by FFT at the working size; the per-image overlap sums are matrix
products, computed once per image. Comparing every synthetic image with every training
image this way would cost hundreds of pixel searches, so the audit re-ranks only a few
candidate training images per query (``audit._audit_registered``): the neighbours that
the embeddings' searches found, and those of shifted views of the query in the learned
embedding. The holdout (calibration) images get their candidates and distances by exactly
the same procedure, which keeps the conformal p-values valid whatever the candidates miss.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft
import torch

from fundus_cli.errors import FundusError

# Shifts whose overlap holds less than this share of the disc are not compared: two images
# that share only a crescent say little about each other.
_MIN_OVERLAP = 0.5
# An overlap whose variance per value is below this (standardised images have about 1) is
# flat: no correlation is defined there.
_MIN_VAR = 1e-6
_PAIR_BATCH = 256  # pairs whose spectra are held at once (64 KB each at 64 px)
_TRAIN_BATCH = 512  # training rows whose spectra are held at once


@dataclass(frozen=True)
class Registered:
    """Registered distances of (query, training image) pairs."""

    distance: np.ndarray  # float64 (P,): sqrt(2 - 2 r) at the best shift and flip; inf where no shift is usable
    flipped: np.ndarray  # bool (P,): the query's mirror image matched
    shift: np.ndarray  # int64 (P, 2): (dy, dx), px at the working size: the (mirrored) query at x + shift
    #                    matches the training image at x


class Registrar:
    """Registered distances inside one common mask (the audit's, at the working size).

    mask: boolean (s, s) common disc, symmetric under a horizontal flip.
    max_shift: largest shift searched along each axis, px at the working size.
    """

    def __init__(self, mask: np.ndarray, *, max_shift: int) -> None:
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim != 2 or mask.shape[0] != mask.shape[1]:
            raise FundusError(f"the registration mask must be square, got shape {mask.shape}")
        if not np.array_equal(mask, mask[:, ::-1]):
            raise FundusError("the registration mask must be symmetric under a horizontal flip")
        s = mask.shape[0]
        if not 0 <= max_shift < s // 2:
            raise FundusError(f"--max-shift must be between 0 and {s // 2 - 1} px at a {s} px working size, "
                              f"got {max_shift}")
        self.mask, self.size, self.max_shift = mask, s, int(max_shift)
        self.n_pixels = int(mask.sum())
        lag = self.max_shift
        self.n_fft = sfft.next_fast_len(s + lag, real=True)
        lags = np.arange(-lag, lag + 1)
        self.dy, self.dx = (a.ravel() for a in np.meshgrid(lags, lags, indexing="ij"))
        w = 2 * lag + 1
        idx = np.arange(w * w)
        self._mirror = (idx // w) * w + (w - 1 - idx % w)  # shift index of (dy, -dx)
        pad = np.pad(mask, lag)
        # Over mask pixels only: row d of _at is m(x + d), of _here m(x - d). Per-image sums over
        # each overlap are then one matrix product per image.
        at = np.stack([pad[lag + a:lag + a + s, lag + b:lag + b + s][mask] for a, b in zip(self.dy, self.dx)])
        here = np.stack([pad[lag - a:lag - a + s, lag - b:lag - b + s][mask] for a, b in zip(self.dy, self.dx)])
        self._at_t = torch.from_numpy(at.T.astype(np.float32))  # (mask pixels, shifts)
        self._here_t = torch.from_numpy(here.T.astype(np.float32))
        # Where each shift sits in a circular correlation of size n_fft.
        self._flat_lag = (self.dy % self.n_fft) * self.n_fft + (self.dx % self.n_fft)
        # rfft2 of the mirror image from that of the image: row -k (mod n), conjugate, phase.
        n = self.n_fft
        self._rev = (-np.arange(n)) % n
        self._phase = np.exp(-2j * np.pi * np.arange(n // 2 + 1) * (s - 1) / n).astype(np.complex64)
        self._yx = np.nonzero(mask)
        self._flat = (self._yx[0] * n + self._yx[1]).astype(np.int64)  # mask pixels in an FFT frame

    # ------------------------------------------------------------------ per-image parts

    def _images(self, rows: np.ndarray, *, channels: int = 3) -> np.ndarray:
        """Masked rows (n, channels * mask pixels) -> float32 (n, channels, n_fft, n_fft), zero
        outside the mask and in the FFT's padding."""
        n, f = len(rows), self.n_fft
        out = np.zeros((n, channels, f * f), np.float32)
        out[:, :, self._flat] = rows.reshape(n, self.n_pixels, channels).transpose(0, 2, 1)
        return out.reshape(n, channels, f, f)

    def _check(self, pixels: np.ndarray, own: np.ndarray | None = None) -> np.ndarray:
        """Validated rows, each channel centred over the pixels that count (``own``, default all).

        Correlations over an overlap do not change when a channel is shifted by a constant
        inside the mask, but the float32 FFTs' rounding error grows with the values: fundus
        channels sit far apart (red high, blue low), and centring them makes a copy's
        distance come out below 1e-3 instead of about 3e-3.
        """
        pixels = np.asarray(pixels, dtype=np.float32)
        if pixels.ndim != 2 or pixels.shape[1] != 3 * self.n_pixels:
            raise FundusError(f"registration needs rows of {3 * self.n_pixels} masked pixel values (the pixel "
                              f"embedding's rows), got shape {pixels.shape}")
        x = pixels.reshape(len(pixels), -1, 3)
        if own is None:
            x = x - x.mean(1, keepdims=True, dtype=np.float64).astype(np.float32)
        else:
            w = own[:, :, None]
            mean = np.where(w, x, 0).sum(1, keepdims=True, dtype=np.float64) / np.maximum(w.sum(1, keepdims=True), 1)
            x = np.where(w, x - mean.astype(np.float32), np.float32(0))
        return x.reshape(len(pixels), -1)

    def queries(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Query rows ready for ``distances``: (centred rows, sums over each overlap before the
        training image's own field of view is taken out: float32 (n, 4, shifts), per channel
        the sum of q(x + d) over x with x, x + d in the mask, and the sum of squares)."""
        rows = self._check(pixels)
        x = torch.from_numpy(rows).view(len(rows), -1, 3)
        parts = [x[:, :, c] for c in range(3)] + [x.square().sum(2)]
        return rows, torch.stack([p @ self._here_t for p in parts], 1).numpy()

    def train_side(self, pixels: np.ndarray, own: np.ndarray | None) -> TrainSide:
        """Training rows with their own field of view (bool (n, mask pixels), None = all inside)."""
        n = len(pixels)
        own = np.ones((n, self.n_pixels), bool) if own is None else np.asarray(own, dtype=bool)
        if own.shape != (n, self.n_pixels):
            raise FundusError(f"own field-of-view rows must be ({n}, {self.n_pixels}), got {own.shape}")
        pixels = self._check(pixels, own)  # zero on the cut-off bands
        t = torch.from_numpy(pixels).view(n, -1, 3)
        ownf = torch.from_numpy(own.astype(np.float32))
        parts = [ownf] + [t[:, :, c] for c in range(3)] + [t.square().sum(2)]
        sums = torch.stack([p @ self._at_t for p in parts], 1).double().numpy()  # (n, 5, shifts)
        masked = t.reshape(n, -1).numpy()
        band_rows = np.flatnonzero(~own.all(1))
        spec = sfft.rfft2(self._images(masked), workers=1)
        band_spec = None
        if len(band_rows):
            band_spec = sfft.rfft2(self._images((~own[band_rows]).astype(np.float32), channels=1)[:, 0], workers=1)
        return TrainSide(spec=np.conj(spec), sums=sums, band_index=_index_of(band_rows, n),
                         band_spec=None if band_spec is None else np.conj(band_spec))

    # ------------------------------------------------------------------ pairs

    def distances(self, q_rows: np.ndarray, q_sums: np.ndarray, side: TrainSide, t_rows: np.ndarray) -> Registered:
        """Registered distance of each pair (query i, training row t_rows[i] of ``side``);
        q_rows and q_sums from ``queries``."""
        q_pixels = q_rows
        t_rows = np.asarray(t_rows, dtype=np.int64)
        p = len(q_pixels)
        if len(t_rows) != p or len(q_sums) != p:
            raise FundusError(f"{p} queries, {len(q_sums)} query sums and {len(t_rows)} training rows do not pair up")
        dist, flipped, shift = np.zeros(p), np.zeros(p, bool), np.zeros((p, 2), np.int64)
        for a in range(0, p, _PAIR_BATCH):
            sl = slice(a, min(a + _PAIR_BATCH, p))
            dist[sl], flipped[sl], shift[sl] = self._batch(q_pixels[sl], q_sums[sl], side, t_rows[sl])
        return Registered(distance=dist, flipped=flipped, shift=shift)

    def _correlate(self, f: np.ndarray) -> np.ndarray:
        """Inverse of summed spectra (..., n, n/2+1) -> values at the searched shifts (..., shifts)."""
        n = self.n_fft
        full = sfft.irfft2(f, s=(n, n), workers=1)
        return full.reshape(*full.shape[:-2], n * n)[..., self._flat_lag].astype(np.float64)

    def _batch(self, q_pixels: np.ndarray, q_sums: np.ndarray, side: TrainSide, t_rows: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        fq = sfft.rfft2(self._images(q_pixels), workers=1)  # (P, 3, n, n/2+1)
        both = np.stack([fq, np.conj(fq[:, :, self._rev]) * self._phase], 1)  # (P, 2, 3, ...): and the mirror's
        ft = side.spec[t_rows]  # conjugated
        cross = self._correlate(np.einsum("pfcyx,pcyx->pfyx", both, ft))  # (P, 2, shifts): sum of q(x + d) t(x)

        # The query's sums over each overlap: a mirror image's at the mirrored shift, less what
        # falls on the training image's cut-off bands.
        qs = q_sums.astype(np.float64)
        qs = np.stack([qs, qs[:, :, self._mirror]], 1)  # (P, 2, 4, shifts)
        band = side.band_index[t_rows]
        has = np.flatnonzero(band >= 0)
        if len(has):
            sq = sfft.rfft2(self._images((q_pixels[has].reshape(len(has), -1, 3) ** 2).sum(2), channels=1),
                            workers=1)
            sq_both = np.stack([sq, np.conj(sq[:, :, self._rev]) * self._phase], 1)  # (H, 2, 1, ...)
            per = np.concatenate([both[has], sq_both], 2)  # (H, 2, 4, n, n/2+1)
            qs[has] -= self._correlate(per * side.band_spec[band[has]][:, None, None])

        ts = side.sums[t_rows]  # (P, 5, shifts): count, per-channel sums, sum of squares
        count = ts[:, None, 0]  # values per channel in each overlap
        safe = np.maximum(count, 1.0)
        cov = cross - (qs[:, :, :3] * ts[:, None, 1:4]).sum(2) / safe
        var_q = qs[:, :, 3] - (qs[:, :, :3] ** 2).sum(2) / safe
        var_t = ts[:, None, 4] - (ts[:, None, 1:4] ** 2).sum(2) / safe
        ok = (count >= _MIN_OVERLAP * self.n_pixels) & (var_q > _MIN_VAR * 3 * count) & (var_t > _MIN_VAR * 3 * count)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(ok, cov / np.sqrt(np.maximum(var_q * var_t, 1e-300)), -np.inf)
        flat = r.reshape(len(r), -1)
        best = flat.argmax(1)  # the first best: no flip before flip, then shifts in order
        r_best = np.minimum(flat[np.arange(len(flat)), best], 1.0)
        k = best % r.shape[2]
        dist = np.where(np.isfinite(r_best), np.sqrt(np.maximum(2.0 - 2.0 * r_best, 0.0)), np.inf)
        return dist, best >= r.shape[2], np.stack([self.dy[k], self.dx[k]], 1)


@dataclass(frozen=True)
class TrainSide:
    """What the pairs need of a slice of training images (``Registrar.train_side``)."""

    spec: np.ndarray  # complex64 (n, 3, n_fft, n_fft/2+1): conjugated spectra, cut-off bands zeroed
    sums: np.ndarray  # float64 (n, 5, shifts): overlap count, per-channel sums, sum of squares
    band_index: np.ndarray  # int64 (n,): row in band_spec, -1 for a complete field of view
    band_spec: np.ndarray | None  # conjugated spectra of the cut-off bands inside the mask


def _index_of(rows: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, -1, np.int64)
    out[rows] = np.arange(len(rows))
    return out


def registered_nearest(registrar: Registrar, q_pixels: np.ndarray, candidates: np.ndarray,
                       train: Iterable[tuple[int, np.ndarray, np.ndarray | None]], *, k: int,
                       groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The k registered-nearest of each query's candidate training rows.

    q_pixels: (Q, 3 * mask pixels) the queries' masked pixel rows.
    candidates: int64 (Q, C) training rows per query, -1 for none (repeats are ignored).
    train: chunks (offset, masked pixel rows, own field of view rows or None) in order, read
        once: every pair is computed when its training row's chunk comes by, so memory does
        not grow with the training set.
    groups: duplicate-group id per training row: a query's k neighbours are k distinct groups
        (an image stored ten times counts once), each at its closest member.
    Returns (distance float64 (Q, k) ascending, inf where fewer; index int64 (Q, k), -1 there;
    flipped bool (Q, k); shift int64 (Q, k, 2)). Ties go to the lower training row.
    """
    cand = np.asarray(candidates, dtype=np.int64)
    n_q = len(cand)
    if len(q_pixels) != n_q:
        raise FundusError(f"{len(q_pixels)} queries but {n_q} candidate rows")
    # One entry per distinct (query, training row), ordered by training row.
    q_of = np.repeat(np.arange(n_q), cand.shape[1])
    t_of = cand.ravel()
    keep = t_of >= 0
    pairs = np.unique(np.stack([t_of[keep], q_of[keep]], 1), axis=0) if keep.any() else np.zeros((0, 2), np.int64)
    t_of, q_of = pairs[:, 0], pairs[:, 1]
    dist = np.full(len(pairs), np.inf)
    flip = np.zeros(len(pairs), bool)
    shift = np.zeros((len(pairs), 2), np.int64)
    q_pixels, q_sums = registrar.queries(q_pixels)

    def work(rows: np.ndarray, own: np.ndarray | None, offset: int, lo: int, hi: int) -> int:
        used, inverse = np.unique(t_of[lo:hi] - offset, return_inverse=True)
        side = registrar.train_side(rows[used], None if own is None else own[used])
        sel = q_of[lo:hi]
        r = registrar.distances(q_pixels[sel], q_sums[sel], side, inverse)
        dist[lo:hi], flip[lo:hi], shift[lo:hi] = r.distance, r.flipped, r.shift  # disjoint slices per task
        return hi - lo

    # Slices of training rows (their spectra take 64 KB each at 64 px) go to torch's number of
    # threads: the FFTs and large array operations release the GIL. Each op runs single-threaded
    # meanwhile, as in knn (torch's setting is process-wide, hence restored however we leave).
    workers = torch.get_num_threads()
    torch.set_num_threads(1)
    done = 0
    try:
        with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            for offset, rows, own in _ordered(train):
                tasks = []
                for a in range(0, len(rows), _TRAIN_BATCH):
                    lo, hi = np.searchsorted(t_of, [offset + a, offset + min(a + _TRAIN_BATCH, len(rows))])
                    if hi > lo:
                        tasks.append((rows, own, offset, int(lo), int(hi)))
                done += sum(pool.map(lambda t: work(*t), tasks))  # re-raises a worker's exception here
    finally:
        torch.set_num_threads(workers)
    if done != len(pairs):
        raise FundusError(f"training chunks ended before row {int(t_of.max())}")
    return _k_best(n_q, k, t_of=t_of, q_of=q_of, dist=dist, flip=flip, shift=shift, groups=groups)


def _k_best(n_q: int, k: int, *, t_of: np.ndarray, q_of: np.ndarray, dist: np.ndarray, flip: np.ndarray,
            shift: np.ndarray, groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per query, the k closest of its (training row, query) pairs, one per duplicate group when
    `groups` is given, in registered_nearest's return layout."""
    out_d = np.full((n_q, k), np.inf)
    out_i = np.full((n_q, k), -1, np.int64)
    out_f = np.zeros((n_q, k), bool)
    out_s = np.zeros((n_q, k, 2), np.int64)
    order = np.lexsort((t_of, dist, q_of))  # per query: by distance, then training row
    if groups is not None and len(order):
        g = np.asarray(groups, dtype=np.int64)[t_of[order]]
        _, first = np.unique(np.stack([q_of[order], g], 1), axis=0, return_index=True)
        order = order[np.sort(first)]
    q_sorted = q_of[order]
    starts = np.searchsorted(q_sorted, np.arange(n_q))
    rank = np.arange(len(order)) - starts[q_sorted]
    take = rank < k
    sel = order[take]
    qq, kk = q_sorted[take], rank[take]
    out_d[qq, kk], out_i[qq, kk], out_f[qq, kk], out_s[qq, kk] = dist[sel], t_of[sel], flip[sel], shift[sel]
    none = ~np.isfinite(out_d)
    out_i[none] = -1
    return out_d, out_i, out_f & ~none, np.where(none[..., None], 0, out_s)


def _ordered(train: Iterable[tuple[int, np.ndarray, np.ndarray | None]]
             ) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    expected = 0
    for offset, rows, own in train:
        if int(offset) != expected:
            raise FundusError(f"training chunks must follow each other: expected offset {expected}, got {offset}")
        expected += len(rows)
        yield int(offset), rows, own


# --------------------------------------------------------------------------- confirmation


def detail_correlation(query: np.ndarray, train: np.ndarray, *, shift: tuple[int, int], flipped: bool,
                       working_size: int) -> float:
    """Correlation of the fine detail (``data.quality.detail_signature``: high-passed grey
    disc centres at 64 px) of a query, mirrored if ``flipped`` and moved back by the
    registered ``shift``, and a training image: >= DUP_CORRELATION (0.9) for the same
    photograph after JPEG, resizing, noise or mild blur, 0.37-0.72 for look-alike phantoms."""
    import cv2

    def high_pass(img: np.ndarray) -> np.ndarray:
        g = cv2.resize(cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY).astype(np.float32), (64, 64),
                       interpolation=cv2.INTER_AREA)
        return g - cv2.GaussianBlur(g, (0, 0), 3)

    q = high_pass(query[:, ::-1] if flipped else query)
    t = high_pass(train)
    dy, dx = (int(round(v * 64 / working_size)) for v in shift)
    ys = slice(max(8, -dy), min(56, 64 - dy))
    xs = slice(max(8, -dx), min(56, 64 - dx))
    a = q[ys.start + dy:ys.stop + dy, xs.start + dx:xs.stop + dx].ravel()
    b = t[ys, xs].ravel()
    if a.size < 16:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else float("nan")
