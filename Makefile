# Two commands on a fresh machine:
#   make run    trains the quick CIFAR-10 config (creates the virtual environment on first use)
#   make test   runs the test suite on 8 fake CPU devices
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= train/configs/quick.py
WORKDIR ?= workdirs/quick
# The real CIFAR-10 archive beside the checkout when there is one, else TFDS.
SHARED_CIFAR10 := ../shared/data/cifar10_jpeg.tar.gz
DATA ?= $(if $(wildcard $(SHARED_CIFAR10)),folder:$(SHARED_CIFAR10),tfds:cifar10)
ARGS ?=

.PHONY: run test venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[train,test]"
	touch $@

run: venv
	$(PY) -m train --config $(CONFIG) --workdir $(WORKDIR) \
		--config.data.source=$(DATA) $(ARGS)
	$(PY) -m train.plot $(WORKDIR) -o $(WORKDIR)/curves.png

test: venv
	$(PY) -m pytest -q $(ARGS)

clean:
	rm -rf $(VENV) workdirs
