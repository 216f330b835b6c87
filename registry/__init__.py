"""The model registry: versioned, atomically pushed model directories on a local path or
gs://, with a CURRENT.json pointer."""
