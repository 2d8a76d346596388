import os

import pytest

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


@pytest.hookimpl(trylast=True)  # after the slowest-durations list, so it is at the end of a CI log
def pytest_terminal_summary(terminalreporter):
    """Seconds per test file (setup + call + teardown of its tests) and, under xdist, the worker that ran it:
    the suite's time is the busier worker's, so this is what to read when the suite gets slow."""
    per_file: dict[str, list] = {}
    for reports in terminalreporter.stats.values():
        for r in reports:
            if getattr(r, "when", None) in ("setup", "call", "teardown") and getattr(r, "nodeid", ""):
                f = per_file.setdefault(r.nodeid.split("::")[0], [0.0, None])
                f[0] += r.duration
                f[1] = getattr(getattr(getattr(r, "node", None), "gateway", None), "id", None)  # xdist's gw0, gw1
    if not per_file:
        return
    by_worker: dict[str, float] = {}
    for seconds, worker in per_file.values():
        by_worker[str(worker or "main")] = by_worker.get(str(worker or "main"), 0.0) + seconds
    terminalreporter.write_sep("=", "seconds per test file (top 25) and per worker")
    for path, (seconds, worker) in sorted(per_file.items(), key=lambda kv: -kv[1][0])[:25]:
        terminalreporter.write_line(f"{seconds:8.1f}s  {worker or 'main':>4}  {path}")
    terminalreporter.write_line("  ".join(f"{w}: {s / 60:.1f} min" for w, s in sorted(by_worker.items())))
