"""The torch runtime for Nano files (``nanofmt.loaders``). Needs torch."""
