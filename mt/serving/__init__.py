"""Serving: an HTTP translation API that batches concurrent requests, and a web page that shows
the cross-attention (``scripts/serve.py``)."""
