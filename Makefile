# Two commands on a fresh machine:  `make run` (install + start)  and  `make test`.
VENV   ?= .venv
PYTHON ?= python3
# The CPU build of torch first, so that nothing later pulls a multi-GB CUDA build.
# On a machine with a GPU, e.g. `make run TORCH=torch==2.13.0 TORCH_INDEX=...` as you need.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install run test test-fast lint format bench clean-data

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q "$(TORCH)"
	$(VENV)/bin/python -m pip install -q -e ".[test]" "$(TORCH)"
	touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/clara up

test: install
	./scripts/ensure-services.sh
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/python -m pytest

test-fast: install
	$(VENV)/bin/python -m pytest -m "not slow and not e2e"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install
	@cat bench/README.md

# Deletes ./.clara: the embedded database, indexes, models, adapters and logs.
clean-data:
	@test "$(CONFIRM)" = "yes" || { echo "this deletes ./.clara (all embedded data); run: make clean-data CONFIRM=yes"; exit 1; }
	rm -rf .clara
