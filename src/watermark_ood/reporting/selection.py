"""Old import path of the ranking report, which now sits with the detector file it describes."""

from watermark_ood.detection.selection_report import write_selection_report

__all__ = ["write_selection_report"]
