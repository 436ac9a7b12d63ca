"""Renders the Helm chart with Helm's own engine (helm-python-sdk), as `helm install` would.

Usage: render_chart.py RELEASE NAMESPACE VALUES_JSON

Prints every manifest the chart installs, CRDs first (from the chart's crds/ directory,
which Helm creates before the templates), as one multi-document YAML stream. The
Kubernetes end-to-end tests apply exactly this to a real API server.
"""

import json
import pathlib
import sys

import helm_python as helm

CHART = pathlib.Path(__file__).resolve().parents[3] / "charts" / "waveguide"


def main():
    release, namespace, values = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    chart = helm.Chart.load(CHART)
    chart.validate_schema(values)
    rendered = chart.render(values, name=release, namespace=namespace, is_install=True)
    documents = [path.read_text() for path in sorted((CHART / "crds").glob("*.yaml"))]
    documents += [text for path, text in sorted(rendered.items()) if path.endswith(".yaml") and text.strip()]
    print("\n---\n".join(documents))


if __name__ == "__main__":
    main()
