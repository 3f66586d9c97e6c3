# Fresh machine -> working install. Everything lands in .venv (AAR data in .aar/).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch is pinned: an open-ended requirement pulls a multi-GB CUDA build.
TORCH  := torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install system-deps test test-fast demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "AAR needs Python 3.11, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[ml,claude,test]'
	touch $(STAMP)

# bubblewrap sandboxes untrusted method code (trainer). Installed when missing and we are root.
system-deps:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing bubblewrap"; apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null; \
	  else echo "warning: bwrap not found; sandboxed-execution tests will be skipped (apt-get install bubblewrap)"; fi; }

test: install system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

demo: install system-deps
	$(BIN)/aar up --session demo --max-wall 20
	$(BIN)/aar sessions
	$(BIN)/aar audit "SELECT type, count(*) AS n FROM events GROUP BY type ORDER BY type"

bench: install
	$(BIN)/python bench/bus.py

clean:
	rm -rf $(VENV) .aar .pytest_cache *.egg-info
