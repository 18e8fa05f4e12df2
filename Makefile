VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

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

bench: $(STAMP)
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/tokenize_throughput.py
	$(PY) benchmarks/finetune_memory.py
	$(PY) benchmarks/report_metrics.py

clean:
	rm -rf $(VENV) runs .pytest_cache
