"""A template that would name two sessions' (or two users') objects alike, or that the bridge cannot fill,
stops the bridge at its start with the setting's name and a sentence, not at every job."""

import json
import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from fluxfill.bridge import contract
from fluxfill.bridge.path_templates import OBJECT_TEMPLATES, layout_problem, template_problem
from fluxfill.bridge.settings import BridgeSettings, settings_problems


@pytest.mark.parametrize(
    "template",
    [
        contract.DEFAULT_ORIGINAL_TEMPLATE,
        contract.DEFAULT_MASK_TEMPLATE,
        contract.DEFAULT_EDITED_TEMPLATE,
        contract.DEFAULT_PREVIEW_TEMPLATE,
        "photos/{sessionId}/{userId}/original.*",
        "a/{userId}/{sessionId}",
    ],
)
def test_templates_that_keep_each_user_and_session_apart_pass(template: str) -> None:
    assert template_problem(template, "original_template") is None


@pytest.mark.parametrize(
    ("template", "said"),
    [
        ("users/{userId}/edited.*", "must hold {sessionId} once"),
        ("sessions/{sessionId}/edited.*", "must hold {userId} once"),
        ("u/{userId}-{sessionId}/edited.*", "must hold {userId} once, as a whole path segment"),
        ("u/{userId}/{sessionId}.*", "must hold {sessionId} once, as a whole path segment"),
        ("u/{userId}/{sessionId}/{sessionId}/edited.*", "must hold {sessionId} once"),
        ("users/{user}/s/{sessionId}/edited.*", "holds {user}: the only placeholders"),
        ("users/{userId}/s/{sessionId!r}/edited.*", "holds {sessionId!r}"),
        ("users/{userId}/s/{sessionId:>9}/edited.*", "holds {sessionId:>9}"),
        ("users/{}/s/{sessionId}/edited.*", "holds {}"),
        ("users/{userId}/s/{sessionId}/edited{.*", "is no template"),
        ("/users/{userId}/s/{sessionId}/edited.*", "empty path segment"),
        ("users//{userId}/s/{sessionId}/edited.*", "empty path segment"),
    ],
)
def test_a_template_that_could_mix_sessions_or_cannot_be_filled_is_refused(template: str, said: str) -> None:
    for field in OBJECT_TEMPLATES:
        with pytest.raises(ValidationError) as caught:
            BridgeSettings(project="p", subscription="s", bucket="b", **{field: template})
        problems = settings_problems(caught.value)
        assert problems.startswith(f"FLUXFILL_BRIDGE_{field.upper()}: {template!r}"), problems
        assert said in problems


@pytest.mark.parametrize(
    ("template", "said"),
    [
        ("u/{userId}/s/{sessionId}/mask\n.png", "holds a control character"),
        ("u/{userId}/./{sessionId}/mask.png", "has a '.' segment"),
        ("u/{userId}/../{sessionId}/mask.png", "has a '..' segment"),
        ("u/{userId}/s/{sessionId}/m?.png", "holds ?"),
        ("u/{userId}/s/{sessionId}/m[1].png", "holds [ ]"),
        ("u/{userId}/s/{sessionId}/m#.png", "holds #"),
        ("u/*/{userId}/{sessionId}/mask.png", "holds *"),
        ("u/{userId}/{sessionId}/m*.png", "holds *"),
        ("u" * 800 + "/{userId}/{sessionId}/mask.png", "makes names of up to 1067 bytes"),
    ],
)
def test_an_object_template_naming_what_cloud_storage_or_its_tools_refuse_is_refused(
    template: str, said: str
) -> None:
    for field in ("mask_template", "preview_template"):
        problem = template_problem(template, field)
        assert problem is not None, field
        assert problem.startswith(repr(template)), problem
        assert said in problem
    assert template_problem("u/{userId}/{sessionId}/mask*", "mask_template") is None, (
        "a final * is an extension"
    )
    assert template_problem("u/{userId}/{sessionId}/preview*", "preview_template") is not None, (
        "never written"
    )
    assert template_problem("u/{userId}/{sessionId}/{{m}}.png", "mask_template") is None, "{{ is a brace"


def test_the_edited_template_must_end_in_its_extensions_star() -> None:
    problem = template_problem("u/{userId}/{sessionId}/edited.png", "edited_template")
    assert problem is not None
    assert "must end in '*'" in problem


@pytest.mark.parametrize(
    ("template", "said"),
    [
        ("__x__/{userId}/s/{sessionId}", "holds '__x__', which Firestore takes for no collection"),
        ("users/{userId}/../{sessionId}", "holds '..'"),
        ("users/{userId}/s/{sessionId}/x", "even number of segments"),
    ],
)
def test_a_session_template_naming_what_firestore_refuses_is_refused(template: str, said: str) -> None:
    assert template_problem(contract.DEFAULT_SESSION_TEMPLATE, "session_template") is None
    with pytest.raises(ValidationError) as caught:
        BridgeSettings(project="p", subscription="s", bucket="b", session_template=template)
    problems = settings_problems(caught.value)
    assert problems.startswith(f"FLUXFILL_BRIDGE_SESSION_TEMPLATE: {template!r}"), problems
    assert said in problems


def _settings(**templates: str) -> BridgeSettings:
    return BridgeSettings(project="p", subscription="s", bucket="b", **templates)


FOLDER = "users/{userId}/sessions/{sessionId}"


