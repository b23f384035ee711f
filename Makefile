# ddpm-book: a fresh clone needs only `make book` or `make test`.
#
#   make book    create .venv if missing, install, build the book into _build/html
#   make test    same install, then lint, unit tests, notebooks (nbval), strict book build
#   make lint    ruff
#   make bench   benchmarks (own venv, see bench/README.md)
#   make chapter NB=book/NN_name.ipynb   build one chapter on its own, strictly
#   make clean   remove _build
#
# Override on the command line, e.g. `make test PYTHON=python3.12 VENV=/tmp/venv`.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= book,test,dev
# strict: every Sphinx warning (and every unresolved reference, -n) fails the build
BOOKFLAGS ?= -W -n --keep-going

BIN := $(VENV)/bin
PY := $(BIN)/python
# re-install only when pyproject.toml changes (or the venv is new)
STAMP := $(VENV)/.ddpm-installed

# never wait for input (CI, no stdin); take kernels and config from the venv
export PIP_NO_INPUT := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export JUPYTER_PREFER_ENV_PATH := 1

.PHONY: help install book test lint unit nbval book-strict bench chapter clean distclean

help:
	@sed -n '3,9p' Makefile | sed 's/^# \{0,1\}//'

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
	  { echo "error: $(PYTHON) is not Python >= 3.10 (or not found); run e.g. make PYTHON=python3.11 ..."; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	@start=$$(date +%s); \
	$(PY) -m pip install --upgrade pip; \
	$(PY) -m pip install -e ".[$(EXTRAS)]"; \
	touch $@; \
	echo "[time] install: $$(( $$(date +%s) - start ))s"

install: $(STAMP)

# Incremental: only changed pages are re-read (and their notebooks re-executed).
# `make clean book` for a build from scratch; `make test` always rebuilds everything.
book: $(STAMP)
	$(BIN)/jupyter-book build . --path-output . $(BOOKFLAGS)
	@test -f _build/html/index.html
	@echo "book: $(CURDIR)/_build/html/index.html"

test: $(STAMP)
	@total=$$(date +%s); \
	for phase in lint unit nbval book-strict; do \
	  start=$$(date +%s); \
	  if ! $(MAKE) --no-print-directory $$phase; then \
	    echo "[time] $$phase: FAILED after $$(( $$(date +%s) - start ))s"; exit 1; \
	  fi; \
	  echo "[time] $$phase: $$(( $$(date +%s) - start ))s"; \
	done; \
	echo "[time] test total (without install): $$(( $$(date +%s) - total ))s"

lint: $(STAMP)
	$(BIN)/ruff check .

unit: $(STAMP)
	$(PY) -m pytest -ra tests

# Notebooks are stored without outputs, so nbval only checks that they run (checks are asserts).
# pytest exits 5 when it collects nothing: fine while book/ has no notebooks.
nbval: $(STAMP)
	@rc=0; $(PY) -m pytest -ra --nbval-lax book/ || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "nbval: no notebooks under book/ yet"; rc=0; fi; \
	exit $$rc

book-strict: $(STAMP)
	$(BIN)/jupyter-book build . --path-output . --all $(BOOKFLAGS)
	@test -f _build/html/index.html

bench:
	bash bench/run.sh

# Build one chapter on its own, strictly: make chapter NB=book/01_forward_process.ipynb
CHAPTER_DIR ?= /tmp/ddpm-chapter
chapter: $(STAMP)
	@test -n "$(NB)" || { echo "usage: make chapter NB=book/NN_name.ipynb"; exit 2; }
	rm -rf $(CHAPTER_DIR) && mkdir -p $(CHAPTER_DIR)
	cp -r _config.yml book $(CHAPTER_DIR)/
	printf 'format: jb-book\nroot: book/intro\nchapters:\n  - file: %s\n  - file: book/references\n' \
	  "$(basename $(NB))" > $(CHAPTER_DIR)/_toc.yml
	$(BIN)/jupyter-book build $(CHAPTER_DIR) --path-output $(CHAPTER_DIR) --all $(BOOKFLAGS)

clean:
	rm -rf _build

distclean: clean
	rm -rf $(VENV) .pytest_cache .ruff_cache
