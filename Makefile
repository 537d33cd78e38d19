# Two commands on a fresh machine:
#   make run    trains the quick CIFAR-10 config (creates the virtual environment on first use)
#   make test   runs the test suite on 8 fake CPU devices
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
# The accelerator kit's wheels: what a lent machine (Python 3.12, manylinux
# x86-64, no network) lacks of the harness's dependencies; see the README,
# "Measured on an accelerator".
WHEELHOUSE ?= .whl
WHEEL_PYTHON ?= 3.12
WHEEL_PLATFORM ?= manylinux2014_x86_64
WHEELS ?= ml-collections PyYAML tensorboardX

.PHONY: run test chaos venv wheelhouse clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PIP_FLAGS) -e ".[train,test]"
	touch $@

run: venv
	$(PY) -m train --config $(CONFIG) --workdir $(WORKDIR) \
		--config.data.source=$(DATA) $(ARGS)
	$(PY) -m train.plot $(WORKDIR) -o $(WORKDIR)/curves.png

test: venv
	$(PY) -m pytest -q $(ARGS)

chaos: venv
	$(PY) bench/chaos.py $(ARGS)

wheelhouse:
	$(PYTHON) -m pip download -q --only-binary=:all: --no-deps \
		--python-version $(WHEEL_PYTHON) --implementation cp \
		--platform $(WHEEL_PLATFORM) -d $(WHEELHOUSE) $(WHEELS)
	@ls -l $(WHEELHOUSE)

clean:
	rm -rf $(VENV) workdirs