@pytest.mark.parametrize(
    ("templates", "meeting"),
    [
        # The photo recorded as its own result: the create-only upload found it there (seen before).
        ({"edited_template": f"{FOLDER}/original.*"}, ("ORIGINAL", "EDITED")),
        # A replayed or retried job failed original_ambiguous once its result was written (seen before).
        (
            {"original_template": f"{FOLDER}/photo*", "edited_template": f"{FOLDER}/photo-edited.*"},
            ("ORIGINAL", "EDITED"),
        ),
        ({"original_template": f"{FOLDER}/*"}, ("ORIGINAL", "MASK")),
        ({"preview_template": f"{FOLDER}/mask.png"}, ("MASK", "PREVIEW")),
        ({"preview_template": f"{FOLDER}/edited.jpg"}, ("EDITED", "PREVIEW")),
        (
            {"mask_template": f"{FOLDER}/m*", "preview_template": f"{FOLDER}/mask-preview.jpg"},
            ("MASK", "PREVIEW"),
        ),
        # Two jobs: user x's session y and user y's session x.
        (
            {"mask_template": "{userId}/{sessionId}/m.png", "preview_template": "{sessionId}/{userId}/m.png"},
            ("MASK", "PREVIEW"),
        ),
        # Fixed text where another template has an id: user `sessions` meets the other template's folder.
        (
            {
                "mask_template": "users/sessions/{userId}/{sessionId}/m.png",
                "preview_template": f"{FOLDER}/m.png",
            },
            ("MASK", "PREVIEW"),
        ),
    ],
)
def test_object_templates_that_can_name_the_same_object_are_refused(
    templates: dict[str, str], meeting: tuple[str, str]
) -> None:
    with pytest.raises(ValidationError) as caught:
        _settings(**templates)
    problems = settings_problems(caught.value)
    first, second = (f"FLUXFILL_BRIDGE_{kind}_TEMPLATE" for kind in meeting)
    assert "can name the same object" in problems, problems
    assert first in problems
    assert second in problems


@pytest.mark.parametrize(
    "templates",
    [
        {},
        {"original_template": f"{FOLDER}/photo.*", "edited_template": f"{FOLDER}/photo-edited.*"},
        {
            "original_template": "uploads/{userId}/{sessionId}/photo.*",
            "mask_template": "uploads/{userId}/{sessionId}/mask.*",
            "edited_template": "results/{userId}/{sessionId}/photo.*",
            "preview_template": "results/{userId}/{sessionId}/preview.jpg",
        },
        # A fixed segment no id can be ('.' in a session's place) keeps the folders apart.
        {"mask_template": "users/{userId}/.m/{sessionId}/m.png", "preview_template": f"{FOLDER}/m.png"},
        {"preview_template": "previews/{userId}/{sessionId}"},
    ],
)
def test_object_templates_that_name_each_object_once_pass(templates: dict[str, str]) -> None:
    settings = _settings(**templates)
    named = settings.model_dump(include=set(OBJECT_TEMPLATES))
    assert layout_problem(named) is None


@pytest.mark.parametrize(
    ("edited", "said"),
    [
        ("users/{userId}/edited.*", "two sessions could name the same objects"),
        (f"{FOLDER}/original.*", "can name the same object"),
    ],
)
def test_the_bridge_does_not_start_with_such_a_template(edited: str, said: str) -> None:
    """Before, it started: a template without {sessionId} recorded a user's second session done with the first
    one's result (create-only uploads take an object already there for an earlier attempt's), and one equal to
    the original's recorded the photo itself as the result."""
    settings = {"PROJECT": "p", "SUBSCRIPTION": "s", "BUCKET": "b", "EDITED_TEMPLATE": edited}
    env = {**os.environ, **{f"FLUXFILL_BRIDGE_{name}": value for name, value in settings.items()}}
    started = subprocess.run(
        [sys.executable, "-m", "fluxfill.bridge"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 2, started.stderr
    [line] = [json.loads(text) for text in started.stdout.splitlines() if "invalid settings" in text]
    assert "FLUXFILL_BRIDGE_EDITED_TEMPLATE" in line["problems"]
    assert said in line["problems"]


@pytest.mark.parametrize(
    ("collections", "said"),
    [
        # The user slots' `claims` written into the app's own user documents, `users/{userId}`.
        ({"user_slots_collection": "users"}, "FLUXFILL_BRIDGE_USER_SLOTS_COLLECTION 'users' is where"),
        ({"parked_jobs_collection": "users"}, "FLUXFILL_BRIDGE_PARKED_JOBS_COLLECTION 'users' is where"),
        ({"dead_letter_ledger": "users"}, "FLUXFILL_BRIDGE_DEAD_LETTER_LEDGER 'users' is where"),
        # A user's slots document holding a dead-lettered message's entry, or the parked jobs' folder.
        (
            {"user_slots_collection": "fluxfill", "dead_letter_ledger": "fluxfill"},
            "USER_SLOTS_COLLECTION and FLUXFILL_BRIDGE_DEAD_LETTER_LEDGER are both 'fluxfill'",
        ),
        (
            {"user_slots_collection": "fluxfill", "parked_jobs_collection": "fluxfill"},
            "FLUXFILL_BRIDGE_USER_SLOTS_COLLECTION and FLUXFILL_BRIDGE_PARKED_JOBS_COLLECTION are both",
        ),
        (
            {"dead_letter_ledger": "__ledger__"},
            "FLUXFILL_BRIDGE_DEAD_LETTER_LEDGER '__ledger__' is no Firestore",
        ),
    ],
)
def test_the_bridges_collections_apart_from_one_another_and_from_the_sessions(
    collections: dict[str, str], said: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        _settings(**collections)
    problems = settings_problems(caught.value)
    assert said in problems, problems


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"dead_letter_ledger": ""},  # none: nothing to meet
        {"session_template": "apps/pets/users/{userId}/{sessionId}/x", "user_slots_collection": "users"},
        {"user_slots_collection": "Users"},  # Firestore's ids are case-sensitive
    ],
)
def test_collections_of_their_own_pass(settings: dict[str, str]) -> None:
    _settings(**settings)
