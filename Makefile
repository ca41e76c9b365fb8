# Two commands for a fresh machine:
#   make demo   set up .venv, then roll out the shipped policy on seed 0 and write a video
#   make test   set up .venv, then run the fast test suite
# lerobot (its own environment: Python >= 3.12, torch < 2.12):
#   make lerobot        set up .venv-lerobot (lerobot 0.6.1 with its dataset/diffusion/pusht/training extras,
#                       torch 2.11, and this package editable)
#   make test-lerobot   run tests/lerobot in it, offline
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export OMP_NUM_THREADS ?= 1
export SDL_VIDEODRIVER ?= dummy

LEROBOT_PYTHON ?= $(shell pyenv root 2>/dev/null)/versions/3.12.1/bin/python
LVENV  := .venv-lerobot
LBIN   := $(LVENV)/bin

.PHONY: demo test test-slow lint clean-venv lerobot test-lerobot

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first (a wheel on this machine's disk), so nothing pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,vision]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/python scripts/rollout.py --sampler pcm --seed 0 --video outputs/rollout_seed0.mp4

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

test-slow: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m slow

lint: $(BIN)/.installed
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)

$(LBIN)/.installed: pyproject.toml
	@test -x "$(LEROBOT_PYTHON)" || { echo "error: no Python 3.12 at $(LEROBOT_PYTHON); install it \
	(pyenv install 3.12.1) or pass LEROBOT_PYTHON=/path/to/python3.12" >&2; exit 2; }
	$(LEROBOT_PYTHON) -m venv $(LVENV)
	$(LBIN)/pip install -q --upgrade pip
	$(LBIN)/pip install -q "lerobot[dataset,diffusion,pusht,training]==0.6.1" "torch==2.11.*" "torchvision==0.26.*"
	$(LBIN)/pip install -q -e '.[dev]'
	touch $@

lerobot: $(LBIN)/.installed

test-lerobot: $(LBIN)/.installed
	HF_HUB_OFFLINE=1 $(LBIN)/python -m pytest -q tests/lerobot
