"""The shared training loop, device choice, data loading and metrics."""
