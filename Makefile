# Two commands do everything on a fresh machine:
#   make story   # installs, then runs a 3-segment story on the bundled photo
#   make test    # installs, then runs the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; on a GPU host with torch already installed nothing is reinstalled.
TORCH_SPEC ?= torch==2.13.0
PHOTO ?= examples/chelsea.jpg
STORY ?= walk | run | fly

.PHONY: install test story clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

test: install
	$(BIN)/python -m pytest -q -ra

story: install
	$(BIN)/svibot story $(PHOTO) "$(STORY)"

clean:
	rm -rf $(VENV) svibot-data .pytest_cache
