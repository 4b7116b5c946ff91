# mlpipe: `make` lists the targets.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.DEFAULT_GOAL := help
.PHONY: help install demo data serve predict app docker-bases docker-build docker-run test test-fast lint format bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed ## create .venv and install the project with its dev extras

FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
MODEL ?= models:/fashion_mnist_classifier@champion
PORT ?= 5000
ENV_MANAGER ?= local

data: ## make sure Fashion-MNIST is on disk (Debian's dataset-fashion-mnist, when apt may)
	@if [ ! -f $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null \
	    && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist \
	    || echo "apt could not install dataset-fashion-mnist; get_data will download instead"; \
	fi

demo: install data ## set up and run the whole pipeline on Fashion-MNIST (MLPIPE_VERBOSE=1: all logs)
	MLFLOW_LOGGING_LEVEL=$(if $(filter 1,$(MLPIPE_VERBOSE)),INFO,WARNING) \
	    $(BIN)/mlflow run . --env-manager local
	@echo
	@echo "Browse the runs:  $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db"
	@echo "Serve the model:  make serve        (in another terminal)"
	@echo "Ask it:           make predict IMAGE=path/to/drawing.png"

serve: install ## serve the registered model (MODEL=..., PORT=..., ENV_MANAGER=local|uv|virtualenv)
	$(BIN)/mlflow models serve -m $(MODEL) -p $(PORT) --env-manager $(ENV_MANAGER)

predict: install ## send IMAGE=drawing.png to the served model
	@test -n "$(IMAGE)" || { echo "usage: make predict IMAGE=drawing.png"; exit 2; }
	$(BIN)/python png_to_pandas.py $(IMAGE) --output example.json --port $(PORT)
	curl -s -X POST -H "Content-Type: application/json" --data @example.json \
	    http://127.0.0.1:$(PORT)/invocations; echo

APP_PORT ?= 7860
SERVER_URL ?= http://127.0.0.1:$(PORT)

$(VENV)/.app-installed: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[app]"
	touch $@

app: $(VENV)/.app-installed ## a page to draw on that asks the served model (SERVER_URL=..., APP_PORT=...)
	$(BIN)/python app.py --server-url $(SERVER_URL) --port $(APP_PORT)

test: install ## run the whole test suite (unit, integration, slow)
	$(BIN)/python -m pytest -v -ra --durations=20

test-fast: install ## run the unit tests only
	$(BIN)/python -m pytest -m "not integration and not slow" -q

lint: install ## check style with ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install ## reformat with ruff
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

IMAGE_TAG ?= mlpipe-gpu:latest
STAGE ?= train
ARGS ?=
# The project folder is mounted at the same path inside the container, so the default
# sqlite store and its absolute artifact paths work on both sides, and the checkout's own code
# and git commit are the ones that run and are recorded; a tracking server on the host is
# reached through the host network. GPU flags come from docker/gpu-flags.sh (GPUS=all|none).
DOCKER_RUN = docker run --rm $$(bash docker/gpu-flags.sh) --network host \
	--user "$$(id -u):$$(id -g)" -v "$(CURDIR):$(CURDIR)" -w "$(CURDIR)" -e HOME=/tmp \
	-e MLFLOW_TRACKING_URI="$${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}" \
	-e MLFLOW_TRACKING_USERNAME -e MLFLOW_TRACKING_PASSWORD -e MLPIPE_SOURCE_COMMIT= \
	-e MLPIPE_DOCKER_IMAGE=$(IMAGE_TAG) \
	-e MLPIPE_DOCKER_IMAGE_ID="$$(docker image inspect --format '{{.Id}}' $(IMAGE_TAG))"

docker-bases: ## build local stand-ins for base images this machine cannot pull (docker/bases.sh)
	bash docker/bases.sh

docker-build: ## build the training image (GPU when the host has one, else CPU)
	docker build --network host --build-arg SOURCE_COMMIT="$$(git rev-parse HEAD 2>/dev/null)" \
	    -t $(IMAGE_TAG) .

docker-run: ## run a stage in the training image: make docker-run STAGE=train ARGS="-P data=runs:/..."
	@docker image inspect $(IMAGE_TAG) >/dev/null 2>&1 \
	    || { echo "docker-run: no image $(IMAGE_TAG) here; build it first: make docker-build" >&2; exit 1; }
	$(DOCKER_RUN) $(IMAGE_TAG) mlflow run . -e $(STAGE) $(ARGS) --env-manager local

# The sweep whose best trial the sweep accuracy is measured on (the README's example).
BENCH_SWEEP ?= epochs=30;augment=true;early_stopping_patience=0;conv_filters=48,64

bench: install data ## run the benchmarks (~2 hours); tables on screen, JSON in bench/results/
	$(BIN)/python bench/serving.py
	$(BIN)/python bench/learning_curve.py
	$(BIN)/python bench/training.py --pipeline --sweep "$(BENCH_SWEEP)"
	$(BIN)/python bench/scale.py --vgg16
	$(BIN)/python bench/team.py
	$(BIN)/python bench/docker.py

clean: ## remove the local tracking store and caches (keeps .venv)
	rm -rf mlruns mlartifacts mlflow.db .pytest_cache .ruff_cache
