# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make demo   - install what it needs, then run the main job on the example site
#   make test   - install what it needs, then run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || { apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[protocols,storage,server,dev]'
	touch $(STAMP)

demo: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH bash examples/demo.sh

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	bash tests/services.sh start
	$(BIN)/python -m pytest -n 2 -q; status=$$?; bash tests/services.sh stop; exit $$status

# every benchmark in bench/, PostgreSQL's figures on a throwaway server (tests/services.sh)
bench: $(STAMP)
	bash tests/services.sh start
	set -a; . tests/.services.env; set +a; \
	for script in compile hostile coalesce collect ingest verify query export scaleout; do \
	  $(BIN)/python bench/$$script.py || { status=$$?; break; }; echo; \
	done; bash tests/services.sh stop; exit $${status:-0}

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache .hypothesis demo-out central-out
