"""Pooling over packed hidden states, and the output encodings built on the pooled vectors."""
