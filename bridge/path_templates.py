"""The templates that name a job's objects and its session document, checked when the bridge starts.

A template is filled with a job's ids (`str.format`). One that leaves out `{sessionId}` (or `{userId}`) names
the same objects for two sessions (or two users): results are uploaded create-only, and an object already
there is taken for an earlier attempt's, so the second session would be recorded done with the first one's
result, another user's photo included. One with a placeholder the bridge does not fill fails every job. Each
id is a whole path segment, so that no id runs into the template's fixed text (with `{userId}-{sessionId}`,
user `a-b` and session `c` name what user `a` and session `b-c` name) and a final `*` matches within its own
session's folder only.
"""

import string

PLACEHOLDERS = ("userId", "sessionId")


def template_problem(template: str, *, document: bool = False) -> str | None:
    """What is wrong with `template` (a Firestore document path when `document`), in a sentence; None when
    it names each user's and each session's objects apart."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as error:
        return f"{template!r} is no template ({error}); write each id as {{userId}} or {{sessionId}}"
    fields = [(name, spec, conversion) for _, name, spec, conversion in parts if name is not None]
    for name, spec, conversion in fields:
        if name not in PLACEHOLDERS or spec or conversion:
            shown = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            return (
                f"{template!r} holds {{{shown}}}: the only placeholders are {{userId}} and {{sessionId}}, "
                "as they are"
            )
    segments = template.split("/")
    if "" in segments:
        return f"{template!r} has an empty path segment (a leading, trailing or double '/')"
    for name in PLACEHOLDERS:
        if [field for field, _, _ in fields].count(name) != 1 or f"{{{name}}}" not in segments:
            return (
                f"{template!r} must hold {{{name}}} once, as a whole path segment between '/': otherwise two "
                f"{'sessions' if name == 'sessionId' else 'users'} could name the same objects"
            )
    if document and len(segments) % 2:
        return f"{template!r} names a collection: a Firestore document path has an even number of segments"
    return None
