# Two entry points that work on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-test
DEMO_STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# The [test] extra pins torch==2.13.0 (a CPU build) for the HF parity tests.
$(STAMP): setup.py | $(PY)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# The demo needs no test extras (no torch).
$(DEMO_STAMP): setup.py | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $(DEMO_STAMP)

install: $(STAMP)

# Train on the held-in instruction families (evaluated at the end), then score the held-out
# families with the eval run mode. Running it again resumes: nothing is trained twice.
DEMO_GIN := --gin_file=recipes/quickstart.gin --gin.MODEL_DIR=experiments/demo
demo: $(DEMO_STAMP)
	$(PY) -m t5x_lite.main $(DEMO_GIN)
	$(PY) -m t5x_lite.main --run_mode=eval $(DEMO_GIN) --gin_file=runs/eval.gin \
	  --gin.MIXTURE_OR_TASK_NAME=embedded_instructions_heldout_zeroshot \
	  "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 32}"

# pytest exits 5 when it collects no test: that is a failure here too.
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile -q --durations=30 tests

clean:
	rm -rf $(VENV) experiments
