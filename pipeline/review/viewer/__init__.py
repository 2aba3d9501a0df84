"""Review: reads a batch output folder, produces a static HTML report and a deep-zoom viewer.

``static_report.write_static_report`` writes one self-contained HTML file;
``app.create_app`` builds the Flask app behind ``micromet view``. Both only read the batch,
except that ``micromet view --review`` saves pathologist reviews (``review_edits``).
"""


# The package's public modules (imported on use, so importing the package stays cheap).
__all__ = [
    "app",
    "batch_index",
    "patients",
    "render",
    "review_edits",
    "static_report",
    "templating",
    "tiles",
]
