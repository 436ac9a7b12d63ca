"""The Helm chart: rendered with Helm's own engine (helm-python-sdk), linted, and every
rendered manifest validated against the Kubernetes API schema (kubernetes-validate), with
the default values and with the production example."""

import json
import re
import subprocess

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


def containerfile_runtime():
    """The Containerfile's runtime (last) stage, continuation lines joined: its USER,
    ENTRYPOINT, CMD, ENV, WORKDIR and EXPOSE instructions."""
    text = re.sub(r"\\\n", " ", (ROOT / "Containerfile").read_text())
    stage = re.split(r"^FROM ", text, flags=re.M)[-1]
    out = {}
    for line in stage.splitlines():
        instruction, _, rest = line.partition(" ")
        if instruction in {"USER", "ENTRYPOINT", "CMD", "ENV", "WORKDIR", "EXPOSE"}:
            out[instruction] = rest.strip()
    return out


def test_the_default_image_is_the_one_the_containerfile_builds():
    runtime = containerfile_runtime()
    (deployment,) = by_kind(render(None), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # The user: the chart's securityContext runs what the image's USER is.
    uid, gid = runtime["USER"].split(":")
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (int(uid), int(gid))
    assert pod["securityContext"]["fsGroup"] == int(gid)
    # The command: the image's entrypoint with the chart's arguments.
    assert json.loads(runtime["ENTRYPOINT"]) == ["/usr/local/bin/waveguide"]
    assert container["args"] == json.loads(runtime["CMD"]) == ["controller"]
    # The data directory and the ports.
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert runtime["ENV"] == f"WAVEGUIDE_DATA={env['WAVEGUIDE_DATA']}"
    assert runtime["WORKDIR"] == env["WAVEGUIDE_DATA"]
    assert any(m["mountPath"] == env["WAVEGUIDE_DATA"] for m in container["volumeMounts"])
    ports = {p["containerPort"] for p in container["ports"]}
    assert ports == {int(p) for p in runtime["EXPOSE"].split()}
    # The name: what scripts/image (a local buildah build) tags, at the chart's appVersion.
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert container["image"] == f"localhost/waveguide:{chart['appVersion']}"
    image_script = (ROOT / "scripts" / "image").read_text()
    assert 'tag="localhost/waveguide:$(sed' in image_script


def test_the_chart_states_the_minimum_kubernetes_version():
    # The version the Kubernetes end-to-end tests run against (scripts/kube-apiserver), and
    # the one docs/kubernetes.md states.
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == ">=1.20.0-0"
    assert "kube_version=v1.20.2" in (ROOT / "scripts" / "kube-apiserver").read_text()
    assert "Kubernetes **1.20 or later**" in (ROOT / "docs" / "kubernetes.md").read_text()


def test_the_containerfile_build_stage_builds_the_locked_dependencies():
    """The build stage's commands, checked here where its base image cannot be pulled:
    its Rust is new enough for every locked dependency, and `--locked` holds (Cargo.lock
    matches the manifests)."""
    text = (ROOT / "Containerfile").read_text()
    rust = re.search(r"^ARG RUST_IMAGE=\S+/rust:(\d+)\.(\d+)-slim-bookworm$", text, flags=re.M)
    assert rust, "RUST_IMAGE names a rust:<major>.<minor>-slim-bookworm image"
    assert "cargo build --release --locked --bin waveguide" in text
    metadata = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked", "--offline"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )
    needed = max(
        tuple(int(x) for x in p["rust_version"].split(".")[:2])
        for p in json.loads(metadata.stdout)["packages"]
        if p.get("rust_version")
    )
    assert (int(rust.group(1)), int(rust.group(2))) >= needed, f"the locked dependencies need Rust {needed}"
