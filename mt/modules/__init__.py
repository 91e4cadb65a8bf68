"""Transformer building blocks: attention, embeddings, layers."""
