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
COMPOSE ?= docker compose

# docker when a Docker engine answers, else local. Evaluated once, only when a stage needs it.
RUNNER ?= $(eval RUNNER := $(if $(shell docker info >/dev/null 2>&1 && echo up),docker,local))$(RUNNER)
RUNNER_WHY = $(if $(filter command line environment,$(origin RUNNER)),as asked,$(if $(filter docker,$(RUNNER)),a Docker engine answered,no Docker engine answered; stages run in $(VENV)/))

STAGE_ARGS = --config $(CONFIG) $(if $(FORCE),--force) $(ARGS)

# Run one stage: $(1) python module under services/, $(2) Compose service, $(3) local environment,
# $(4) extra arguments for that stage.
define run_stage
	@echo "runner: $(RUNNER) ($(RUNNER_WHY))"
	@$(if $(filter docker,$(RUNNER)),$(call compose_run,$(2),python -m services.$(1) $(STAGE_ARGS) $(4)),\
	  PIPELINE_RUNNER=local PIPELINE_OFFLINE=$(if $(OFFLINE),1,0) $(VENV)/$(3)/bin/python -m services.$(1) $(STAGE_ARGS) $(4))
endef

# `docker compose run --rm` against podman reports exit 0 for a failed container, so run without
# --rm, read the exit code from the container itself, then remove it.
define compose_run
name="$(EXP)-$(1)-$$$$"; \
HOST_UID=$$(id -u) HOST_GID=$$(id -g) $(COMPOSE) run --name "$$name" \
  -e PIPELINE_RUNNER=docker -e PIPELINE_OFFLINE=$(if $(OFFLINE),1,0) -e PIPELINE_GIT_COMMIT="$$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
  -e PIPELINE_GIT_DIRTY="$$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo 1 || echo 0)" \
  $(1) $(2) || true; \
code=$$(docker inspect -f '{{.State.ExitCode}}' "$$name" 2>/dev/null || echo 1); \
docker rm "$$name" >/dev/null 2>&1 || true; \
exit $$code
endef

# The local environment a stage needs, built on first use (RUNNER=local only).
needs = $(if $(filter local,$(RUNNER)),$(VENV)/$(1)/.installed)

.PHONY: help demo train dataset fit evaluate export rknn tensorboard setup test test-deps lock

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
	  $(MAKE) --no-print-directory $$stage RUNNER=$(RUNNER) RUNNER_WHY="$(RUNNER_WHY)" || \
	  { echo "train: stopped at stage '$$stage' (see its message above)" >&2; exit 1; }; done

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
	@$(if $(filter docker,$(RUNNER)),HOST_UID=$$(id -u) HOST_GID=$$(id -g) $(COMPOSE) up tensorboard,\
	  $(VENV)/train/bin/tensorboard --logdir runs --host 127.0.0.1 --port $(TB_PORT))

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

test: $(VENV)/train/.installed $(VENV)/convert/.installed test-deps ## build what the tests need, then run the whole suite (it runs the demo chain)
	$(VENV)/train/bin/python -m pytest tests

# The TensorBoard dashboard is checked in a real headless browser: Debian's chromium.
test-deps:
	@command -v chromium >/dev/null || { echo "test: installing Debian's chromium for the dashboard test"; \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq chromium >/dev/null 2>&1 || \
	  { $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
	    $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq chromium >/dev/null; }; }

lock: ## recompile requirements/*.lock from requirements/*.in (needs PyPI)
	@test -x $(VENV)/tools/bin/uv || { $(PYTHON) -m venv $(VENV)/tools && $(VENV)/tools/bin/pip install --quiet uv; }
	@for env in train convert; do \
	  $(VENV)/tools/bin/uv pip compile --quiet --generate-hashes --python-version 3.11 \
	    --python-platform x86_64-manylinux_2_28 -o requirements/$$env.lock requirements/$$env.in; done
