"""Detection: one registry of every score, the Detector (fit, calibrate, predict, save), conformal calibration, export.

Importing it registers every detector kind (:mod:`.kinds`, one module each), so the registry is whole wherever it is
read."""

from watermark_ood.detection import kinds  # noqa: F401 - registers the kinds
