"""Adapter file formats: kohya/LyCORIS keys, Civitai metadata, hashes, checks."""
