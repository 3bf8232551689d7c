"""Training: datasets and sampling, losses, the training loop, fine-tuning from corrections."""
