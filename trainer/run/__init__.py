"""A run on disk: the run folder's files and events, resumable state, atomic writes, fault points."""
