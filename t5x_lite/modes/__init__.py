"""The run modes (train, eval, infer, score, export) and the settings groups they take."""
