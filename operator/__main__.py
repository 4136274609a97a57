"""`python -P -m cpt_operator [--namespace NS]`: run the operator standalone (one replica, no peering)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    import kopf

    parser = argparse.ArgumentParser(prog="python -m cpt_operator")
    parser.add_argument("--namespace", help="watch only this namespace (default: all)")
    parser.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="liveness endpoint")
    args = parser.parse_args(argv)
    import cpt_operator.handlers  # noqa: F401  (registers the handlers)
    from cpt_operator.cache import register_resource_flavors
    from cpt_operator.kube import Kube

    kopf.configure(verbose=False)
    register_resource_flavors(Kube.connect())  # before kopf.run: kopf creates its indices as it starts
    kopf.run(
        standalone=True,
        liveness_endpoint=args.liveness,
        namespaces=[args.namespace] if args.namespace else (),
        clusterwide=not args.namespace,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
