import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one OpenMP thread each (set before torch is imported), for
    # them and for the trainer and studio processes they start; two threads each would fight over the cores
    os.environ["OMP_NUM_THREADS"] = "1"


def pytest_collection_modifyitems(config, items):
    """Files with slow or browser tests first (each file's tests stay together and in order): `make test`'s
    two workers take files in this order, so the long ones start early and the short ones fill in at the end,
    instead of one worker idling while the other runs a long file it was handed last."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    browser = {item.path for item in items if item.get_closest_marker("browser")}
    items.sort(key=lambda item: (item.path not in slow, item.path not in browser))
