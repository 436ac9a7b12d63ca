"""The Helm chart: rendered with Helm's own engine (helm-python-sdk), linted, and every
rendered manifest validated against the Kubernetes API schema (kubernetes-validate), with
the default values and with the production example."""

import kubernetes_validate
import helm_python as helm
import pytest
import yaml

from conftest import ROOT

CHART = ROOT / "charts" / "waveguide"
KUBERNETES_VERSION = kubernetes_validate.utils.latest_version()

VALUES = {
    "default": None,
    "production": yaml.safe_load((CHART / "ci" / "production-values.yaml").read_text()),
}

# Kinds from other projects' CRDs, which kubernetes-validate has no schema for; each is
# checked by hand in the tests below instead.
FOREIGN_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def render(values):
    chart = helm.Chart.load(CHART)
    chart.validate_schema(values)
    rendered = chart.render(values, name="waveguide", namespace="waveguide-system", is_install=True)
    documents = []
    for path, text in sorted(rendered.items()):
        if not path.endswith(".yaml"):
            continue
        documents.extend((path, d) for d in yaml.safe_load_all(text) if d)
    return documents


def by_kind(documents, kind):
    return [d for _, d in documents if d["kind"] == kind]


@pytest.mark.parametrize("values", VALUES, ids=list(VALUES))
def test_the_chart_lints_clean(values):
    report = helm.lint(CHART, VALUES[values], strict=True, namespace="waveguide-system")
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == []


@pytest.mark.parametrize("values", VALUES, ids=list(VALUES))
def test_every_rendered_manifest_is_valid(values):
    documents = render(VALUES[values])
    assert documents
    for path, document in documents:
        if (document["apiVersion"], document["kind"]) in FOREIGN_KINDS:
            continue
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{path}: {document['kind']} is invalid: {e}")


@pytest.mark.parametrize("values", VALUES, ids=list(VALUES))
def test_the_deployment_runs_locked_down_with_probes(values):
    (deployment,) = by_kind(render(VALUES[values]), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/var/lib/waveguide", "/tmp"} <= mounts


def test_production_runs_two_replicas_on_postgresql_with_a_service_monitor():
    documents = render(VALUES["production"])
    (deployment,) = by_kind(documents, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["WAVEGUIDE_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "waveguide-postgres", "key": "url"}
    (claim,) = by_kind(documents, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    (monitor,) = by_kind(documents, "ServiceMonitor")
    (service,) = by_kind(documents, "Service")
    # Checked by hand: kubernetes-validate has no schema for ServiceMonitor.
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert by_kind(render(VALUES["default"]), "ServiceMonitor") == []


def test_rbac_is_least_privilege():
    documents = render(None)
    (role,) = by_kind(documents, "ClusterRole")
    rules = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert rules[("", "secrets")] == {"get"}, "Secrets are read by name, never listed"
    assert "delete" not in rules[("waveguide.dev", "fleets")]
    assert all("*" not in verbs for verbs in rules.values())
    namespaced = render({"watchNamespace": "fleets"})
    assert by_kind(namespaced, "ClusterRole") == []
    (role,) = by_kind(namespaced, "Role")
    assert role["metadata"]["namespace"] == "fleets"


def test_settings_that_cannot_work_fail_the_install():
    with pytest.raises(helm.HelmError, match="needs PostgreSQL"):
        render({"replicaCount": 2})
    with pytest.raises(helm.HelmError, match="ReadWriteMany"):
        render({"replicaCount": 2, "postgresql": {"existingSecret": "db"}})
    with pytest.raises(helm.HelmError):
        render({"replicaCount": 0})
