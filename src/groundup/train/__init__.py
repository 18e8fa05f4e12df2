"""Training: optimizer and schedule, checkpoints, the step loop, and the pretraining stage."""
