"""Training: the one training entry point (component, CLI and TrainJob node), the config
with its feature spec resolved, the training data of a window, the TrainJob launcher."""
