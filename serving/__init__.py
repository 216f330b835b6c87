"""Online serving: the model server (scores, features from the online store, model
versions from the registry)."""
