"""Firebase's security-rules engine evaluating Cloud Storage rules, as the Storage emulator asks it.

The Firebase Storage emulator cannot run here (its rules runtime is a jar it downloads), but the Firestore
emulator's jar, which the tests run anyway, holds Firebase's rules compiler and evaluator with Firebase
Storage's service in them. This module runs that engine in a process of its own
(`python -m tests.storage_rules_engine JAR RULES`, through JPype: the JVM stays out of the test process, its
signals and its forks) and asks it what the Storage emulator's runtime is asked (firebase-tools,
src/emulator/storage/rules/runtime.ts): service `firebase.storage`, the path `/b/BUCKET/o/NAME`, a method
(get, list, create, update, delete) and the variables `request` and `resource` in that runtime's own shape,
built here as it builds them. A rule that fails to evaluate (a field the object lacks) denies, as in
production.
"""

import json
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from fluxfill.client.prerequisites import cloud_sdk_root, firestore_jar

REPO_ROOT = Path(__file__).resolve().parent.parent
STORAGE_SERVICE = "firebase.storage"


class StorageRules:
    """One compiled ruleset in the engine's process: `allows` is a Storage request's verdict."""

    def __init__(self, process: subprocess.Popen[str], issues: list[str]) -> None:
        self._process = process
        self.issues = issues

    def allows(
        self,
        method: str,
        name: str,
        *,
        uid: str | None,
        before: Mapping[str, Any] | None = None,
        after: Mapping[str, Any] | None = None,
        bucket: str = "bucket",
    ) -> bool:
        """Whether the rules let the user `uid` (None: signed out) do `method` to the object `name`; `before`
        is the object as stored (get, update, delete), `after` as it would be written (create, update)."""
        segments = ["b", bucket, "o", *name.split("/")]
        request = {
            "path": {"path_value": {"segments": [{"simple": segment} for segment in segments]}},
            "time": expression(datetime.now(UTC)),
            "resource": expression(after),
            "auth": expression(None if uid is None else {"uid": uid, "token": id_token_claims(uid)}),
        }
        # The engine reads the path percent-encoded: each segment as it is, a `%` or `+` of an id included.
        path = "/" + "/".join(urllib.parse.quote(segment, safe="") for segment in segments)
        asked = {
            "method": method,
            "path": path,
            "variables": {"request": {"map_value": {"fields": request}}, "resource": expression(before)},
        }
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._process.stdin.write(json.dumps(asked) + "\n")
        self._process.stdin.flush()
        answer = json.loads(self._process.stdout.readline() or '{"error": "the rules engine ended"}')
        if "error" in answer:
            raise RuntimeError(f"the rules engine failed on {method} {path}: {answer['error']}")
        return bool(answer["permit"])


def id_token_claims(uid: str) -> dict[str, Any]:
    """The claims of a Firebase Auth ID token of `uid`, as the app's SDK sends them."""
    return {
        "sub": uid,
        "user_id": uid,
        "aud": "fluxfill-local",
        "firebase": {"sign_in_provider": "anonymous", "identities": {}},
    }


def stored_object(name: str, size: int, **fields: Any) -> dict[str, Any]:
    """An object's metadata as the rules see it (`resource`, `request.resource`): the Storage emulator's
    `StoredFileMetadata.asRulesResource`, an unset field null. `fields` override (contentType, ...)."""
    now = datetime.now(UTC)
    return {
        "name": name,
        "bucket": "bucket",
        "generation": 1,
        "metageneration": 1,
        "size": size,
        "timeCreated": now,
        "updated": now,
        "md5Hash": "1B2M2Y8AsgTpgAmY7PhCfg==",
        "crc32c": "AAAAAA==",
        "etag": "CAE=",
        "contentDisposition": None,
        "contentEncoding": None,
        "contentType": "application/octet-stream",
        "metadata": {},
        **fields,
    }


# Scalars in the order they are told apart (a bool is an int too).
_SCALAR_FIELDS = ((bool, "bool_value"), (int, "int_value"), (float, "float_value"), (str, "string_value"))


