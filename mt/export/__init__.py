"""Export: a checkpoint as a self-contained CTranslate2 model directory for fast CPU inference
(``scripts/export.py``), and the loading of such a directory."""
