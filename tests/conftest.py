import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one OpenMP thread each (set before torch is imported), for
    # them and for the trainer and studio processes they start; two threads each would fight over the cores
    os.environ["OMP_NUM_THREADS"] = "1"
