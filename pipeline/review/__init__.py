"""Review: reads deposits, heatmaps and slide facts; produces what a person reads:
``report`` (report.json, summary.csv), ``exports`` (QuPath GeoJSON, ASAP XML,
CAMELYON16 CSV), ``overlay`` (the one heatmap-over-thumbnail renderer and
overlay.png), ``colors`` (one palette), ``reviews`` and ``review_import`` (a pathologist's
review of a slide: review.geojson / review.xml, the reviewed category) and ``viewer``
(static HTML report and the deep-zoom web viewer).
"""


# The package's public modules (imported on use, so importing the package stays cheap).
__all__ = [
    "cartoon",
    "colors",
    "exports",
    "overlay",
    "report",
    "review_files",
    "review_import",
    "reviews",
    "viewer",
]
