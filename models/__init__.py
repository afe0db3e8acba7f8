"""Training and serving of the model ensemble: dataset builder, tree models, registry of artifacts."""
