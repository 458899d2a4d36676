"""How well a network's embeddings cluster by class (numpy, on the host).

Paper 002 (PDM) argues that its training widens the margin between the classes' clusters in the
embedding space, and backs the t-SNE pictures of its Figure 2 with the Davies-Bouldin index of
each model variant (lower is better: tight clusters far apart), because t-SNE's dimensionality
reduction can mislead.
"""

from __future__ import annotations

import numpy as np


def davies_bouldin_index(embeddings, labels) -> float:
  """Davies & Bouldin (1979): the mean over clusters i of max_{j != i} (s_i + s_j) / d_ij, with
  s_i the mean Euclidean distance of cluster i's points to its centroid and d_ij the Euclidean
  distance between the centroids. Clusters are the distinct labels.

  Two distinct clusters with the same centroid are inseparable: their ratio is infinite here
  (sklearn's davies_bouldin_score instead treats them as infinitely far apart, ratio 0).
  """
  z = np.asarray(embeddings, np.float64)
  z = z.reshape(z.shape[0], -1)
  labels = np.asarray(labels)
  if labels.shape != (z.shape[0],):
    raise ValueError(f"labels must have shape ({z.shape[0]},), one per embedding; got "
                     f"{labels.shape}.")
  classes, index = np.unique(labels, return_inverse=True)
  if len(classes) < 2:
    raise ValueError(f"the Davies-Bouldin index needs at least 2 clusters; got {len(classes)}.")
  one_hot = np.eye(len(classes))[index]  # (N, C)
  counts = one_hot.sum(0)
  centroids = (one_hot.T @ z) / counts[:, None]
  spread = (one_hot.T @ np.linalg.norm(z - centroids[index], axis=1)) / counts  # s_i
  distance = np.linalg.norm(centroids[:, None] - centroids[None], axis=-1)
  with np.errstate(divide="ignore", invalid="ignore"):
    ratio = np.where(distance > 0, (spread[:, None] + spread[None]) / distance, np.inf)
  np.fill_diagonal(ratio, -np.inf)  # j != i
  return float(np.mean(ratio.max(axis=1)))
