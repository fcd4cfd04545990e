"""Validation-only tuning of the retriever with Ray Tune (`rayrec tune`)."""
