"""Sufficient statistics of a set of feature vectors — n, mean and centred scatter matrix — computed in Spark and
merged with Chan et al.'s pairwise update (on the executors, in a tree), so a PCA refit can add new rows without
re-reading the old ones."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # the statistics themselves need no Spark (fruits.batch.local_fit computes them without a JVM)
    from pyspark.sql import DataFrame


@dataclass(frozen=True)
class Moments:
    """n rows, their mean (d,) and centred scatter matrix Σ(x-mean)(x-mean)ᵀ (d, d), all float64."""

    n: int
    mean: np.ndarray
    scatter: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> "Moments":
        return cls(0, np.zeros(dim), np.zeros((dim, dim)))

    @classmethod
    def of_rows(cls, rows: np.ndarray) -> "Moments":
        """Exact two-pass statistics of a (n, d) block."""
        rows = np.asarray(rows, dtype=np.float64)
        if len(rows) == 0:
            return cls.empty(rows.shape[1])
        mean = rows.mean(axis=0)
        centred = rows - mean
        return cls(len(rows), mean, centred.T @ centred)

    def merge(self, other: "Moments") -> "Moments":
        """The statistics of both sets (Chan, Golub & LeVeque's pairwise update; no E[xxᵀ]−E[x]E[x]ᵀ cancellation)."""
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        scatter = self.scatter + other.scatter + np.outer(delta, delta) * (self.n * other.n / n)
        return Moments(n, mean, scatter)

    def principal_components(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvectors of the covariance as columns (d, d), and their explained-variance ratios (d,), both ordered
        by decreasing variance, as Spark ML's PCA defines them."""
        eigenvalues, eigenvectors = np.linalg.eigh(self.scatter / max(self.n - 1, 1))
        order = np.argsort(eigenvalues)[::-1]
        eigenvalues = np.clip(eigenvalues[order], 0, None)
        return eigenvectors[:, order], eigenvalues / eigenvalues.sum()

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, n=np.array(self.n), mean=self.mean, scatter=self.scatter)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Moments":
        arrays = np.load(io.BytesIO(data))
        return cls(int(arrays["n"]), arrays["mean"], arrays["scatter"])


# Partial statistics merged per task at each level of the tree reduction in moments_of.
FAN_IN = 8


def _merge_blobs(a: bytes, b: bytes) -> bytes:
    return Moments.from_bytes(a).merge(Moments.from_bytes(b)).to_bytes()


def moments_of(features: DataFrame, column: str = "features", fan_in: int = FAN_IN) -> Moments:
    """The statistics of an array<float> column, computed per partition and merged on the executors.

    Each partition's statistics (a 1280x1280 float64 scatter: ~13 MB) are merged ``fan_in`` at a time, level after
    level, by tasks (a tree reduction over shuffles of these blocks), until one is left: the driver receives a single
    block whatever the number of partitions (``spark.driver.maxResultSize`` stays out of reach).
    """

    def per_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        total = None
        for batch in batches:
            if len(batch):
                block = Moments.of_rows(np.stack(batch[column].to_numpy()))
                total = block if total is None else total.merge(block)
        if total is not None:
            yield pd.DataFrame({"moments": [total.to_bytes()]})

    blocks = features.select(column).mapInPandas(per_partition, "moments binary").rdd.map(lambda row: bytes(row[0]))
    partitions = blocks.getNumPartitions()
    while partitions > 1:
        partitions = -(-partitions // fan_in)
        blocks = (
            blocks.mapPartitionsWithIndex(lambda index, rows, n=fan_in: ((index // n, row) for row in rows))
            .reduceByKey(_merge_blobs, partitions)
            .values()
        )
    result = blocks.collect()  # at most one block
    if not result:
        raise ValueError("no rows to compute moments of")
    return Moments.from_bytes(result[0])
