"""Per-sample scores computed from stored training dynamics (probabilities, correctness, features); numpy only."""
