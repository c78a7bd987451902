"""Static HTML run reports: training curves, embedding map, retrieval grid, evaluation tables
(one file per subject; ``page.write_report`` assembles the page)."""
from .curves import plot_curves, read_metrics_csv
from .embedding import embed_2d, plot_embedding
from .page import write_report
from .retrieval import plot_retrieval, retrieval_from_features, retrieval_grid
from .tables import evaluation_rows

__all__ = ["read_metrics_csv", "write_report", "retrieval_from_features", "retrieval_grid", "embed_2d",
           "plot_curves", "plot_embedding", "plot_retrieval", "evaluation_rows"]
