# The two commands of the README, plus generation helpers.
.PHONY: setup test crd lint cluster-binaries

setup:  ## create .venv with everything (operator + worker + test tools)
	bash scripts/setup.sh

test:  ## the whole test suite (builds the test control plane on first use, cached afterwards)
	bash tests/cluster/build.sh
	.venv/bin/python -P -m pytest

crd:  ## regenerate the CRD from the pydantic models
	.venv/bin/cpt crd -o manifests/crd/continuedpretrains.cpt.kubecpt.dev.yaml

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/lint-imports

cluster-binaries:  ## build kube-apiserver, etcd, kwok, helm, ... into the cache
	bash tests/cluster/build.sh
