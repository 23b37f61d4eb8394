# maketrigger: wheels, container images and their end-to-end tests.
#
#   make wheels        dependency wheels in wheels/, so the images build without the index
#   make base-image    the stand-in base image (debootstrap), for machines without a registry
#   make images        both images, tagged as docker-compose.yml names them
#   make e2e           the end-to-end tests against real containers (tests/e2e)
#   make test          the whole test suite: unit, integration and e2e
#   make bench         the benchmark beside webhook, docker exec and docker run (bench/)
#
# Every variable can be set on the command line or in the environment, e.g.
#   make images WORKER_BASE_IMAGE=rocker/verse:4.4 TRIGGER_WORKER_IMAGE=my-worker:4.4

PYTHON ?= python3
DOCKER ?= docker
export DOCKER

BASE_IMAGE ?= python:3.12-slim-bookworm
WORKER_BASE_IMAGE ?= $(BASE_IMAGE)
STANDIN_IMAGE ?= maketrigger-base:bookworm
export STANDIN_IMAGE
TRIGGER_SERVER_IMAGE ?= maketrigger-server:local
TRIGGER_WORKER_IMAGE ?= maketrigger-worker:local

.PHONY: help wheels base-image images e2e test

help:
	@sed -n 's/^#   make /make /p' $(firstword $(MAKEFILE_LIST))

# The project and every dependency (with the controller's `docker` extra) as wheels, plus
# setuptools to build the project from source inside the image. They must suit the image's
# Python: the stand-in base has Debian's 3.11.
wheels:
	$(PYTHON) -m pip wheel --quiet '.[docker]' 'setuptools>=61' -w wheels/

base-image:
	scripts/base-image.sh build $(STANDIN_IMAGE)

# A base image that can be neither found nor pulled is replaced by the stand-in.
images: wheels
	base=$$(scripts/base-image.sh resolve $(BASE_IMAGE)) && \
	$(DOCKER) build -f Dockerfile.server --build-arg BASE_IMAGE=$$base \
		-t $(TRIGGER_SERVER_IMAGE) .
	base=$$(scripts/base-image.sh resolve $(WORKER_BASE_IMAGE)) && \
	$(DOCKER) build -f Dockerfile.worker --build-arg BASE_IMAGE=$$base \
		-t $(TRIGGER_WORKER_IMAGE) .

e2e:
	$(PYTHON) -m pytest -v tests/e2e

# pytest exits 5 when it collected nothing: for this suite that is a failure, said plainly.
test:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	$(PYTHON) -m pytest -ra; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

# The benchmark of issue 7 (bench/): maketrigger against adnanh/webhook, docker exec and docker
# run, in one run; results in bench/results/<timestamp>/. `make bench BENCH_ARGS=--quick` is a
# smoke run. bench/deps.sh installs hey, webhook and matplotlib and starts Docker if needed.
# The host rows run on $(PYTHON): see bench/README.md, 'Which Python'.
BENCH_ARGS ?=
.PHONY: bench
bench:
	bench/deps.sh
	$(PYTHON) bench/run.py $(BENCH_ARGS)
