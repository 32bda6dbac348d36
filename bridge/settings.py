"""The bridge's one typed settings object, read from `FLUXFILL_BRIDGE_*` environment variables."""

import difflib
import os
import secrets
import socket
from collections.abc import Iterable, Mapping
from typing import Literal, TypeVar

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from fluxfill.bridge import contract
from fluxfill.bridge.path_templates import (
    BRIDGE_COLLECTIONS,
    OBJECT_TEMPLATES,
    SESSION_TEMPLATE,
    collections_problem,
    layout_problem,
    template_problem,
)
from fluxfill.inpaint.contract import MAX_TIMEOUT_S

ENV_PREFIX = "FLUXFILL_BRIDGE_"
# After the grace period, cancelling the runs on Triton and giving their claims back may take this long;
# then the bridge exits whatever is left (the leases lapse). The grace plus this must fit the platform's
# window between SIGTERM and SIGKILL (Cloud Run: 10 s; GKE: terminationGracePeriodSeconds).
SHUTDOWN_CLEANUP_S = 3.0
# Memory a job may take, per pixel of its photo, through the whole handler with an in-memory model
# (tests/unit/bridge/test_memory.py bounds every format by HANDLER_BYTES_PER_PIXEL): the most is a spliced
# JPEG's, whose coefficients are held while read (twice: libjpeg's and jpeglib's) and while written (libjpeg's
# copy): 2 bytes a coefficient, 3 a pixel at 4:2:0 and 6 at 4:4:4, where 12 MP JPEGs measured 18-19 (4:2:0)
# and 22-25 (4:4:4, baseline or progressive, by the threads' timing); 17.0 on an RGBA PNG. The Triton
# client's request and response buffers add up to four more copies of the 3-byte RGB image. A bridge's memory
# limit must hold BRIDGE_BASELINE_BYTES + max_concurrent_jobs x max_image_pixels x JOB_BYTES_PER_PIXEL (tested
# per manifest).
HANDLER_BYTES_PER_PIXEL = 28
JOB_BYTES_PER_PIXEL = HANDLER_BYTES_PER_PIXEL + 4 * 3
BRIDGE_BASELINE_BYTES = 300 * 2**20


