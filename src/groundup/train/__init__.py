"""Training: the named step (step.py), the loop around it (loop.py), its runtime (runtime.py), resume and
finished runs (resume.py), optimizer and schedule, checkpoints, loss-spike guard, and the pretraining stage."""
