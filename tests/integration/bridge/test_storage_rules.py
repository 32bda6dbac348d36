"""The shipped Storage rules (bridge/storage.rules) in Firebase's rules engine, as the app's users meet them.

The app's users upload each session's photo and mask from their phones, signed in; the bridge writes the
results with a service account, which rules do not govern. Each test asks the engine what the Storage
emulator would ask it (tests/storage_rules_engine.py) and holds the verdicts to the project's own code: the
names `fluxfill submit` uploads (`SessionRef.object_path`) and the bridge writes (`results.result_paths`),
the ids `contract.id_problem` takes, and the size and encoding `uploads.locate` reads.
"""

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluxfill.bridge import contract, uploads
from fluxfill.bridge.contract import STORAGE_RULES, JobMessage, id_problem
from fluxfill.bridge.errors import PermanentJobError
from fluxfill.bridge.ports import ObjectInfo
from fluxfill.bridge.results import result_paths
from fluxfill.client.jobs import ORIGINAL_FORMATS, SessionRef
from tests.storage_rules_engine import StorageRules, storage_rules, stored_object
from tests.unit.bridge.world import settings as bridge_settings

pytestmark = pytest.mark.integration
ALICE, MALLORY = "alice", "mallory"
SESSION = "s1"
# The shipped defaults: templates, max_object_bytes.
SHIPPED = bridge_settings()
MAX_OBJECT_BYTES = SHIPPED.max_object_bytes
# The extensions `fluxfill submit` gives an original, and others an app may use (the bridge reads the format
# from the bytes).
ORIGINAL_EXTENSIONS = (*ORIGINAL_FORMATS.values(), "jpeg", "JPG", "heif")
# Named as `fluxfill submit` names its uploads and the bridge its results, under the contract's templates.
UPLOADS = SessionRef(ALICE, SESSION)
ORIGINALS = [UPLOADS.object_path("original", extension) for extension in ORIGINAL_EXTENSIONS]
MASK = UPLOADS.object_path("mask")
INPUTS = [*ORIGINALS, MASK]
JOB = JobMessage(userId=ALICE, sessionId=SESSION)
RESULTS = sorted(
    {
        path
        for extension in contract.RESULT_EXTENSIONS.values()
        for path in result_paths(JOB, SHIPPED, extension).values()
    }
)
FOLDER = MASK.rsplit("/", 1)[0]
# Not the app's to write: other names in the session's folder, deeper paths, names the bridge would not find.
OTHER_NAMES = [
    f"{FOLDER}/mask.jpg",
    f"{FOLDER}/original",
    f"{FOLDER}/original.",
    f"{FOLDER}/original.jpg.part",
    f"{FOLDER}/photo.jpg",
    f"{FOLDER}/extra/original.jpg",
    f"users/{ALICE}/original.jpg",
]


@pytest.fixture(scope="module")
def rules() -> Iterator[StorageRules]:
    with storage_rules(STORAGE_RULES) as compiled:
        yield compiled


def create(rules: StorageRules, name: str, uid: str | None, size: int = 1000, **fields: object) -> bool:
    return rules.allows("create", name, uid=uid, after=stored_object(name, size, **fields))


def test_the_rules_compile_without_an_issue(rules: StorageRules) -> None:
    assert rules.issues == []


def test_the_engine_reports_a_ruleset_it_cannot_compile(tmp_path: Path) -> None:
    """Without this the tests above could pass on rules the engine never read."""
    broken = tmp_path / "storage.rules"
    broken.write_text(STORAGE_RULES.read_text().replace("allow create: if", "allow create: iff", 1))
    with storage_rules(broken) as compiled:
        assert compiled.issues


@pytest.mark.parametrize("name", INPUTS)
def test_a_user_uploads_reads_and_deletes_their_own_photo_and_mask(rules: StorageRules, name: str) -> None:
    stored = stored_object(name, 1000)
    assert create(rules, name, ALICE)
    assert rules.allows("get", name, uid=ALICE, before=stored)
    assert rules.allows("delete", name, uid=ALICE, before=stored)


@pytest.mark.parametrize("name", INPUTS + RESULTS)
@pytest.mark.parametrize("uid", [MALLORY, None], ids=["another user", "signed out"])
def test_no_one_else_writes_reads_or_deletes_a_users_objects(
    rules: StorageRules, name: str, uid: str | None
) -> None:
    stored = stored_object(name, 1000)
    assert not create(rules, name, uid)
    assert not rules.allows("get", name, uid=uid, before=stored)
    assert not rules.allows("delete", name, uid=uid, before=stored)
    assert not rules.allows("update", name, uid=uid, before=stored, after=stored_object(name, 999))


