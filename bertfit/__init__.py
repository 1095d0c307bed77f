"""bertfit: fast, reproducible fine-tuning of BERT-family encoders with honest reports."""

__version__ = "0.1.0"
