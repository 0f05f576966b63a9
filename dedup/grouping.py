"""Near-duplicate groups: connected components of the match graph (what union-find computes),
one representative per group: the largest image, ties broken by the earliest fetch."""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Group label per item given undirected edges a[k] -- b[k]."""
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def representatives(labels: np.ndarray, area: np.ndarray, fetched: np.ndarray) -> np.ndarray:
    """For each item, the index of its group's representative (itself when alone).

    Order: larger area first, then earlier fetch time, then lower index (stable).
    """
    order = np.lexsort((np.arange(len(labels)), fetched, -area, labels))
    first = np.ones(len(order), bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    rep_of_label = np.empty(labels.max() + 1 if len(labels) else 0, np.int64)
    rep_of_label[labels[order][first]] = order[first]
    return rep_of_label[labels]
