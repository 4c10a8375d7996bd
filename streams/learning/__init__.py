"""Learning from feedback: the trainer, its store, the model registry and the workers' model follower."""
