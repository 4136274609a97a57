# The two commands of the README, plus generation helpers.
.PHONY: setup test crd manifests lint cluster-binaries

setup:  ## create .venv with everything (operator + worker + test tools)
	bash scripts/setup.sh

test:  ## the whole test suite (builds the test control plane on first use, cached afterwards)
	bash tests/cluster/build.sh
	.venv/bin/python -P -m pytest

crd:  ## regenerate the CRD from the pydantic models
	.venv/bin/cpt crd -o manifests/crd/continuedpretrains.cpt.kubecpt.dev.yaml
	.venv/bin/cpt crd --helm -o charts/kubecpt/templates/crd.yaml

manifests: crd  ## regenerate the kustomize base (manifests/base/operator.yaml) from the Helm chart
	.venv/bin/python -P scripts/render_kustomize_base.py --helm "$$(bash tests/cluster/build.sh | tail -1)/helm"

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/lint-imports

cluster-binaries:  ## build kube-apiserver, etcd, kwok, helm, ... into the cache
	bash tests/cluster/build.sh
