# Two commands: `make run` installs and starts the studio, `make test` installs and runs every test.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.py
	python3 scripts/install.py --venv $(VENV)
	touch $(STAMP)

run: install
	$(PY) app.py $(ARGS)

# two test processes (one test file each at a time): the suite waits on trainer and studio processes and
# Chromium for much of its time, and two cores are what CI has; more workers need more memory (SD1.5-size tests)
# Files go out in the order collected (tests/conftest.py puts the long ones first), not xdist's by test count.
TEST_WORKERS ?= 2

test: install
	$(PY) scripts/ensure_chromium.py
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

test-fast: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False $(PY) -m pytest -m "not slow and not browser" $(PYTEST_ARGS)

bench: install
	HF_HUB_OFFLINE=1 $(PY) bench/bench_cpu.py

clean:
	rm -rf $(VENV) .pytest_cache
