"""Detection: one registry of every score, the Detector (fit, calibrate, predict, save), conformal calibration, export."""
