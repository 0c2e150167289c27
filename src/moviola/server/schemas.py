"""Request and response models of the API, for validation and the OpenAPI document (/v1/openapi.json).

Handlers return plain dicts (``jobs.to_video``); these models say what those look like. ``Video`` is the
openai SDK's Video object plus a ``moviola`` object of extras.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from moviola.server.keys import MAX_RATE_PER_MINUTE


class VideoError(BaseModel):
    code: str
    message: str


class Video(BaseModel):
    id: str
    object: Literal["video"] = "video"
    created_at: int
    completed_at: int | None
    expires_at: int | None
    status: Literal["queued", "in_progress", "completed", "failed"]
    progress: int = Field(ge=0, le=100)
    model: str
    prompt: str | None
    seconds: str
    size: str
    remixed_from_video_id: str | None
    error: VideoError | None
    moviola: dict[str, Any] = Field(description="Moviola's extras: kind (create, remix, edit, extension, "
                                                "storyboard), seed, steps, guidance, sampler, source_video_id, "
                                                "strength, transition, note, content_hash, weights_sha256 (the weights that "
                                                "made it), generation_seconds, "
                                                "expired, feedback, input_image_sha256, source_sha256 and card_image_sha256 (what it "
                                                "started from), extension_seconds, backward")


class VideoList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Video]
    first_id: str | None
    last_id: str | None
    has_more: bool


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool


class RequestBody(BaseModel):
    """A JSON request body: a field it does not name is an error ("unknown parameter"), as in OpenAI's API,
    so a misspelt option is never dropped in silence."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans(cls, value: Any, info: ValidationInfo) -> Any:
        """true is not a number: pydantic would take it as 1 (a 1 s storyboard, seed 1, strength 1)."""
        if isinstance(value, bool) and cls.model_fields[info.field_name].annotation not in (bool, "bool"):
            raise ValueError("expected a number or text, not true/false")
        return value


class RemixBody(RequestBody):
    prompt: str = Field(min_length=1, max_length=4000)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    strength: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False,
                                   description="Moviola extra: 0 keeps the source, 1 ignores it (default 0.6)")


class StoryboardCard(RequestBody):
    start: float = Field(ge=0, allow_inf_nan=False, description="When this card's segment starts, in seconds")
    prompt: str = Field(min_length=1, max_length=4000)
    image: str | None = Field(default=None, max_length=30_000_000,
                              description="Optional first frame of the segment, as a base64 data: URL")


class StoryboardBody(RequestBody):
    """``POST /v1/videos/storyboards`` (a Moviola extension): cards in order of start time, the first at 0."""

    cards: list[StoryboardCard] = Field(min_length=1, max_length=32)
    seconds: str | float | None = Field(default=None,
                                        description="The whole clip's length (default: the last card's start + 2)")
    size: str | None = Field(default=None, max_length=32)
    transition: Literal["cut", "continue"] = "cut"
    model: str | None = Field(default=None, max_length=200)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)


class FeedbackBody(RequestBody):
    rating: int | None = Field(default=None, ge=1, le=5)
    comment: str = Field(default="", max_length=4000)


class KeyBody(RequestBody):
    name: str
    quota_seconds_per_day: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    rate_per_minute: int | None = Field(default=None, gt=0, le=MAX_RATE_PER_MINUTE)
    admin: bool = False


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorBody


ERRORS = {s: {"model": ErrorResponse} for s in (400, 401, 404, 429)}
