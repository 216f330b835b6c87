"""The DeepFM library: config, feature encoding, modules, model, training, metrics, export."""