def expression(value: Any) -> dict[str, Any]:
    """`value` as the rules runtime's ExpressionValue, in its JSON form (runtime.ts `toExpressionValue`)."""
    if value is None:
        return {"null_value": None}
    if isinstance(value, datetime):
        return {"timestamp_value": value.isoformat().replace("+00:00", "Z")}
    for kind, field in _SCALAR_FIELDS:
        if isinstance(value, kind):
            return {field: value}
    if isinstance(value, list | tuple):
        return {"list_value": {"values": [expression(item) for item in value]}}
    if isinstance(value, Mapping):
        return {"map_value": {"fields": {key: expression(item) for key, item in value.items()}}}
    raise TypeError(f"no rules value for {value!r}")


@contextmanager
def storage_rules(rules: Path) -> Iterator[StorageRules]:
    """The engine's process with `rules` compiled (its issues in `.issues`), stopped on leaving."""
    jar = firestore_jar(cloud_sdk_root())
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.storage_rules_engine", str(jar), str(rules)],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        if not first:
            raise RuntimeError(f"the rules engine did not start (exit status {process.wait(timeout=10)})")
        yield StorageRules(process, json.loads(first)["issues"])
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _jvm_of_java_on_path() -> str | None:
    """The JVM library of the `java` the emulators run with (the first on PATH, as the prerequisites find it),
    where JPype's own search looks at JAVA_HOME and a few usual folders."""
    java = shutil.which("java")
    library = None if java is None else Path(java).resolve().parent.parent / "lib" / "server" / "libjvm.so"
    return str(library) if library is not None and library.is_file() else None


def _serve(jar: str, rules: str, answers: TextIO) -> None:
    import jpype  # only the engine's process starts a JVM

    # A small heap and one collector thread: the rulesets here are a few dozen lines, the machines 2 cores.
    jvm = _jvm_of_java_on_path() or jpype.getDefaultJVMPath()
    jpype.startJVM(jvm, "-Xmx256m", "-XX:+UseSerialGC", classpath=[jar], convertStrings=True)
    java = jpype.JClass
    source = (
        java("com.google.firebase.rules.v1.Source")
        .newBuilder()
        .addFiles(
            java("com.google.firebase.rules.v1.File")
            .newBuilder()
            .setName(Path(rules).name)
            .setContent(Path(rules).read_text())
        )
        .build()
    )
    # The Firestore emulator's own compiler entry: the standard language options, the ruleset's AST kept.
    compiled = java("com.google.cloud.datastore.emulator.impl.rules.EmulatorRulesCompiler").makeAuthorizer(
        source, None, None
    )
    issues = [str(issue).replace("\n", " ").strip() for issue in compiled.issues()]
    answers.write(json.dumps({"issues": issues}) + "\n")
    answers.flush()
    ruleset = compiled.rulesetAst()
    if not ruleset.isPresent():
        return
    evaluator = java("com.google.firebase.rules.runtime.impl.DefaultEvaluator")(ruleset.get())
    context = java("com.google.firebase.rules.runtime.evaluators.AuthRuleEvaluator$RuleContext")
    value_class = java("com.google.firebase.rules.runtime.v1.ExpressionValue")
    parser = java("com.google.protobuf.util.JsonFormat").parser()
    execution_failed = java("java.util.concurrent.ExecutionException")
    rules_error = java("com.google.firebase.rules.runtime.common.EvaluationException")

    def value(json_form: Any) -> Any:
        builder = value_class.newBuilder()
        parser.merge(json.dumps(json_form), builder)
        return builder.build()

    for line in sys.stdin:
        asked = json.loads(line)
        try:
            built = context.builder().service(STORAGE_SERVICE).method(asked["method"]).path(asked["path"])
            for name, json_form in asked["variables"].items():
                built = built.supplyVariable(name, value(json_form))
            answer = {"permit": bool(evaluator.evaluate(built.build()).get().permit())}
        except execution_failed as error:
            if not isinstance(error.getCause(), rules_error):
                raise
            # A rule that fails to evaluate (a field the object lacks) denies the request, as in production.
            answer = {"permit": False, "denied_by_error": str(error.getCause().getMessage())}
        except jpype.JException as error:
            answer = {"error": str(error)}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2], sys.stdout)
