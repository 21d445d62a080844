# Two entry points for a new machine: `make demo` and `make test`.
# Each creates .venv and installs requirements.txt the first time (and again when it changes).
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.requirements-installed

.PHONY: demo test

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -r requirements.txt
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/python -m pytest

demo: $(STAMP)
	PYTHON="$(abspath $(VENV))/bin/python" ./run.sh --demo
