"""Auto-captioning: `python -m trainer caption DATASET_DIR`, a process of its own like training.

settings.py the captioner's options (one schema: CLI flags and the studio's panel are generated from it);
events.py its job folder's events (started / progress / error / finished) and their fold; source.py where a
model comes from (a local folder, or the hub when online); tagger.py the WD14-style ONNX tagger; natural.py
the BLIP sentence captioner; job.py the loop over the images that writes the caption files.
"""
