"""A job's results: uploaded create-only, described in the session, and recognised when an earlier attempt
uploaded them and died before its final write (verified and recorded instead of running the model again)."""

import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from fluxfill.bridge import intake
from fluxfill.bridge.contract import PREVIEW_MAX_SIDE, ErrorCode, JobMessage, SessionField
from fluxfill.bridge.errors import AmbiguousObjectError, PermanentJobError
from fluxfill.bridge.intake import Photo
from fluxfill.bridge.jpeg_splice import CoefficientsAhead
from fluxfill.bridge.ports import InpaintModel, ObjectInfo, ObjectStore
from fluxfill.bridge.result_image import EncodedResult, encode_result
from fluxfill.bridge.runtime_config import ResolvedParameters
from fluxfill.bridge.seeds import default_seed
from fluxfill.bridge.settings import BridgeSettings
from fluxfill.inpaint.geometry import Box

logger = structlog.get_logger(__name__)


def uploaded_result(
    objects: ObjectStore,
    job: JobMessage,
    settings: BridgeSettings,
    parameters: ResolvedParameters,
    result_key: str | None,
) -> dict[str, Any] | None:
    """The session fields for results an earlier attempt uploaded, or None when it uploaded no edited image.

    Uploads are create-only, made under a current claim with the session's fixed seed, and carry the
    session's `result_key`, so an edited image that carries it is this job's; its preview, when the attempt
    died before writing it, is made from it here (the model does not run again: a rerun's preview would show
    the new run's image beside the kept one). An edited image without the key (another session's of the same
    id: the app deleted one and made it again), one that does not decode, or two of them, take the result's
    path (PermanentJobError). `result_key` None: the session was first claimed by a bridge deployed before
    keys, whose uploads carry none; objects without one are its own then, as they were.
    """
    paths = result_paths(job, settings)  # edited: the template's `*`, any extension
    try:
        edited = objects.find(paths["edited"])
    except AmbiguousObjectError as error:
        raise PermanentJobError(
            ErrorCode.RESULT_PATH_TAKEN,
            f"{error}: which is the job's result cannot be told (results are written create-only and never "
            "replace an object): delete them, then publish the job again",
        ) from None
    if edited is None:
        return None
    kept = _kept_image(objects, edited, settings.max_image_pixels, result_key)
    preview_found = objects.find(paths["preview"])
    if preview_found is not None:
        _check_ours(preview_found, result_key)
    else:
        preview = intake.encode_preview(kept.pixels, PREVIEW_MAX_SIDE, kept.orientation, kept.preview_profile)
        if not objects.create(paths["preview"], preview, "image/jpeg", result_key):  # written since
            _check_kept(objects, paths["preview"], settings.max_image_pixels, result_key)
    seed = job.seed if job.seed is not None else default_seed(job)
    paths["edited"] = edited.path
    height, width = kept.pixels.shape[:2]  # upright, as a run records them
    return {
        SessionField.RESULT: {**_result(paths, (width, height), seed), "format": kept.format.lower()},
        SessionField.TIMINGS: {},
        SessionField.MODEL: {**_parameters(job, parameters, seed), "recovered": True},
    }


def result_paths(job: JobMessage, settings: BridgeSettings, extension: str = "*") -> dict[str, str]:
    """Where a job's edited image (with this extension in place of the template's `*`) and preview go."""
    edited = job.paths(settings.edited_template).removesuffix("*") + extension
    return {"edited": edited, "preview": job.paths(settings.preview_template)}


def upload_results(
    objects: ObjectStore,
    job: JobMessage,
    settings: BridgeSettings,
    photo: Photo,
    image: npt.NDArray[np.uint8],
    *,
    ahead: CoefficientsAhead | None = None,
    within: Box | None = None,
    before: npt.NDArray[np.uint8] | None = None,
    result_key: str | None,
    before_writing: Callable[[], None] = lambda: None,
) -> tuple[dict[str, str], EncodedResult]:
    """Write the edited image in the original's format and its preview; create-only, so an earlier
    attempt's upload is kept. `before_writing` (the claim's confirmation) runs on a thread beside the
    encoding, and nothing is written unless it returns; the preview is made beside the edited image, and
    the two objects are written at once (the JPEG splice and the codecs release the GIL). `ahead`: the
    original's coefficients being read (result_image.read_ahead); `within`: the only pixels the edit may
    have changed, when known; `before`: the photo as it was there, when `photo.pixels` was edited in place
    (fluxfill.bridge.context.Edit); `result_key`: the session's, carried by both objects."""
    paths = result_paths(job, settings)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="results") as pool:
        confirmed = pool.submit(contextvars.copy_context().run, before_writing)
        preview = pool.submit(
            intake.encode_preview, image, PREVIEW_MAX_SIDE, photo.orientation, photo.preview_profile
        )
        always_png = settings.result_format == "png"
        encoded = encode_result(
            photo, image, always_png=always_png, ahead=ahead, within=within, before=before
        )
        confirmed.result()
        paths["edited"] = result_paths(job, settings, encoded.extension)["edited"]
        preview_written = pool.submit(
            objects.create, paths["preview"], preview.result(), "image/jpeg", result_key
        )
        created = {"edited": objects.create(paths["edited"], encoded.data, encoded.content_type, result_key)}
        created["preview"] = preview_written.result()
    for name, path in paths.items():
        if not created[name]:  # an object was there already: an earlier attempt's, if it is ours and an image
            _check_kept(objects, path, settings.max_image_pixels, result_key)
    return paths, encoded


