"""Hugging Face folder -> Nano folder conversion (``nanofmt.converters``). Needs transformers."""
