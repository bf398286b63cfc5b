"""offline_training."""
