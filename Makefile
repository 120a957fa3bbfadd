# Two commands do all set-up on a fresh machine (Python 3.11, pip, gcc):
#   make run    venv + pinned install + the main job: `dvc repro dvc.yaml` (the data stages of every
#               corpus, then train -> evaluate -> sample on the lm_corpora: Tiny Shakespeare)
#   make test   venv + pinned install + the test suite
# Offline: CORPUS_MIRROR=<folder with the corpus files> make run
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export PREFECT_HOME ?= $(CURDIR)/.prefect
CORPUS ?= tinyshakespeare

.PHONY: setup run test test-all bench mlflow-ui deploy clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[test]'
	touch $@

run: setup
	dvc repro dvc.yaml
	@echo; echo "== metrics"; dvc metrics show
	@echo; echo "== sample (samples/$(CORPUS).txt)"; head -c 1200 samples/$(CORPUS).txt; echo
	@echo; echo "Review the runs: make mlflow-ui  (the store: $$($(PY) -m pipeline.tracking))"

test: setup
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m ''

bench: setup
	$(PY) bench/data_stages.py
	$(PY) bench/train_step.py
	$(PY) bench/cell_speed.py
	$(PY) bench/sample_speed.py
	$(PY) bench/overheads.py

# the store the stages log to (MLFLOW_TRACKING_URI, else params.yaml's tracking.uri, else ./mlflow.db);
# the URI reaches the UI in its environment, not on its command line, where `ps` would show a password
MLFLOW_PORT ?= 5000
mlflow-ui: setup
	@uri=$$($(PY) -m pipeline.tracking --full) && case "$$uri" in \
	  http://*|https://*) echo "the runs are on the tracking server $$($(PY) -m pipeline.tracking): open it in a browser";; \
	  *) echo "store: $$($(PY) -m pipeline.tracking); open http://127.0.0.1:$(MLFLOW_PORT)"; \
	     MLFLOW_BACKEND_STORE_URI="$$uri" exec mlflow ui --host 127.0.0.1 --port $(MLFLOW_PORT);; esac

# prefect.yaml's deployments; its pull step takes the project folder from $$PWD, which `make -C`,
# `env -C` or a program's subprocess leave pointing elsewhere: set here to this folder
deploy: setup
	PWD=$(CURDIR) prefect --no-prompt deploy --all

clean:
	rm -rf data/raw data/tokens data/onehot models metrics samples
