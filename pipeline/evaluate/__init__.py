"""Evaluation: lm-eval benchmarks on base and milestone models, held-out perplexity, result summaries."""
