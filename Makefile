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

test: install
	$(PY) scripts/ensure_chromium.py
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False $(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False $(PY) -m pytest -m "not slow and not browser" $(PYTEST_ARGS)

bench: install
	HF_HUB_OFFLINE=1 $(PY) bench/bench_cpu.py

clean:
	rm -rf $(VENV) .pytest_cache
