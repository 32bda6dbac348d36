"""A template that would name two sessions' (or two users') objects alike, or that the bridge cannot fill,
stops the bridge at its start with the setting's name and a sentence, not at every job."""

import json
import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from fluxfill.bridge import contract
from fluxfill.bridge.path_templates import template_problem
from fluxfill.bridge.settings import BridgeSettings, settings_problems

OBJECT_TEMPLATES = ("original_template", "mask_template", "edited_template", "preview_template")


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
    assert template_problem(template) is None


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


def test_a_session_template_must_name_a_document() -> None:
    assert template_problem(contract.DEFAULT_SESSION_TEMPLATE, document=True) is None
    with pytest.raises(ValidationError) as caught:
        BridgeSettings(
            project="p", subscription="s", bucket="b", session_template="u/{userId}/s/{sessionId}/x"
        )
    assert "even number of segments" in settings_problems(caught.value)


def test_the_bridge_does_not_start_with_such_a_template() -> None:
    """Before, it started, and a template without {sessionId} recorded a user's second session done with
    the first one's result (create-only uploads take an object already there for an earlier attempt's)."""
    settings = {
        "PROJECT": "p",
        "SUBSCRIPTION": "s",
        "BUCKET": "b",
        "EDITED_TEMPLATE": "users/{userId}/edited.*",
    }
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
    assert "two sessions could name the same objects" in line["problems"]