class BridgeSettings(BaseSettings):
    """Everything the bridge is configured with; built once at start and passed down."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    mode: Literal["pull", "push"] = Field(
        "pull", description="entry point: pull (as many messages as free slots), or an HTTP push endpoint"
    )
    project: str = Field(description="Google Cloud project of the subscription, bucket and Firestore")
    subscription: str = Field(
        "", description="Pub/Sub subscription id to pull from (pull mode; the bulk jobs' with an urgent one)"
    )
    urgent_subscription: str = Field(
        "",
        description="subscription of the urgent jobs' topic (pull mode): a free slot takes urgent work "
        "first; empty = one lane",
    )
    bulk_share: float = Field(
        0.1,
        gt=0,
        le=0.5,
        description="while urgent jobs wait, at least this share of the freed slots goes to a waiting bulk "
        "job, so bulk work is never starved",
    )
    topic: str = Field(
        "",
        description="topic id of bulk jobs (the subscription's): a parked job (its user was at the limit) is "
        "published there again when released; needed with max_jobs_in_flight_per_user",
    )
    urgent_topic: str = Field(
        "", description="topic id of urgent jobs, for released urgent jobs; empty = `topic`"
    )
    firestore_database: str = Field(
        contract.DEFAULT_FIRESTORE_DATABASE,
        pattern=contract.FIRESTORE_DATABASE_PATTERN,
        description="Firestore database of the session documents and the bridge's collections: the app's "
        "(a Firebase app may keep its data in a named one)",
    )
    max_jobs_in_flight_per_user: int = Field(
        0,
        ge=0,
        description="jobs of one user running at once, fleet-wide; more are parked in Firestore (not "
        "claimed, no attempt spent) until one of the user's jobs ends; 0 = no limit",
    )
    user_slots_collection: str = Field(
        contract.DEFAULT_USER_SLOTS_COLLECTION,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Firestore collection of each user's running-job slots (with that limit)",
    )
    parked_jobs_collection: str = Field(
        contract.DEFAULT_PARKED_JOBS_COLLECTION,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Firestore collection of the jobs waiting for a slot of their user's (with that limit)",
    )
    parking_sweep_s: float = Field(
        30.0,
        gt=0,
        description="how often a bridge releases the parked jobs of users with free slots (slots that "
        "lapsed with a crashed bridge's leases; releases that died half-way)",
    )
    cancel_sweep_s: float = Field(
        5.0,
        ge=0,
        description="how often a bridge ends, `cancelled`, the queued jobs their app cancelled, before their "
        "messages come (a collection-group query on the session template's collection: its index in "
        "deploy/pubsub-iam.sh); 0 = off: a queued job's cancel is then recorded when its message is taken",
    )
    dead_letter_topic: str = Field(
        "", description="topic id the bridge publishes unparseable or exhausted jobs to; empty = none"
    )
    dead_letter_ledger: str = Field(
        "fluxfillDeadLetters",
        pattern=r"^[A-Za-z0-9_-]*$",
        description="Firestore collection of dead-lettered message ids, so a redelivered message is "
        "dead-lettered once; empty = none",
    )
    bucket: str = Field(description="Cloud Storage bucket holding the originals, masks and results")
    original_template: str = Field(
        contract.DEFAULT_ORIGINAL_TEMPLATE, description="original photo; a final `*` matches its extension"
    )
    mask_template: str = Field(contract.DEFAULT_MASK_TEMPLATE, description="mask object")
    edited_template: str = Field(
        contract.DEFAULT_EDITED_TEMPLATE,
        description="result at full size in the original's format; the final `*` becomes jpg, png or webp",
    )
    result_format: Literal["original", "png"] = Field(
        "original",
        description="original: the result keeps the original's format (a JPEG spliced, HEIC/AVIF as JPEG); "
        "png: always a lossless PNG",
    )
    preview_template: str = Field(
        contract.DEFAULT_PREVIEW_TEMPLATE, description="preview, JPEG, longer side at most 512 px"
    )
    session_template: str = Field(contract.DEFAULT_SESSION_TEMPLATE, description="Firestore session document")
    runtime_config_document: str = Field(
        contract.DEFAULT_RUNTIME_CONFIG_DOCUMENT,
        pattern=r"^([A-Za-z0-9_-]+/[A-Za-z0-9_-]+)(/[A-Za-z0-9_-]+/[A-Za-z0-9_-]+)*$|^$",
        description="Firestore document of job defaults and experiments (`fluxfill config`); empty = none",
    )
    runtime_config_cache_s: float = Field(
        30.0, ge=0, description="how long the bridge uses that document before reading it again"
    )
    triton_url: str = Field("127.0.0.1:8001", description="Triton host:port for `triton_protocol`")
    triton_protocol: Literal["grpc-stream", "grpc", "http"] = Field(
        "grpc-stream",
        description="grpc-stream: flux_fill_stream with progress; grpc / http: unary flux_fill (fallback)",
    )
    reduce_context: bool = Field(
        True,
        description="send the model a crop at least twice its working size box-averaged to about that size, "
        "and composite its answer at full resolution here; false: always at full resolution",
    )
    max_concurrent_jobs: int = Field(
        1, ge=1, description="jobs run at once (and messages a pull holds; the push limit)"
    )
    job_deadline_s: float = Field(
        300.0,
        gt=0,
        le=MAX_TIMEOUT_S,
        description="a job running after this fails as timed out (sent as TIMEOUT_S: the model's "
        "max_run_seconds may stop it sooner)",
    )
    lease_s: float = Field(60.0, gt=0, description="a claim not renewed for this long may be taken over")
    lease_extension_s: int = Field(
        15,
        ge=10,
        le=600,
        description="Pub/Sub ack-deadline extension per renewal: a crashed bridge's "
        "messages come back after about this long",
    )
    max_delivery_attempts: int = Field(
        5, ge=1, description="after this many attempts a retryable failure fails the job and dead-letters it"
    )
    subscription_max_delivery_attempts: int = Field(
        0,
        ge=0,
        le=100,
        description="the job subscriptions' dead-letter policy's max_delivery_attempts: a job the bridge "
        "would give back (model not ready, busy, Firestore away, stopping) on one of the last two deliveries "
        "it allows is published anew to its topic instead, so that Pub/Sub never dead-letters it unclaimed; "
        "0 = not known, never",
    )
    progress_interval_s: float = Field(
        1.0, gt=0, description="least time between progress writes (also the cancel check period)"
    )
    max_object_bytes: int = Field(
        40_000_000, gt=0, description="larger originals or masks are refused unread"
    )
    push_slot_wait_s: float = Field(
        120.0,
        ge=0,
        le=600,
        description="push mode: a push waits this long for the model to be ready and a slot free before it "
        "is refused (503 not ready, 429 busy); each refusal spends one of the message's Pub/Sub delivery "
        "attempts",
    )
    upload_grace_s: float = Field(
        30.0,
        ge=0,
        le=600,
        description="an original or mask not in the bucket yet, or a session document not in Firestore yet, "
        "is waited for until this long after the job was published (an app that publishes before its writes "
        "land); 0 = missing fails at once (a missing document: orphaned)",
    )
    max_image_pixels: int = Field(
        8192 * 6144,
        gt=0,
        description="larger decoded images are refused (8192x6144: a 50 MP phone's full resolution)",
    )
    shutdown_grace_s: float = Field(
        6.0,
        ge=0,
        description="on SIGTERM, in-flight jobs get this long before they are cancelled and nacked "
        "(plus 3 s for that: fits Cloud Run's 10 s before SIGKILL)",
    )
    readiness_interval_s: float = Field(
        2.0, gt=0, description="how often Triton's model readiness is checked"
    )
    http_host: str = Field("0.0.0.0", description="address of /healthz, /readyz, /metrics and /push")  # noqa: S104
    http_port: int = Field(8080, ge=0, le=65535, description="port of that HTTP server; 0 = any free port")
    push_auth: bool = Field(True, description="verify the push OIDC token; false only for local use")
    push_audience: str = Field("", description="expected `aud` of push tokens (the endpoint URL)")
    push_service_account: str = Field("", description="expected `email` of push tokens")
    oidc_certs_url: str = Field(
        "https://www.googleapis.com/oauth2/v1/certs", description="Google's token signing certificates"
    )
    service_account_key_b64: SecretStr | None = Field(
        None, description="fallback only: base64 service-account key, used (with a warning) without ADC"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="least severity logged"
    )
    instance_id: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}",
        description="this bridge's name in logs and the session's `owner` (claims are fenced by a "
        "fresh claim id each); default the hostname plus pid and a random suffix",
    )

    @field_validator(*OBJECT_TEMPLATES, SESSION_TEMPLATE)
    @classmethod
    def _check_template(cls, template: str, info: ValidationInfo) -> str:
        return checked_template(template, info)

    @model_validator(mode="after")
    def _check_layout(self) -> "BridgeSettings":
        return checked_layout(self)

    @model_validator(mode="after")
    def _check_collections(self) -> "BridgeSettings":
        fields = {*BRIDGE_COLLECTIONS, SESSION_TEMPLATE}
        problem = collections_problem(self.model_dump(include=fields), variable)
        if problem is not None:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _check_mode(self) -> "BridgeSettings":
        if self.mode == "pull" and not self.subscription:
            raise ValueError("pull mode needs FLUXFILL_BRIDGE_SUBSCRIPTION")
        if self.mode == "push" and self.push_auth and not (self.push_audience and self.push_service_account):
            raise ValueError(
                "push mode verifies OIDC tokens: set FLUXFILL_BRIDGE_PUSH_AUDIENCE and "
                "FLUXFILL_BRIDGE_PUSH_SERVICE_ACCOUNT, or FLUXFILL_BRIDGE_PUSH_AUTH=false for local use"
            )
        if self.urgent_subscription and self.mode != "pull":
            raise ValueError(
                "FLUXFILL_BRIDGE_URGENT_SUBSCRIPTION is a pull subscription: push mode takes what is pushed"
            )
        if self.max_jobs_in_flight_per_user and not self.topic:
            raise ValueError(
                "FLUXFILL_BRIDGE_MAX_JOBS_IN_FLIGHT_PER_USER publishes parked jobs again: set "
                "FLUXFILL_BRIDGE_TOPIC to the jobs topic"
            )
        if self.subscription_max_delivery_attempts and not self.topic:
            raise ValueError(
                "FLUXFILL_BRIDGE_SUBSCRIPTION_MAX_DELIVERY_ATTEMPTS publishes jobs anew on their last "
                "deliveries: set FLUXFILL_BRIDGE_TOPIC to the jobs topic"
            )
        return self


def checked_template(template: str, info: ValidationInfo) -> str:
    """A path template setting's validator (the bridge's, and the command line's reading of its variables)."""
    problem = template_problem(template, str(info.field_name))
    if problem is not None:
        raise ValueError(problem)
    return template


