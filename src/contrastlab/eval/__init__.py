"""Evaluation protocols on frozen features: weighted kNN and linear probe."""
from .knn import knn_accuracy, knn_eval, knn_predict, topk_neighbours
from .linear import LinearClassifier, linear_probe, long_tail_groups, per_class_accuracy

__all__ = [
    "topk_neighbours",
    "knn_predict",
    "knn_eval",
    "knn_accuracy",
    "linear_probe",
    "LinearClassifier",
    "per_class_accuracy",
    "long_tail_groups",
]
