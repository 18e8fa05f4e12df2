VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench docs clean

$(STAMP): pyproject.toml constraints-dev.txt
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints-dev.txt -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

# The main job: tokenizer -> tokens -> pretrain -> held-out bits per byte vs gzip/xz -> samples.
demo: $(STAMP)
	$(VENV)/bin/groundup run

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff format --check src tests benchmarks

# Every benchmark that can run here (docs/benchmarks.md): those the dev install runs, those that read the main
# job's runs/tiny (made first when missing), and those needing a peer or a second model when it is given.
BENCH := train_throughput tokenizer_train tokenize_throughput finetune_memory report_metrics eval_throughput \
         serve_decode serve_load serve_structured serve_fault scale_efficiency moe_ep probe_check decontam curate_recipes \
         moe_speed
LLAMA_BENCH ?=
LLAMA_PYTHON ?=
TARGET ?=

runs/tiny/summary.json: | $(STAMP)
	$(VENV)/bin/groundup run

bench: $(STAMP) runs/tiny/summary.json
	set -e; for b in $(BENCH); do echo "== benchmarks/$$b.py"; $(PY) benchmarks/$$b.py; done
	$(PY) benchmarks/plan_vs_run.py runs/tiny
	$(PY) benchmarks/quantize_quality.py --model runs/tiny/model --tokens runs/tiny/tokens
	$(PY) benchmarks/decode_llamacpp.py --model runs/tiny/model $(if $(LLAMA_BENCH),--llama-bench $(LLAMA_BENCH))
	@if $(PY) -c 'import datatrove' 2>/dev/null; then \
	  set -e; $(PY) benchmarks/curate_filters.py; $(PY) benchmarks/curate_minhash.py; \
	else echo "skipped curate_filters.py, curate_minhash.py: they compare with datatrove (pip install -e '.[bench]')"; fi
	@if [ -n "$(LLAMA_PYTHON)" ]; then $(PY) benchmarks/gguf_llamacpp_parity.py --llama-python $(LLAMA_PYTHON); \
	else echo "skipped gguf_llamacpp_parity.py: give LLAMA_PYTHON=<a python with llama-cpp-python>"; fi
	@if [ -n "$(TARGET)" ]; then $(PY) benchmarks/speculative_decode.py --target $(TARGET) --draft runs/tiny/model; \
	else echo "skipped speculative_decode.py: give TARGET=<a model dir on the tiny model's tokenizer>"; fi

# The docs site (mkdocs-material, API pages from docstrings) into site/; a warning fails the build.
DOCS_STAMP := $(VENV)/.docs-installed

$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(PIP) install -q -c constraints-dev.txt -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) runs site .pytest_cache