Layout = TypeVar("Layout", bound=BaseModel)


def checked_layout(settings: Layout) -> Layout:
    """The object templates' validator: no two of them may name the same object."""
    problem = layout_problem(settings.model_dump(include=set(OBJECT_TEMPLATES)), variable)
    if problem is not None:
        raise ValueError(problem)
    return settings


def variable(field_name: str) -> str:
    """The environment variable that sets a field."""
    return f"{ENV_PREFIX}{field_name.upper()}"


# Settings that were, and what took their place: a deployment written for an earlier bridge is told why.
RETIRED_SETTINGS = {
    "MODEL_MAX_RUN_S": "the model caps TIMEOUT_S at its own max_run_seconds; remove it",
}


def likely_meant(name: str, candidates: Iterable[str], prefix: str) -> str | None:
    """The candidate that `name` most likely misspells (the bridge's start, the command line's warning), or
    None: alike by 0.8 at least, compared without `prefix`, which all of them share."""
    by_rest = {candidate.removeprefix(prefix): candidate for candidate in candidates}
    nearest = difflib.get_close_matches(name.upper().removeprefix(prefix), sorted(by_rest), n=1, cutoff=0.8)
    return by_rest[nearest[0]] if nearest else None


def environment_problems(environ: Mapping[str, str]) -> list[str]:
    """What the bridge's start refuses in `FLUXFILL_BRIDGE_*` variables beyond their values: each that sets
    nothing, as `VARIABLE: not a setting (...)` naming the setting it most likely meant, or why a retired one
    went (pydantic-settings reads its fields' variables only, so a misspelt one left that setting's default
    in force without a word); and a setting given twice, in two cases, with two values (it reads one of
    them, and says not which)."""
    known = {variable(name) for name in BridgeSettings.model_fields}
    problems = []
    given: dict[str, list[str]] = {}
    for name in sorted(environ):
        upper = name.upper()  # names are read in any case
        if not upper.startswith(ENV_PREFIX):
            continue
        if upper in known:
            given.setdefault(upper, []).append(name)
            continue
        retired = RETIRED_SETTINGS.get(upper.removeprefix(ENV_PREFIX))
        if retired is not None:
            hint = f"no longer one: {retired}"
        elif (meant := likely_meant(upper, known, ENV_PREFIX)) is not None:
            hint = f"did you mean {meant}?"
        else:
            hint = "`python -m fluxfill.bridge --help` lists them"
        problems.append(f"{name}: not a setting ({hint})")
    for names in given.values():
        if len({environ[name] for name in names}) > 1:
            problems.append(f"{' and '.join(names)}: one setting given twice, with two values; keep one")
    return problems


def settings_problems(error: ValidationError) -> str:
    """Each invalid setting as `VARIABLE: what is wrong`, joined by "; " (the bridge's start, and the bridge's
    limits read by `fluxfill submit`)."""
    problems = []
    for item in error.errors():
        location = item.get("loc") or ()
        where = variable(str(location[0])) if location else "settings"
        message = str(item.get("msg", "")).removeprefix("Value error, ")
        problems.append(f"{where}: {'required' if item.get('type') == 'missing' else message}")
    return "; ".join(problems)


# What setting_rows says for a default that is no value.
REQUIRED, GENERATED, EMPTY = "(required)", "(hostname-pid-random)", "(empty)"
NO_VALUE = frozenset({REQUIRED, GENERATED, EMPTY})


def setting_rows() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every setting: docs/bridge.md's table and `--help` both show these."""
    rows = []
    for name, field in BridgeSettings.model_fields.items():
        if field.is_required():
            default = REQUIRED
        elif field.default_factory is not None:
            default = GENERATED
        elif field.default is None or field.default == "":
            default = EMPTY
        else:
            default = str(field.default).lower() if isinstance(field.default, bool) else str(field.default)
        rows.append((variable(name), default, field.description or ""))
    return rows
