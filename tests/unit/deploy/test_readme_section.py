"""docs/deploy.md (linked from the README's Deploy section) names every deployment file and every alert."""

from tests.support import REPO_ROOT
from tests.unit.deploy.support import DEPLOY


def deploy_section() -> str:
    text = (REPO_ROOT / "docs" / "deploy.md").read_text()
    readme = (REPO_ROOT / "README.md").read_text()
    assert "docs/deploy.md" in readme, "the README does not link docs/deploy.md"
    return text


def test_every_deployment_file_or_folder_is_named() -> None:
    section = deploy_section()
    for path in sorted(DEPLOY.iterdir()):
        if path.name in {"__pycache__", "config.env"} or path.name.startswith("."):
            continue
        name = f"deploy/{path.name}/" if path.is_dir() else f"deploy/{path.name}"
        assert name in section or f"`{path.name}`" in section, name
    for dockerfile in ("Dockerfile.triton", "Dockerfile.bridge"):
        assert f"`{dockerfile}`" in section


def test_every_alert_is_in_the_alert_table() -> None:
    section = deploy_section()
    for alert in sorted((DEPLOY / "monitoring" / "alerts").glob("*.json")):
        assert f"`{alert.stem}`" in section, alert.name
