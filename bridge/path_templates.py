"""The templates that name a job's objects and its session document, checked when the bridge starts.

A template is filled with a job's ids (`str.format`). One that leaves out `{sessionId}` (or `{userId}`) names
the same objects for two sessions (or two users): results are uploaded create-only, and an object already
there is taken for an earlier attempt's, so the second session would be recorded done with the first one's
result, another user's photo included. One with a placeholder the bridge does not fill fails every job. Each
id is a whole path segment, so that no id runs into the template's fixed text (with `{userId}-{sessionId}`,
user `a-b` and session `c` name what user `a` and session `b-c` name) and a final `*` matches within its own
session's folder only.

The object templates must also name different objects from one another, for any ids (`layout_problem`): an
edited image's template equal to the original's had the photo itself recorded as the result (the create-only
upload found it there), and an original's `*` that also matches the edited image (`photo*` beside
`photo-edited.*`) failed a replayed or retried job as `original_ambiguous` once its result was written. And
the bridge's own Firestore collections must be its own (`collections_problem`): a user slots collection named
`users` beside sessions under `users/{userId}/...` wrote the slots' `claims` into the app's user documents.
"""

import string
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from itertools import combinations

from fluxfill.bridge.contract import RESULT_EXTENSIONS, firestore_id_allowed, id_problem

PLACEHOLDERS = ("userId", "sessionId")
OBJECT_TEMPLATES = ("original_template", "mask_template", "edited_template", "preview_template")
SESSION_TEMPLATE = "session_template"
# The bridge's own top-level Firestore collections, by setting: a user's slots (`{collection}/{userId}`),
# a user's parked jobs (`{collection}/{userId}/jobs/{sessionId}`), dead-lettered message ids (empty: none).
BRIDGE_COLLECTIONS = ("user_slots_collection", "parked_jobs_collection", "dead_letter_ledger")
# The object templates whose final `*` stands for an extension: found by listing (the original and the mask
# the app uploaded), or filled with the result's (the edited image, which must end in one).
EXTENSION_TEMPLATES = ("original_template", "mask_template", "edited_template")
# What an object's name may not hold: Cloud Storage refuses CR and LF, and its tools (wildcards) and URLs take
# these specially. `*` only as the final character of EXTENSION_TEMPLATES.
SPECIAL_IN_OBJECT_NAMES = "*?[]#"
# Cloud Storage's longest object name, in bytes of UTF-8.
MAX_OBJECT_NAME_BYTES = 1024
MAX_ID_LENGTH = 128
# What each id is filled with while a template's segments are told apart: control characters are refused in
# templates, so these cannot appear in their fixed text.
_MARKERS = {name: f"\0{name}\0" for name in PLACEHOLDERS}
_IDS_BY_MARKER = {marker: name for name, marker in _MARKERS.items()}


def template_problem(template: str, field: str) -> str | None:
    """What is wrong with `template` as the setting `field` (one of OBJECT_TEMPLATES or SESSION_TEMPLATE), in
    a sentence; None when it names each user's and each session's objects apart, in names its store takes."""
    problem = _placeholders_problem(template)
    if problem is not None:
        return problem
    if any(ord(character) < 32 or ord(character) == 127 for character in template):
        return f"{template!r} holds a control character (Cloud Storage refuses line breaks in names)"
    segments = template.split("/")
    if "" in segments:
        return f"{template!r} has an empty path segment (a leading, trailing or double '/')"
    for name in PLACEHOLDERS:
        if segments.count(f"{{{name}}}") != 1:
            return _not_once(template, name)
    if field == SESSION_TEMPLATE:
        return _document_problem(template)
    return _object_problem(template, field)


def _placeholders_problem(template: str) -> str | None:
    """Whether the template parses, with {userId} and {sessionId} its only placeholders, each exactly once."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as error:
        return f"{template!r} is no template ({error}); write each id as {{userId}} or {{sessionId}}"
    names = []
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in PLACEHOLDERS or spec or conversion:
            shown = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            return (
                f"{template!r} holds {{{shown}}}: the only placeholders are {{userId}} and {{sessionId}}, "
                "as they are"
            )
        names.append(name)
    for name in PLACEHOLDERS:
        if names.count(name) != 1:
            return _not_once(template, name)
    return None


def _not_once(template: str, name: str) -> str:
    return (
        f"{template!r} must hold {{{name}}} once, as a whole path segment between '/': otherwise two "
        f"{'sessions' if name == 'sessionId' else 'users'} could name the same objects"
    )


def _fixed_segments(template: str, field: str) -> Iterator[str]:
    """The template's segments other than the ids, as filled (`{{` is a brace; a final `*` standing for the
    extension left out)."""
    for segment in _segments(template, field):
        if segment.placeholder is None:
            yield segment.text


def _document_problem(template: str) -> str | None:
    if len(template.split("/")) % 2:
        return f"{template!r} names a collection: a Firestore document path has an even number of segments"
    for segment in _fixed_segments(template, SESSION_TEMPLATE):
        if not firestore_id_allowed(segment):
            return (
                f"{template!r} holds {segment[:50]!r}, which Firestore takes for no collection or document "
                "id (not . or .., nor __name__, at most 1,500 bytes)"
            )
    return None


def _object_problem(template: str, field: str) -> str | None:
    if field == "edited_template" and not template.endswith("*"):
        return f"{template!r} must end in '*': the edited image's extension (jpg, png or webp) goes there"
    for segment in _fixed_segments(template, field):
        if segment in {".", ".."}:
            return f"{template!r} has a {segment!r} segment: tools and browsers read it as a folder"
        special = sorted(set(segment) & set(SPECIAL_IN_OBJECT_NAMES))
        if special:
            where = "only as the final character of the original's, mask's or edited image's template"
            return (
                f"{template!r} holds {' '.join(special)}, which Cloud Storage's tools and URLs take "
                f"specially: not in an object's name ('*' {where}, standing for the extension)"
            )
    longest_id = "x" * MAX_ID_LENGTH
    longest_extension = max(map(len, RESULT_EXTENSIONS.values())) * "x"
    filled = template.format(userId=longest_id, sessionId=longest_id).removesuffix("*")
    size = len(filled.encode()) + (len(longest_extension) if _ends_in_extension(template, field) else 0)
    if size > MAX_OBJECT_NAME_BYTES:
        return (
            f"{template!r} makes names of up to {size} bytes with {MAX_ID_LENGTH}-character ids: Cloud "
            f"Storage takes {MAX_OBJECT_NAME_BYTES}"
        )
    return None


@dataclass(frozen=True)
class _Segment:
    """One segment of an object template: an id (`placeholder`), fixed text, or, last, a prefix with `*`."""

    text: str
    placeholder: str | None = None
    glob: bool = False

    def may_meet(self, other: "_Segment") -> bool:
        """Whether some ids make the two segments the same name (a `*` matches any text without '/')."""
        if self.placeholder is not None or other.placeholder is not None:
            named, rest = (self, other) if self.placeholder is not None else (other, self)
            if rest.placeholder is not None:
                return True  # a user id and a session id may be the same word
            # Fixed text meets an id where it could be one (followed by more text, for a `*`).
            return (
                id_problem(rest.text + ("x" if rest.glob else ""), user=named.placeholder == "userId") is None
            )
        if self.glob and other.glob:
            return self.text.startswith(other.text) or other.text.startswith(self.text)
        if self.glob or other.glob:
            prefix, name = (self.text, other.text) if self.glob else (other.text, self.text)
            return name.startswith(prefix)
        return self.text == other.text


def _ends_in_extension(template: str, field: str) -> bool:
    """Whether the template's final `*` stands for an extension (else a `*` is a character of the name)."""
    return field in EXTENSION_TEMPLATES and template.endswith("*")