@pytest.mark.parametrize("name", RESULTS)
def test_the_user_reads_and_deletes_the_results_and_never_writes_one(rules: StorageRules, name: str) -> None:
    """An edited.* the user placed would be taken by the bridge for an earlier attempt's result."""
    stored = stored_object(name, 1000)
    assert not create(rules, name, ALICE)
    assert not rules.allows("update", name, uid=ALICE, before=stored, after=stored_object(name, 999))
    assert rules.allows("get", name, uid=ALICE, before=stored)
    assert rules.allows("delete", name, uid=ALICE, before=stored)


def test_no_folder_is_listed(rules: StorageRules) -> None:
    """The app knows every name (its uploads, the session's result.paths); a list would need none."""
    for folder in (FOLDER, f"users/{ALICE}/sessions", f"users/{ALICE}"):
        assert not rules.allows("list", folder, uid=ALICE)


@pytest.mark.parametrize("name", OTHER_NAMES)
def test_the_user_writes_no_other_object(rules: StorageRules, name: str) -> None:
    assert not create(rules, name, ALICE)


@pytest.mark.parametrize("name", INPUTS)
def test_an_uploaded_input_is_never_overwritten(rules: StorageRules, name: str) -> None:
    """Overwritten under a running job, it would fail the job as object_changed."""
    assert not rules.allows(
        "update", name, uid=ALICE, before=stored_object(name, 1000), after=stored_object(name, 2000)
    )


class OneObject:
    """The bridge's ObjectStore port holding one object's metadata (nothing is read)."""

    def __init__(self, info: ObjectInfo) -> None:
        self.info = info

    def find(self, pattern: str) -> ObjectInfo | None:
        return self.info

    def read(self, info: ObjectInfo) -> bytes:
        raise AssertionError("the metadata decides")

    def create(self, path: str, data: bytes, content_type: str, result_key: str | None = None) -> bool:
        raise AssertionError("nothing is written")


def bridge_reads(name: str, size: int, content_encoding: str | None) -> bool:
    """Whether the shipped bridge reads this object (uploads.locate, with its default settings)."""
    info = ObjectInfo(name, size, 1, "image/jpeg", content_encoding)
    wait = uploads.UploadWait(until=0.0, grace_s=0.0, stop=threading.Event())
    try:
        uploads.locate(OneObject(info), name, "original", MAX_OBJECT_BYTES, wait)
    except PermanentJobError:
        return False
    return True


@pytest.mark.parametrize(
    "size", [1, 12_000_000, MAX_OBJECT_BYTES - 1, MAX_OBJECT_BYTES, MAX_OBJECT_BYTES + 1, 2**40]
)
@pytest.mark.parametrize("content_encoding", [None, "", "identity", "gzip", "br"])
@pytest.mark.parametrize("name", [ORIGINALS[0], MASK])
def test_an_upload_is_taken_as_the_bridge_would_read_it(
    rules: StorageRules, name: str, size: int, content_encoding: str | None
) -> None:
    """Too large or compressed again (Content-Encoding), refused at the upload, not after the job was paid."""
    allowed = create(rules, name, ALICE, size, contentEncoding=content_encoding)
    assert allowed == bridge_reads(name, size, content_encoding)


def test_an_empty_upload_is_refused(rules: StorageRules) -> None:
    """The bridge would read it and fail the job as corrupt_image."""
    assert not create(rules, ORIGINALS[0], ALICE, size=0)
    assert not create(rules, MASK, ALICE, size=0)


# Ids of every kind the app may meet: the contract's characters, those it refuses, Firestore's reserved form,
# a path's dots, and lengths about its limit of 128.
ID_ALPHABET = "aZ09_-.@|:+=%# *?[]é\u00a0"
ids = st.one_of(
    st.text(ID_ALPHABET, min_size=1, max_size=6),
    st.sampled_from([".", "..", "__x__", "__", "a" * 128, "a" * 129, "auth0|5f7c", "eu-west-1:ab", "a@b.c"]),
    st.builds(lambda inner: f"__{inner}__", st.text(ID_ALPHABET, max_size=4)),
)


@settings(max_examples=300, deadline=None)
@given(user=ids, session=ids)
def test_an_upload_is_taken_exactly_when_the_bridge_takes_its_ids(
    rules: StorageRules, user: str, session: str
) -> None:
    """A job under an id the bridge refuses fails as invalid_job: its photo is refused before it is uploaded.
    The user signs in with that id (a custom token's uid may be another system's)."""
    bridge_takes = id_problem(user, user=True) is None and id_problem(session) is None
    name = SessionRef(user, session).object_path("mask")
    assert create(rules, name, user) == bridge_takes


def test_the_rules_hold_in_any_bucket(rules: StorageRules) -> None:
    """The app's default bucket or one of its own: the rules name none."""
    bucket = "pets-prod.firebasestorage.app"
    assert rules.allows("create", MASK, uid=ALICE, after=stored_object(MASK, 1000), bucket=bucket)
    assert not rules.allows("create", MASK, uid=MALLORY, after=stored_object(MASK, 1000), bucket=bucket)
