"""Static HTML run reports (curves, embedding map, retrieval grid)."""
from .report import (
    embed_2d,
    plot_curves,
    plot_embedding,
    plot_retrieval,
    read_metrics_csv,
    retrieval_from_features,
    retrieval_grid,
    write_report,
)

__all__ = [
    "write_report",
    "read_metrics_csv",
    "retrieval_from_features",
    "retrieval_grid",
    "embed_2d",
    "plot_curves",
    "plot_embedding",
    "plot_retrieval",
]