def _segments(template: str, field: str) -> list[_Segment]:
    """The template's segments, as filled: each id by its placeholder, a final `*` as its segment's glob."""
    glob = _ends_in_extension(template, field)
    texts = template.removesuffix("*" if glob else "").format(**_MARKERS).split("/")
    segments = [_Segment(text, placeholder=_IDS_BY_MARKER.get(text)) for text in texts]
    if glob:
        segments[-1] = _Segment(segments[-1].text, glob=True)
    return segments


def layout_problem(templates: Mapping[str, str], name: Callable[[str], str] = str) -> str | None:
    """A sentence when two of the object templates (by field, each already valid) can name the same object for
    some ids, one job's or two jobs'; None when every object has one template. `name`: a field's name as the
    reader knows it (its environment variable)."""
    shapes = {field: _segments(templates[field], field) for field in OBJECT_TEMPLATES if field in templates}
    for first, second in combinations(shapes, 2):
        a, b = shapes[first], shapes[second]
        if len(a) == len(b) and all(x.may_meet(y) for x, y in zip(a, b, strict=True)):
            return (
                f"{name(first)} {templates[first]!r} and {name(second)} {templates[second]!r} can name the "
                "same object: the bridge would read or keep one for the other (a photo taken for a result, "
                "a result for an earlier attempt's, or several objects matching the original's '*')"
            )
    return None


def collections_problem(settings: Mapping[str, str], name: Callable[[str], str] = str) -> str | None:
    """A sentence when one of the bridge's own collections (BRIDGE_COLLECTIONS, by field) is no Firestore id,
    is another's too (one document would hold a user's slots and a message's entry, or parked jobs under it),
    or is the session template's top collection (the bridge's fields written into the app's documents: with
    sessions under `users/{userId}/...`, slots in `users` are the app's user documents); None otherwise."""
    used = {field: settings[field] for field in BRIDGE_COLLECTIONS if settings.get(field)}
    for field, collection in used.items():
        if not firestore_id_allowed(collection):
            return f"{name(field)} {collection!r} is no Firestore collection id (not __...__)"
    for first, second in combinations(used, 2):
        if used[first] == used[second]:
            return (
                f"{name(first)} and {name(second)} are both {used[first]!r}: each of the bridge's "
                "collections holds documents of its own, keyed by user or message id"
            )
    # Where the session template starts with an id, a user whose id is a collection's name could meet it:
    # left to the app's ids (a Firebase uid is 28 random characters).
    top = _segments(settings[SESSION_TEMPLATE], SESSION_TEMPLATE)[0]
    for field, collection in used.items():
        if top.placeholder is None and top.text == collection:
            return (
                f"{name(field)} {collection!r} is where {name(SESSION_TEMPLATE)} "
                f"{settings[SESSION_TEMPLATE]!r} keeps the app's documents: the bridge would write its own "
                "into them"
            )
    return None


def session_collection(template: str) -> str | None:
    """The id of the collection every session document `template` names lies in (the name a collection-group
    query takes), when it is fixed text; None when an id names it (`{userId}/{sessionId}`)."""
    parent = _segments(template, SESSION_TEMPLATE)[-2]
    return parent.text if parent.placeholder is None else None


def names_session(template: str, path: str) -> bool:
    """Whether the document at `path` is one `template` names, for ids the job contract takes (a collection
    group of the same name elsewhere in the app's database is not the bridge's)."""
    segments, parts = _segments(template, SESSION_TEMPLATE), path.split("/")
    if len(parts) != len(segments):
        return False
    return all(
        part == segment.text
        if segment.placeholder is None
        else id_problem(part, user=segment.placeholder == "userId") is None
        for segment, part in zip(segments, parts, strict=True)
    )
