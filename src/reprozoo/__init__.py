"""reprozoo: reproducible SST-5 fine-tuning of a zoo of BERT-like models."""

__version__ = "0.1.0"
