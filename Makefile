# Two commands on a fresh machine:
#   make run    trains the quick CIFAR-10 config (creates the virtual environment on first use)
#   make test   runs the test suite on 8 fake CPU devices
# `make package` builds and checks the sdist and the wheel of optax_lcam (CI too),
# and the documentation:
#   make docs   builds the site into docs/_build/html (warnings are errors),
#               executing its pages and the notebook, then runs its doctests
#   make fuzz   runs the optimizer's property tests long (FUZZ_EXAMPLES per
#               property) and prints, per property, the cases it counted
#   make chaos  kills, damages and resumes tiny runs (bench/chaos.py)
# The harness (models/, train/) runs from this checkout; the virtual environment
# holds the optimizer package (editable) and the extras the harness needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# e.g. PIP_FLAGS='--upgrade --upgrade-strategy eager' for the newest of everything
PIP_FLAGS ?=
CONFIG ?= train/configs/quick.py
WORKDIR ?= workdirs/quick
# The real CIFAR-10 archive beside the checkout when there is one, else TFDS.
SHARED_CIFAR10 := ../shared/data/cifar10_jpeg.tar.gz
DATA ?= $(if $(wildcard $(SHARED_CIFAR10)),folder:$(SHARED_CIFAR10),tfds:cifar10)
ARGS ?=
# Where `make package` builds the sdist and the wheel (emptied first).
DIST ?= dist
# The accelerator kit's wheels: what a GPU host without network access
# (Python 3.12, manylinux x86-64) often lacks of the harness's dependencies;
# see docs/benchmarks.md, "Measured on an accelerator".
WHEELHOUSE ?= .whl
WHEEL_PYTHON ?= 3.12
WHEEL_PLATFORM ?= manylinux2014_x86_64
WHEELS ?= ml-collections PyYAML tensorboardX

# Where `make docs` builds: the HTML site, and the doctest builder's report.
DOCS_BUILD ?= docs/_build

FUZZ_EXAMPLES ?= 20000

.PHONY: run test campaigns package docs fuzz chaos venv wheelhouse clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PIP_FLAGS) -e ".[train,test]"
	touch $@

run: venv
	$(PY) -m train --config $(CONFIG) --workdir $(WORKDIR) \
		--config.data.source=$(DATA) $(ARGS)
	$(PY) -m study.plot $(WORKDIR) -o $(WORKDIR)/curves.png

test: venv
	$(PY) -m pytest -q $(ARGS)

# The short versions of the campaigns: the optimizer's property tests (200
# examples each), a short chaos run and random command-line overrides.
campaigns: venv
	$(PY) -m pytest -q -m campaign $(ARGS)

# The release check: an sdist and a wheel, both passed by twine, the wheel
# holding optax_lcam, py.typed and the license only, mypy on optax_lcam, and
# ruff on the whole repository (its rules: pyproject.toml).
package: $(VENV)/.release
	rm -rf $(DIST)
	$(PY) -m build -q --outdir $(DIST) .
	$(PY) -m twine check --strict $(DIST)/*
	$(PY) .ci/check_dist.py $(DIST)
	$(PY) -m mypy
	$(PY) -m ruff check .

$(VENV)/.release: $(VENV)/.installed
	$(PY) -m pip install -q $(PIP_FLAGS) -e ".[release]"
	touch $@

$(VENV)/.installed-docs: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -q $(PIP_FLAGS) -e ".[train,test,docs]"
	touch $@

# -E: a fresh build every time, so every page and the notebook run again.
# The doctest builder reads the pages without executing them a second time.
docs: $(VENV)/.installed-docs
	$(PY) -m sphinx -W --keep-going -E -q -b html docs $(DOCS_BUILD)/html
	$(PY) -m sphinx -W --keep-going -E -q -b doctest \
		-D nb_execution_mode=off docs $(DOCS_BUILD)/doctest
	@echo "The site: $(DOCS_BUILD)/html/index.html"

fuzz: venv
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -s \
		tests/test_properties.py -m campaign --hypothesis-profile=fuzz \
		--hypothesis-show-statistics $(ARGS)

chaos: venv
	$(PY) bench/chaos.py $(ARGS)

wheelhouse:
	$(PYTHON) -m pip download -q --only-binary=:all: --no-deps \
		--python-version $(WHEEL_PYTHON) --implementation cp \
		--platform $(WHEEL_PLATFORM) -d $(WHEELHOUSE) $(WHEELS)
	@ls -l $(WHEELHOUSE)

clean:
	rm -rf $(VENV) workdirs
