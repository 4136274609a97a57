"""Preprocessing: read, filter, decontaminate, tokenize (parallel workers), then dedup and pack (reduce)."""