def _check_kept(objects: ObjectStore, path: str, max_pixels: int, result_key: str | None) -> None:
    """Raise PermanentJobError(RESULT_PATH_TAKEN) unless the object at `path` reads as a kept result."""
    found = objects.find(path)
    if found is None:  # deleted since: nothing of another's to record
        return
    _kept_image(objects, found, max_pixels, result_key)


def _kept_image(objects: ObjectStore, found: ObjectInfo, max_pixels: int, result_key: str | None) -> Photo:
    """An object found at a result's path, checked as ours and read as a photo is (one rule for a result kept
    when a create finds it and when a later attempt recovers it); PermanentJobError(RESULT_PATH_TAKEN) when it
    is not ours or does not read."""
    _check_ours(found, result_key)
    try:
        return intake.read_photo(objects.read(found), max_pixels, "object")
    except PermanentJobError as error:
        raise _taken(found.path, error) from None


def _check_ours(found: ObjectInfo, result_key: str | None) -> None:
    """Raise PermanentJobError(RESULT_PATH_TAKEN) unless the object was uploaded by this session's job. An
    image another session of the same id left (the app deleted a session and made it again, its folder
    kept) was taken for this job's: the session recorded done with the old edit."""
    if found.result_key != result_key:
        raise PermanentJobError(
            ErrorCode.RESULT_PATH_TAKEN,
            f"{found.path} holds an object this session's job did not upload (one left by an earlier session "
            "of the same id, or put there by hand): results are written create-only and never replace an "
            "object: delete it, then publish the job again",
        )


def _taken(path: str, error: Exception) -> PermanentJobError:
    return PermanentJobError(
        ErrorCode.RESULT_PATH_TAKEN,
        f"{path} already holds an object that is not an image this service reads ({error}); results are "
        "written create-only and never replace an object: delete it, then publish the job again",
    )


def _described(encoded: EncodedResult) -> dict[str, str]:
    """What the session's `result` says of the edited file: its format, how it was made and why."""
    described = {"format": encoded.format, "encoding": encoded.encoding}
    if encoded.note:
        described["encodingNote"] = encoded.note
    return described


def result_fields(
    job: JobMessage,
    model: InpaintModel,
    paths: dict[str, str],
    size: tuple[int, int],
    encoded: EncodedResult,
    *,
    seed: int,
    total_steps: int | None,
    parameters: ResolvedParameters,
    context_reduction: int = 1,
) -> dict[str, Any]:
    """The done session's progress, result and model fields (width, height = `size`; `context_reduction`:
    how many times smaller each side of the model's context was sent, fluxfill.bridge.context)."""
    return {
        SessionField.PROGRESS: {"step": total_steps, "total": total_steps},
        SessionField.RESULT: {**_result(paths, size, seed), **_described(encoded)},
        SessionField.MODEL: {
            "model": model.name,
            "protocol": model.protocol,
            **_parameters(job, parameters, seed),
            "contextReduction": context_reduction,
        },
    }


def _result(paths: dict[str, str], size: tuple[int, int], seed: int) -> dict[str, Any]:
    return {"paths": paths, "width": size[0], "height": size[1], "seed": seed}


def _parameters(job: JobMessage, parameters: ResolvedParameters, seed: int) -> dict[str, Any]:
    # What produced the image (the job's fields completed by the runtime config, and its experiment variant),
    # so results can be reproduced and compared. None: the model's own config.pbtxt default.
    return {**parameters.recorded(), "seed": seed, "priority": job.priority}
