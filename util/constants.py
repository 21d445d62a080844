"""Numbers shared by training and evaluation."""

# Grey-level normalisation of chest X-rays used by MRM and ALTA.
XRAY_MEAN = 0.4785
XRAY_STD = 0.2834

# Token lengths of the text inputs.
REPORT_MAX_LENGTH = 128
