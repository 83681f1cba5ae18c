"""The ablation's evaluation: metrics of samples against the real images, and the noise floor.

Used by ``benchmarks/ablation.py`` (see ``docs/benchmarks/ablation.md``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ablation_setup import Protocol
from common import atomic_json

from conprediff.evaluation import (
    FeatureExtractor,
    LeNetClassifier,
    class_balanced_frechet_distance,
    class_total_variation,
    frechet_distance_from_features,
    kernel_inception_distance,
    precision_recall,
)


class Evaluator:
    """Features of the real images once; FID, precision/recall (k=3) and KID of samples.

    With the default LeNet feature network (a classifier) it also gives the class-balanced FID
    and the total variation between the class proportions of the samples and the real images
    (both sets' classes predicted by the LeNet, from the features through its output layer).
    """

    def __init__(self, extractor: FeatureExtractor, real: torch.Tensor, kid_subset_size: int):
        self.extractor = extractor
        self.real = np.asarray(extractor.extract(real), dtype=np.float64)
        self.kid_subset_size = kid_subset_size
        net = getattr(extractor, "model_", None)
        self.head = net.head if isinstance(net, LeNetClassifier) else None
        self.real_classes = self.classes(self.real)

    def features(self, samples: torch.Tensor) -> np.ndarray:
        return np.asarray(self.extractor.extract(samples.clamp(-1, 1)), dtype=np.float64)

    def classes(self, features: np.ndarray) -> np.ndarray | None:
        """The LeNet's predicted classes from its features (None for other networks)."""
        if self.head is None:
            return None
        w = self.head.weight.detach().double().cpu().numpy()
        b = self.head.bias.detach().double().cpu().numpy()
        return np.argmax(np.asarray(features, dtype=np.float64) @ w.T + b, axis=1)

    def class_metrics(self, fake: np.ndarray) -> dict[str, float]:
        """``fid_class_balanced`` and ``class_tv`` of sample features (empty without classes)."""
        fake_classes = self.classes(fake)
        if fake_classes is None:
            return {}
        return {
            "fid_class_balanced": class_balanced_frechet_distance(
                self.real, self.real_classes, fake, fake_classes),
            "class_tv": class_total_variation(self.real_classes, fake_classes),
        }

    def __call__(self, fake: np.ndarray) -> dict[str, float]:
        """Metrics of the samples' features ``fake`` (N, D) against the real images'."""
        precision, recall = precision_recall(self.real, fake, k=3)
        kid = {}
        for key, standardize in (("kid", False), ("kid_standardized", True)):
            kid[key], kid[key + "_std"] = kernel_inception_distance(
                self.real, fake, n_subsets=100, subset_size=self.kid_subset_size, seed=0,
                standardize=standardize,
            )
        return {
            "fid": frechet_distance_from_features(self.real, fake),
            "precision": float(precision),
            "recall": float(recall),
            **{k: float(v) for k, v in kid.items()},
            **self.class_metrics(fake),
        }

    FLOOR_VERSION = 3

    def floor(self, n_samples: int, repeats: int = 40, groups: int = 5, seed: int = 0
              ) -> dict[str, Any]:
        """FIDs of two ideal models against the real set: where "no better" lies.

        With finitely many samples FID is above 0 even for a perfect model. Two references:

        * **generalising**: a model that samples the data distribution itself, independently of
          the real set. Disjoint random halves of the real set, at five sizes ``n`` up to half of
          it, give FIDs linear in ``1/n1 + 1/n2`` (the bias of the moment estimates); the fit
          evaluated at ``1/n_samples + 1/n_real`` is this model's mean FID against the full real
          set. Made ``groups`` times on independent sets of ``repeats`` splits per size.
        * **copy**: a model that samples the real (training) images themselves, with
          replacement. Measured directly: ``repeats x groups`` bootstrap draws of ``n_samples``
          real images against the full real set. Its FID is about ``1/n_samples`` on the same
          line, roughly half the generalising model's.

        A model trained on the real set can sit anywhere between the two; the copy level is
        typical, not a bound. Keys: ``fid``, ``fid_class_balanced`` (generalising) and
        ``copy_fid``, ``copy_fid_class_balanced``, each with ``_se``: the standard error of the
        mean over the ``groups`` (Monte-Carlo error of the procedure only, not the spread of
        one model's FID across sampling draws).
        """
        rng = np.random.default_rng(seed)
        n_real = len(self.real)
        sizes = np.linspace(n_real // 6, n_real // 2, 5).astype(int)
        at = 1.0 / n_samples + 1.0 / n_real
        estimates: dict[str, list[float]] = {
            "fid": [], "fid_class_balanced": [], "copy_fid": [], "copy_fid_class_balanced": []}
        balance = self.real_classes is not None
        for _ in range(groups):
            xs, plain, balanced = [], [], []
            for n in sizes:
                for _ in range(repeats):
                    perm = rng.permutation(n_real)
                    a, b = perm[:n], perm[n:2 * n]
                    xs.append(2.0 / n)
                    plain.append(frechet_distance_from_features(self.real[a], self.real[b]))
                    if balance:
                        balanced.append(class_balanced_frechet_distance(
                            self.real[a], self.real_classes[a], self.real[b],
                            self.real_classes[b]))
            for key, ys in (("fid", plain), ("fid_class_balanced", balanced)):
                if ys:
                    slope, intercept = np.polyfit(xs, ys, 1)
                    estimates[key].append(float(slope * at + intercept))
            copies, copies_balanced = [], []
            for _ in range(repeats):
                idx = rng.integers(0, n_real, n_samples)
                copies.append(frechet_distance_from_features(self.real[idx], self.real))
                if balance:
                    copies_balanced.append(class_balanced_frechet_distance(
                        self.real, self.real_classes, self.real[idx], self.real_classes[idx]))
            estimates["copy_fid"].append(float(np.mean(copies)))
            if copies_balanced:
                estimates["copy_fid_class_balanced"].append(float(np.mean(copies_balanced)))
        result: dict[str, Any] = {"version": self.FLOOR_VERSION, "n_samples": n_samples,
                                  "n_real": n_real, "halves": [int(n) for n in sizes],
                                  "repeats": repeats, "groups": groups}
        for key, values in estimates.items():
            if values:
                result[key] = float(np.mean(values))
                result[key + "_se"] = (float(np.std(values, ddof=1) / math.sqrt(len(values)))
                                       if len(values) > 1 else math.nan)
                result[key + "_groups"] = values
        return result


def backfill(out: Path, evaluate: Evaluator) -> int:
    """Add the class metrics to result files that lack them, from their saved features."""
    n = 0
    for path in sorted((out / "results").glob("*/seed*/step*.json")):
        r = json.loads(path.read_text())
        feats = path.with_suffix(".features.npy")
        if "fid_class_balanced" in r or not feats.is_file():
            continue
        extra = evaluate.class_metrics(np.load(feats).astype(np.float64))
        if extra:
            atomic_json(path, {**r, **extra})
            n += 1
    return n


def make_extractor(p: Protocol, images: torch.Tensor, labels: torch.Tensor,
                   cache_dir: str | None, device: str, verbose: int = 1) -> FeatureExtractor:
    dev = None if device == "auto" else device
    extractor = FeatureExtractor(cache_dir=cache_dir, epochs=p.classifier_epochs, device=dev,
                                 verbose=verbose).fit(images, labels)
    extractor.verbose = 0  # no bar per evaluation
    return extractor


def read_floor(out: Path, n_samples: int | None = None, n_real: int | None = None
               ) -> dict | None:
    """``out/floor.json`` when it is of the current format and, where given, was computed for
    ``n_samples`` generated against ``n_real`` real images; else None (to be recomputed)."""
    path = out / "floor.json"
    if not path.is_file():
        return None
    floor = json.loads(path.read_text())
    if floor.get("version") != Evaluator.FLOOR_VERSION:
        return None
    for key, want in (("n_samples", n_samples), ("n_real", n_real)):
        if want is not None and floor.get(key) != want:
            return None
    return floor
