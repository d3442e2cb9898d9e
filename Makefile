# The front door. `make help` lists the targets and variables.
#
# Every stage runs as `python -m services.<stage> --config configs/$(EXP).yaml [section.key=value ...]`,
# either in its Compose service (RUNNER=docker) or in a local virtual environment built from the
# same lock files (RUNNER=local).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

EXP ?= citypersons
CONFIG = configs/$(EXP).yaml
ARGS ?=
FORCE ?=
OFFLINE ?=
VENV ?= .venv
PYTHON ?= python3

DOCKER ?= docker
COMPOSE ?= $(DOCKER) compose
# docker when a Docker engine answers, else local. Evaluated once, only when a stage needs it.
RUNNER ?= $(eval RUNNER := $(if $(shell $(DOCKER) info >/dev/null 2>&1 && echo up),docker,local))$(RUNNER)
RUNNER_WHY = $(if $(filter command line environment,$(origin RUNNER)),as asked,$(if $(filter docker,$(RUNNER)),a Docker engine answered,no Docker engine answered; stages run in $(VENV)/))

STAGE_ARGS = --config $(CONFIG) $(if $(FORCE),--force) $(ARGS)

# ------------------------------------------------------------------------------------ containers
# GPU=1: train and evaluate get the Compose GPU reservation; GPU=0: docker-compose.cpu.yml removes it.
# Default: 1 when the engine lists the NVIDIA runtime or the host has a working nvidia-smi.
GPU ?= $(eval GPU := $(if $(shell { $(DOCKER) info -f '{{json .Runtimes}}' 2>/dev/null | grep -q nvidia || nvidia-smi -L >/dev/null 2>&1; } && echo 1),1,0))$(GPU)
GPU_WHY = $(if $(filter command line environment,$(origin GPU)),GPU=$(GPU) as asked,$(if $(filter 1,$(GPU)),the NVIDIA runtime was found,no NVIDIA runtime found: the CPU override docker-compose.cpu.yml is used; for a GPU install the NVIDIA Container Toolkit (make doctor explains)))
COMPOSE_FILES = -f docker-compose.yml $(if $(filter 0,$(GPU)),-f docker-compose.cpu.yml)
HOST_UID ?= $(shell id -u)
HOST_GID ?= $(shell id -g)
TORCH_FLAVOUR ?=
LOCAL_WHEELS ?=
BASE_IMAGE ?=
EXTRA_CA ?=
# Each image is tagged with a digest of what goes into it (Dockerfile, lock file, code), so a stage
# never runs stale code: a changed input means a missing tag, and a missing image is built first.
IMAGE_INPUTS = $(sort $(shell find services configs -type f \( -name '*.py' -o -name '*.yaml' \) -not -path '*/__pycache__/*'))
LOCK_train = requirements/train$(if $(TORCH_FLAVOUR),-$(TORCH_FLAVOUR)).lock
LOCK_convert = requirements/convert.lock
IMAGE_TAG_train = $(eval IMAGE_TAG_train := $(shell cat Dockerfile.train $(LOCK_train) $(IMAGE_INPUTS) | sha256sum | cut -c1-12))$(IMAGE_TAG_train)
IMAGE_TAG_convert = $(eval IMAGE_TAG_convert := $(shell cat Dockerfile.convert $(LOCK_convert) $(IMAGE_INPUTS) | sha256sum | cut -c1-12))$(IMAGE_TAG_convert)
IMAGE_train = citypersons-rknn/train
IMAGE_convert = citypersons-rknn/convert
COMPOSE_ENV = HOST_UID=$(HOST_UID) HOST_GID=$(HOST_GID) TRAIN_TAG=$(IMAGE_TAG_train) CONVERT_TAG=$(IMAGE_TAG_convert) TB_PORT=$(TB_PORT)

# Build one image, $(1) = train or convert, tagged with its digest and :latest.
define build_image
	@echo "images: building $(IMAGE_$(1)):$(IMAGE_TAG_$(1)) from Dockerfile.$(1) and $(LOCK_$(1))"
	$(DOCKER) build -f Dockerfile.$(1) -t $(IMAGE_$(1)):$(IMAGE_TAG_$(1)) -t $(IMAGE_$(1)):latest \
	  $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) \
	  $(if $(and $(TORCH_FLAVOUR),$(filter train,$(1))),--build-arg TORCH_FLAVOUR=$(TORCH_FLAVOUR)) \
	  $(if $(LOCAL_WHEELS),--build-arg LOCAL_WHEELS=1) \
	  $(if $(EXTRA_CA),--secret id=extra_ca$(comma)src=$(EXTRA_CA)) .
endef
comma := ,

