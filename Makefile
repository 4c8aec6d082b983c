# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test bench showcase clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/nexus-gen demo --out runs/demo

# The CPU showcase (issue 17): a tiny Nexus-Gen trained on scenes, curves + report in runs/showcase.
MINUTES ?= 60
showcase: $(STAMP)
	$(VENV)/bin/nexus-gen showcase --out runs/showcase --minutes $(MINUTES)

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) bench/shards.py --quick
	$(PY) bench/scoring.py --quick
	$(PY) bench/build.py --quick
	$(PY) bench/convert_json.py --small 2 --big 20

clean:
	rm -rf runs/demo .pytest_cache
