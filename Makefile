# Two commands do everything on a fresh machine:
#   make story   # installs, then runs a 3-segment story on the bundled photo
#   make test    # installs, then runs the test suite (what CI runs, with `make test-lowest`)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first, and only when none is importable in the venv (a GPU host keeps its own).
# Where no CPU wheel is configured, pip takes PyPI's Linux x86_64 wheel: a CUDA build (~0.5 GB plus
# ~3 GB of CUDA libraries) that also runs on the CPU. TORCH_INDEX="--index-url <a CPU wheel index>"
# picks a CPU-only build instead.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PHOTO ?= examples/chelsea.jpg
STORY ?= walk | run | fly
# pytest-xdist workers for `make test` (0: one process). The suite waits more than it computes (process
# start-ups, long polls ending, leases running out), so on CI's 2 cores 4 workers finish sooner than 2
# (about 150 s against 195 s, measured on a 2-core machine).
PYTEST_WORKERS ?= 4
# `make test-lowest` runs the suite on the oldest Python that pyproject.toml accepts, in its own venv,
# with every other runtime dependency at its lower bound (torch: the newest release allowed here).
LOWEST_PYTHON ?= python3.10
LOWEST_TORCH_SPEC ?= torch==2.14.1
LOWEST_CONSTRAINTS := .venv-lowest.constraints.txt
# That second pass runs the whole suite too: the engine references check diffusers' pipeline at its lower
# bound, and both passes with their installs take about 7.5 minutes on CI's 2 cores. Extra pytest arguments
# (a path list, `-k`) go in LOWEST_PYTEST_ARGS.
LOWEST_PYTEST_ARGS ?=

# The bots' message catalogues (bot/locale; see "Languages" in the README). `make messages` extracts the
# texts of bot/ and storage/ into the template and merges it into each language's .po; after translating,
# `make catalogues` compiles the .mo files the bots load. `make language LOCALE=es` starts a new one.
LOCALE_DIR := bot/locale
BABEL_KEYWORDS := -k _n:1,2 -k _p:1c,2 -k locale_str
LOCALE ?=

.PHONY: install test test-lowest story clean messages catalogues language

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(BIN)/pip install -q $(PIP_INSTALL_ARGS) -e ".[dev]"
	touch $@

test: install
	$(BIN)/python -m pytest -q -ra -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

test-lowest:
	$(LOWEST_PYTHON) .ci/lowest_constraints.py pyproject.toml > $(LOWEST_CONSTRAINTS)
	$(MAKE) test PYTHON="$(LOWEST_PYTHON)" VENV=.venv-lowest TORCH_SPEC="$(LOWEST_TORCH_SPEC)" \
		PIP_INSTALL_ARGS="-c $(LOWEST_CONSTRAINTS)" PYTEST_ARGS="$(LOWEST_PYTEST_ARGS)"

messages: install
	$(BIN)/pybabel extract $(BABEL_KEYWORDS) --no-location --project svibot --copyright-holder "svibot contributors" \
		-o $(LOCALE_DIR)/svibot.pot bot storage
	$(BIN)/pybabel update --ignore-obsolete -i $(LOCALE_DIR)/svibot.pot -d $(LOCALE_DIR) -D svibot

catalogues: install
	$(BIN)/pybabel compile --statistics -d $(LOCALE_DIR) -D svibot

language: install
	@test -n "$(LOCALE)" || { echo "say which language: make language LOCALE=es"; exit 2; }
	$(BIN)/pybabel init -i $(LOCALE_DIR)/svibot.pot -d $(LOCALE_DIR) -D svibot -l $(LOCALE)

story: install
	$(BIN)/svibot story $(PHOTO) "$(STORY)"

clean:
	rm -rf $(VENV) .venv-lowest $(LOWEST_CONSTRAINTS) svibot-data .pytest_cache