# The image a stage needs, built first when it is missing.
define ensure_image
$(DOCKER) info >/dev/null 2>&1 || { echo "RUNNER=docker: error: no Docker engine answers (\`$(DOCKER) info\` failed); \
start it (\`make doctor\` explains), or run the stages natively with RUNNER=local" >&2; exit 1; }; \
$(DOCKER) image inspect $(IMAGE_$(1)):$(IMAGE_TAG_$(1)) >/dev/null 2>&1 || { \
  echo "images: $(IMAGE_$(1)):$(IMAGE_TAG_$(1)) is not built yet; building it first"; \
  $(MAKE) --no-print-directory image-$(1) RUNNER=docker; };
endef

# Run one stage: $(1) python module under services/, $(2) Compose service, $(3) local environment
# (and image), $(4) extra arguments for that stage.
define run_stage
	@echo "runner: $(RUNNER) ($(RUNNER_WHY))$(if $(filter docker,$(RUNNER)),; $(GPU_WHY))"
	@$(if $(filter docker,$(RUNNER)),$(call ensure_image,$(3)) $(call compose_run,$(2),python -m services.$(1) $(STAGE_ARGS) $(4)),\
	  PIPELINE_RUNNER=local PIPELINE_OFFLINE=$(if $(OFFLINE),1,0) $(VENV)/$(3)/bin/python -m services.$(1) $(STAGE_ARGS) $(4))
endef

# `docker compose run --rm` against podman reports exit 0 for a failed container, so run without
# --rm, read the exit code from the container itself, show its last log lines if it failed, then
# remove it.
define compose_run
name="$(EXP)-$(1)-$$$$"; \
$(COMPOSE_ENV) $(COMPOSE) $(COMPOSE_FILES) run --name "$$name" \
  -e PIPELINE_OFFLINE=$(if $(OFFLINE),1,0) -e PIPELINE_GIT_COMMIT="$$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
  -e PIPELINE_GIT_DIRTY="$$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo 1 || echo 0)" \
  $(1) $(2) || true; \
code=$$($(DOCKER) inspect -f '{{.State.ExitCode}}' "$$name" 2>/dev/null) || { \
  echo "$(1): the container did not start; Compose's message is above (without an NVIDIA runtime use \
GPU=0, the CPU override; \`make doctor\` checks the setup)" >&2; exit 125; }; \
if [ "$$code" != 0 ]; then \
  echo "$(1): the container failed (exit $$code); its last log lines:" >&2; \
  $(DOCKER) logs "$$name" 2>&1 | tr '\r' '\n' | grep -v '^\s*$$' | tail -n 15 | sed 's/^/  | /' >&2 || true; fi; \
$(DOCKER) rm "$$name" >/dev/null 2>&1 || true; \
exit $$code
endef

# The local environment a stage needs, built on first use (RUNNER=local only).
needs = $(if $(filter local,$(RUNNER)),$(VENV)/$(1)/.installed)

.PHONY: help demo train dataset fit evaluate export rknn tensorboard setup test test-deps lock images image-train image-convert wheels doctor print-images

help: ## targets and variables
	@echo "Usage: make <target> [EXP=<name>] [ARGS=\"section.key=value ...\"] [RUNNER=docker|local] [FORCE=1]"
	@echo
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  %-12s %s\n", $$1, $$2}'
	@echo
	@echo "Variables:"
	@echo "  EXP=<name>    experiment: configs/<name>.yaml (default: citypersons; demo = the embedded mini run)"
	@echo "  ARGS=\"...\"    config overrides, e.g. ARGS=\"dataset.selection_fraction=0 dataset.seed=1\""
	@echo "  RUNNER=...    docker: each stage in its Compose service; local: in $(VENV)/train or $(VENV)/convert"
	@echo "                (default: docker when a Docker engine answers, else local)"
	@echo "  FORCE=1       rerun a stage even when its manifest says inputs and config are unchanged"
	@echo "  OFFLINE=1     never touch the network: missing downloads are listed, not fetched"
	@echo "  FRESH=1       fit: start training anew instead of resuming (the old run is moved aside)"
	@echo "  VENV=<dir>    where the local environments live (default: .venv)"

demo: ## the whole chain on the embedded demo data, on CPU (make train EXP=demo)
	@$(MAKE) --no-print-directory train EXP=demo RUNNER=$(RUNNER) RUNNER_WHY="$(RUNNER_WHY)"

train: ## the whole chain for EXP: dataset -> fit -> evaluate -> export -> rknn
	@for stage in dataset fit evaluate export rknn; do \
	  $(MAKE) --no-print-directory $$stage RUNNER=$(RUNNER) RUNNER_WHY="$(RUNNER_WHY)" \
	    $(if $(filter docker,$(RUNNER)),GPU=$(GPU) GPU_WHY="$(GPU_WHY)") || \
	  { echo "train: stopped at stage '$$stage' (its messages are above)" >&2; exit 1; }; done

dataset: $(call needs,train) ## CityPersons download (or demo) -> datasets/<name>/yolo/
	$(call run_stage,dataset,dataset,train)

