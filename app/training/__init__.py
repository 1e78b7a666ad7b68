"""Training: hyperparameters, data validation and the LoRA trainer. Knows nothing of HTTP or the database."""
