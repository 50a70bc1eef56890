"""`--features classifier`: the penultimate layer of the usefulness test's domain classifier.

The small CNN of `metrics.usefulness`, trained with its fixed, seeded recipe on the labelled
real training images, is what "features that matter for diagnosis" means here: its pooled
last convolutional layer puts images that the classifier finds alike close together.
Being trained on this data, it needs no download and sees fundus detail that ImageNet
features may not; being trained per dataset, its numbers compare only between reports with
the same fingerprint (recipe, training-data fingerprint, seed), which the report records.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from fundus_cli.metrics.usefulness import Recipe, _to_tensor, train_classifier


class ClassifierFeatures:
    """Pooled penultimate features (`SmallCNN.features`) of a classifier trained on (images, labels)."""

    name = "classifier"

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, n_classes: int, seed: int, recipe: Recipe,
                 data_fingerprint: str, batch: int = 256) -> None:
        self.recipe = recipe
        self.seed = seed
        self.batch = batch
        with torch.enable_grad():  # also when built inside a caller's no_grad block
            self.model = train_classifier(images, labels, n_classes=n_classes, seed=seed, recipe=recipe)
        self.dim = self.model.dim
        # What defines the network: the same recipe, data and seed give the same weights
        # (on one machine and thread count; the weights' own hash says whether they did).
        self.definition: dict[str, Any] = {"recipe": asdict(recipe), "train_fingerprint": data_fingerprint,
                                           "seed": seed, "n_classes": n_classes, "train_images": int(len(images))}
        self.fingerprint = hashlib.sha256(json.dumps(self.definition, sort_keys=True).encode()).hexdigest()
        h = hashlib.sha256()
        for k, v in self.model.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        self.weights_sha256 = h.hexdigest()

    @torch.no_grad()
    def __call__(self, images: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """uint8 (B, S, S, 3) -> float64 (B, dim). Outside `mask` (S, S) images are set to black,
        the surround the classifier was trained with."""
        if mask is not None:
            images = images * mask[None, :, :, None].astype(np.uint8)
        out = [self.model.features(_to_tensor(images[s : s + self.batch], self.recipe.size)).double().numpy()
               for s in range(0, len(images), self.batch)]
        return np.concatenate(out) if out else np.zeros((0, self.dim))
