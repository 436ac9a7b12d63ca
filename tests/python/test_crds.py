"""The generated CustomResourceDefinitions: `waveguide crds` writes exactly the committed
files, and the Kubernetes API's own schema (kubernetes-validate) accepts each of them."""

import pathlib
import subprocess

import kubernetes_validate
import pytest
import yaml

from conftest import ROOT

CRDS = ROOT / "crds"
CHART_CRDS = ROOT / "charts" / "waveguide" / "crds"
KUBERNETES_VERSION = kubernetes_validate.utils.latest_version()


def committed() -> list[pathlib.Path]:
    return sorted(CRDS.glob("*.yaml"))


def test_the_cli_writes_the_committed_crds(waveguide_bin, tmp_path):
    subprocess.run([waveguide_bin, "crds", "--out", str(tmp_path)], check=True, capture_output=True)
    written = sorted(p.name for p in tmp_path.glob("*.yaml"))
    assert written == [p.name for p in committed()], "regenerate with `waveguide crds --out crds`"
    for name in written:
        assert (tmp_path / name).read_text() == (CRDS / name).read_text(), (
            f"crds/{name} differs from the code: regenerate with `waveguide crds --out crds`"
        )


@pytest.mark.parametrize("path", committed(), ids=lambda p: p.name)
def test_kubernetes_accepts_the_crd(path):
    document = yaml.safe_load(path.read_text())
    assert document["kind"] == "CustomResourceDefinition"
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    version = document["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert document["spec"]["names"]["shortNames"], "short names make kubectl pleasant"
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    expected = {
        "Fleet": ["Ready", "Commit", "Devices", "Age"],
        "FleetRollout": ["Policy", "Release", "Wave", "Updated", "Failed", "Phase", "Age", "Rollback-Of"],
    }[document["spec"]["names"]["kind"]]
    assert columns == expected


def test_the_chart_ships_the_generated_crds():
    chart = sorted(p.name for p in CHART_CRDS.glob("*.yaml"))
    assert chart == [p.name for p in committed()]
    for name in chart:
        assert (CHART_CRDS / name).read_text() == (CRDS / name).read_text(), (
            f"charts/waveguide/crds/{name} differs from crds/{name}: copy crds/*.yaml into the chart"
        )


def test_a_fleet_with_two_references_is_refused_by_the_schema():
    """The CEL rule on `spec.source.ref` is part of the schema the API server enforces."""
    fleet_crd = yaml.safe_load((CRDS / "fleets.waveguide.dev.yaml").read_text())
    schema = fleet_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    ref = schema["properties"]["spec"]["properties"]["source"]["properties"]["ref"]
    rules = [v["rule"] for v in ref["x-kubernetes-validations"]]
    assert any("size() == 1" in r for r in rules)