fit: $(call needs,train) ## train YOLO on the dataset: resumes an unfinished run; FRESH=1 starts anew
	$(call run_stage,train,train,train,$(if $(FRESH),--fresh))

evaluate: $(call needs,train) ## COCO AP (pycocotools) and CityPersons miss rate for every model format so far
	$(call run_stage,evaluate,evaluate,train)

export: $(call needs,train) ## best.pt -> ONNX (standard and RKNN-friendly heads), then evaluate both
	$(call run_stage,export,export,train)
	$(call run_stage,evaluate,evaluate,train)

rknn: $(call needs,convert) ## rknn-head ONNX -> INT8 .rknn, quantization report, simulator evaluation, board bundle
	$(call run_stage,convert,convert,convert)

TB_PORT ?= 6006
tensorboard: $(call needs,train) ## serve runs/ on http://127.0.0.1:$(TB_PORT), during and after training
	@$(if $(filter docker,$(RUNNER)),$(call ensure_image,train) $(COMPOSE_ENV) $(COMPOSE) $(COMPOSE_FILES) up tensorboard,\
	  $(VENV)/train/bin/tensorboard --logdir runs --host 127.0.0.1 --port $(TB_PORT))

images: image-train image-convert ## build both images from the lock files (TORCH_FLAVOUR, LOCAL_WHEELS, EXTRA_CA, BASE_IMAGE)

image-train:
	$(call build_image,train)

image-convert:
	$(call build_image,convert)

wheels: ## download every locked package into requirements/wheels/ (then: make images LOCAL_WHEELS=1)
	@for lock in $(LOCK_train) $(LOCK_convert); do echo "wheels: $$lock -> requirements/wheels/"; \
	  $(PYTHON) -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
	    -d requirements/wheels -r $$lock; done

print-images:
	@echo "train=$(IMAGE_train):$(IMAGE_TAG_train) convert=$(IMAGE_convert):$(IMAGE_TAG_convert)"

doctor: ## check Docker, Compose, the NVIDIA runtime and driver, shm, disk and datasets, one line each
	@DOCKER="$(DOCKER)" COMPOSE="$(COMPOSE) $(COMPOSE_FILES)" GPU="$(GPU)" $(COMPOSE_ENV) \
	  $(PYTHON) -m services.doctor --config $(CONFIG) --image $(IMAGE_train):$(IMAGE_TAG_train)

setup: $(VENV)/train/.installed $(VENV)/convert/.installed ## build .venv/train and .venv/convert from the lock files

# pip installs exactly the lock file: every package pinned and hash-checked, nothing resolved at
# install time (--no-deps), then `pip check` proves the set is consistent. The stamp is written
# last, so an interrupted install is redone, not trusted.
$(VENV)/%/.installed: requirements/%.lock
	@echo "setup: building $(VENV)/$* from $<"
	@rm -f $@
	@test -x $(VENV)/$*/bin/python || $(PYTHON) -m venv $(VENV)/$*
	@$(VENV)/$*/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r $< \
	  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
	@$(VENV)/$*/bin/python -m pip check
	@touch $@

test: $(VENV)/train/.installed $(VENV)/convert/.installed $(VENV)/tools/.installed test-deps ## build what the tests need, then run the whole suite (it runs the demo chain, and the chain in containers)
	$(VENV)/train/bin/python -m pytest tests

SUDO = $(if $(filter 0,$(shell id -u)),,sudo)
apt_install = $(SUDO) apt-get install -y -qq $(1) >/dev/null 2>&1 || \
  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $(1) >/dev/null; }

# The TensorBoard dashboard is checked in a real headless browser: Debian's chromium. Without a
# Docker engine, the live container test runs the real Compose file against podman (Debian's).
test-deps:
	@command -v chromium >/dev/null || { echo "test: installing Debian's chromium for the dashboard test"; \
	  $(call apt_install,chromium); }
	@$(DOCKER) info >/dev/null 2>&1 || command -v podman >/dev/null || { \
	  echo "test: no Docker engine; installing Debian's podman for the live container test"; \
	  $(call apt_install,podman buildah fuse-overlayfs slirp4netns uidmap debootstrap runc); }

# Every requirements/*.in but the shared train-packages.in has its lock file.
LOCKED = $(filter-out train-packages,$(basename $(notdir $(wildcard requirements/*.in))))
lock: $(VENV)/tools/.installed ## recompile requirements/*.lock from requirements/*.in (needs PyPI)
	@for env in $(LOCKED); do echo "lock: requirements/$$env.lock"; \
	  $(VENV)/tools/bin/uv pip compile --quiet --generate-hashes --python-version 3.11 \
	    --python-platform x86_64-manylinux_2_28 --override requirements/overrides.txt \
	    -o requirements/$$env.lock requirements/$$env.in; done
