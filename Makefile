# Two entry points: `make demo` and `make test`. Each creates .venv and installs the project.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch and torchvision are installed first, as a matching pair, so that the resolver never
# pairs a torch build with a torchvision built for another one.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test zoo thorough mutation mutmut lint docs bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/python -m krypton_ql.apps.demo --out demo-output

# One worker per core, each test file on one worker (its module fixtures — a served page, a
# local Ray — start once); tests/conftest.py gives each worker one torch thread.
test: $(BIN)/.installed
	$(BIN)/python -m pytest -q -n auto --dist loadfile

# Every torchvision classifier and a broad timm sample against the oracle (about 15 minutes).
zoo: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m zoo tests/test_model_zoo.py

# Random hypothesis draws with the example database and 10x the examples: run before resolving
# an issue that touches the compiler or the runtime.
thorough: $(BIN)/.installed
	HYPOTHESIS_PROFILE=thorough $(BIN)/python -m pytest -q

# Planted semantic mutations, one at a time, against the fast suite (a tool run, not CI).
mutation: $(BIN)/.installed
	$(BIN)/python -m benchmarks.mutation --json benchmarks/mutation.json

# mutmut over the box arithmetic, the rules, the gathers and the reference kernels (hours).
# One thread per worker: mutmut forks its workers, and OpenMP's pool does not survive a fork.
mutmut: $(BIN)/.installed
	$(BIN)/pip install -q -e '.[dev,mutation]'
	-HYPOTHESIS_PROFILE=mutation OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/mutmut run
	$(BIN)/python -m benchmarks.mutation --mutmut --json benchmarks/mutmut.json

# ruff, and mypy (strict on compiler/ and runtime/; its settings are in pyproject.toml)
lint: $(BIN)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

# The documentation site (docs/, mkdocs.yml) into site/, offline; --strict fails on a broken
# link or API-reference target. tests/test_docs.py builds it too, and runs every Python block.
docs: $(BIN)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(BIN)/.installed
	$(BIN)/python -m benchmarks.cpu_exact

clean:
	rm -rf $(VENV) demo-output mutants site
