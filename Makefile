# medmtl: two commands on a fresh machine: `make demo` and `make test` (both set up what they need).
PYTHON ?= python3
VENV ?= .venv
# torch first, pinned and overridable: CPU build here; e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.medmtl-installed
PYTEST_ARGS ?=

.PHONY: venv demo test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q $(TORCH_SPEC)
	$(PY) -m pip install --disable-pip-version-check -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# `medmtl run BUNDLE WORKFLOW` = python -m monai.bundle run with the bundle's config layers (common + demo)
BUNDLE := $(VENV)/bin/medmtl run
DEMO_RUN := runs/demo
DEMO_EPOCHS ?= 40

# generate data -> validate it -> train (MLflow) -> evaluate on the test split (report) -> infer -> summary
demo: venv
	$(PY) -m medmtl.cli demo-data demo_data
	$(PY) -m medmtl.cli validate data_specs/demo.yaml --root demo_data/demo2d
	rm -rf $(DEMO_RUN)
	$(BUNDLE) demo train --epochs $(DEMO_EPOCHS) --output_dir $(DEMO_RUN) --tracking mlflow
	$(BUNDLE) demo evaluate --output_dir $(DEMO_RUN) --tracking mlflow
	$(BUNDLE) demo inference --output_dir $(DEMO_RUN) --infer_split all
	$(PY) -m medmtl.cli summary $(DEMO_RUN)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# pytest exit code 5 means "no tests collected": not a failure of the setup.
# Two pytest workers, each test file on one worker (its trained fixtures built once), one torch thread
# each (two workers on two cores; more threads would only contend); TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2
test: lint
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q --timeout=600 $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile) $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

# each script prints a table and writes benchmarks/results/<name>.json; full runs want a quiet machine
BENCH_SCRIPTS := multitask_vs_single resunet_cost data_pipeline sliding_window compute_efficiency engine_handlers host_allocator ddp_scaling compile_speed cpu_bfloat16
bench: venv
	@for name in $(BENCH_SCRIPTS); do echo "== benchmarks/$$name.py"; $(PY) benchmarks/$$name.py || exit 1; done

clean:
	rm -rf $(VENV) demo_data runs .pytest_cache .ruff_cache mlflow.db mlruns
