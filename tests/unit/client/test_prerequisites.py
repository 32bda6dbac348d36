"""Up-front checks of what the machine must provide: each missing part named, with how to install it."""

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from fluxfill.client import prerequisites
from fluxfill.client.errors import InvalidInputError
from fluxfill.client.prerequisites import (
    MissingPrerequisiteError,
    cloud_sdk_root,
    emulator_problems,
    missing_libraries,
    require,
    require_free_ports,
)


def _sdk(root: Path) -> Path:
    (root / "platform" / "pubsub-emulator" / "bin").mkdir(parents=True)
    (root / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator").write_text("#!/bin/sh\n")
    (root / "platform" / "cloud-firestore-emulator").mkdir(parents=True)
    (root / "platform" / "cloud-firestore-emulator" / "cloud-firestore-emulator.jar").write_bytes(b"PK")
    return root


def test_the_sdk_is_found_from_the_variable_then_from_gcloud_on_path(tmp_path: Path) -> None:
    sdk = _sdk(tmp_path / "google-cloud-sdk")
    assert cloud_sdk_root({"FLUXFILL_CLOUD_SDK": str(sdk)}) == sdk
    (sdk / "bin").mkdir()
    (sdk / "bin" / "gcloud").write_text("#!/bin/sh\n")
    (sdk / "bin" / "gcloud").chmod(0o755)
    links = tmp_path / "usr-bin"
    links.mkdir()
    (links / "gcloud").symlink_to(sdk / "bin" / "gcloud")
    assert cloud_sdk_root({"PATH": str(links)}) == sdk


def test_a_complete_machine_has_no_problems(tmp_path: Path) -> None:
    java = shutil.which("java")
    assert java is not None, "this machine has Java"
    sdk = _sdk(tmp_path / "sdk")
    assert emulator_problems({"PATH": str(Path(java).parent), "FLUXFILL_CLOUD_SDK": str(sdk)}) == []


def test_each_missing_part_is_named_with_how_to_install_it(tmp_path: Path) -> None:
    problems = emulator_problems({"PATH": str(tmp_path), "FLUXFILL_CLOUD_SDK": str(tmp_path / "none")})
    assert len(problems) == 3
    assert problems[0].startswith("java not found on PATH")
    assert "apt install default-jre-headless" in problems[0]
    assert "the Pub/Sub emulator is missing" in problems[1]
    assert "the Firestore emulator is missing" in problems[2]
    assert all("FLUXFILL_CLOUD_SDK" in problem for problem in problems[1:])
    with pytest.raises(MissingPrerequisiteError, match=r"java not found.*; the Pub/Sub emulator") as raised:
        require(lambda: problems)
    assert raised.value.exit_code == 3


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs a C compiler")
def test_a_shared_library_the_loader_cannot_find_is_reported(tmp_path: Path) -> None:
    # A real binary linked against a library that is then removed: what a stub without libpython looks like.
    (tmp_path / "gone.c").write_text("int gone(void) { return 1; }\n")
    (tmp_path / "main.c").write_text("int gone(void);\nint main(void) { return gone(); }\n")
    library = str(tmp_path / "libgone.so.1")
    soname = "-Wl,-soname,libgone.so.1"
    compile_library = ["gcc", "-shared", "-fPIC", soname, "-o", library, str(tmp_path / "gone.c")]
    subprocess.run(compile_library, check=True)
    link = ["gcc", "-o", str(tmp_path / "main"), str(tmp_path / "main.c"), f"-L{tmp_path}", "-l:libgone.so.1"]
    subprocess.run(link, check=True)
    environment = {"LD_LIBRARY_PATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    assert missing_libraries(tmp_path / "main", environment) == []
    (tmp_path / "libgone.so.1").unlink()
    assert missing_libraries(tmp_path / "main", environment) == ["libgone.so.1"]


def test_a_missing_libpython_says_which_package_provides_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prerequisites, "missing_libraries", lambda *_: ["libpython3.11.so.1.0"])
    (problem,) = prerequisites.triton_problems()
    assert problem.startswith("libpython3.11.so.1.0 not found: Triton's Python backend stub embeds")
    assert "apt install libpython3.11" in problem


def test_ports_are_checked_before_any_server_starts() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(InvalidInputError, match=f"grpc port {port} on 127.0.0.1 is not available"):
            require_free_ports("127.0.0.1", {"http": _free(), "grpc": port})
    with pytest.raises(InvalidInputError, match="--grpc-port and --http-port are both"):
        require_free_ports("127.0.0.1", {"http": 8105, "grpc": 8105})
    with pytest.raises(InvalidInputError, match="a port is 1 to 65535"):
        require_free_ports("127.0.0.1", {"metrics": 70000})
    require_free_ports("127.0.0.1", {"http": _free()})


def _free() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
