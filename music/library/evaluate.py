"""How well a library's embeddings separate its genres."""

from __future__ import annotations

import numpy as np

__all__ = ["knn_genre_accuracy", "precision_at_k"]


def knn_genre_accuracy(embeddings: np.ndarray, genres, *, k: int = 5, folds: int = 5, seed: int = 0) -> dict:
    """Stratified k-fold accuracy of a cosine k-NN genre classifier.

    Each clip's genre is predicted by majority vote of its ``k`` nearest
    neighbours (cosine) among the *other folds'* clips (scikit-learn's
    ``KNeighborsClassifier(metric="cosine")`` inside ``StratifiedKFold(shuffle,
    random_state=seed)``). Chance is 1 / n_genres.

    Returns
    -------
    dict with ``accuracy`` (mean over folds), ``fold_accuracies``, ``chance``, ``n``.
    """
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k (neighbours voting on a genre) must be a whole number of 1 or more, got {k!r}")
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ValueError(f"folds must be a whole number of 2 or more, got {folds!r}")
    y = np.asarray(genres)
    x = np.asarray(embeddings, dtype=np.float64)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_score(KNeighborsClassifier(n_neighbors=k, metric="cosine"), x, y, cv=cv)
    return {"accuracy": float(scores.mean()), "fold_accuracies": [float(s) for s in scores],
            "chance": 1.0 / len(np.unique(y)), "n": int(len(y)), "k": k, "folds": folds}


def precision_at_k(relevant: list[bool], k: int = 10) -> float:
    """Fraction of the first ``k`` results that are relevant."""
    return float(np.mean(relevant[:k])) if len(relevant) else 0.0
