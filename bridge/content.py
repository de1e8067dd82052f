"""A message's content: a string, or a list of parts in OpenAI's shape (text and images).

An image part names its image by URL (``https://…``) or carries it inline as a ``data:`` URI (base64). Other
kinds of part (audio, files) are refused by name: no provider gets them, and none is dropped silently.

Unions here are tagged with names written ``<like-this>``: pydantic puts the tag in an error's location, and
``app`` leaves such names out of the field it reports (``messages.0.content.1.image_url.url``).
"""

from __future__ import annotations

import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StringConstraints, Tag, field_validator
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

MAX_TEXT_CHARS = 200_000
MAX_PARTS = 512
# An http(s) URL of an image; inline images are bounded by MAX_IMAGE_BYTES (app) and the body limit.
MAX_IMAGE_URL_CHARS = 8192
# The image types both OpenAI and Anthropic take inline.
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
PART_TYPES = ("text", "image_url")

_DATA_URI = re.compile(r"^data:(?P<media_type>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)$", re.DOTALL)


def is_union_tag(name: str | int) -> bool:
    """Whether an error location's part is one of the union tags of this module (``<string>``, ``<parts>``, …)."""
    return isinstance(name, str) and name.startswith("<") and name.endswith(">")


@dataclass(frozen=True, slots=True)
class DataURI:
    """An inline image: its media type and its base64 data."""

    media_type: str
    data: str

    @property
    def size(self) -> int:
        """Bytes of the image once decoded (from the length of its base64 text)."""
        return len(self.data) * 3 // 4 - self.data[-2:].count("=")


def data_uri(url: str) -> DataURI | None:
    """The inline image of a ``data:`` URI; None for any other URL."""
    match = _DATA_URI.match(url)
    return DataURI(match["media_type"].lower(), match["data"]) if match else None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str = Field(max_length=MAX_TEXT_CHARS)


class ImageURL(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(
        min_length=1,
        description="an http(s) URL, or a data: URI of a PNG, JPEG, GIF or WebP image in base64",
    )
    detail: Literal["auto", "low", "high"] | None = None

    @field_validator("url")
    @classmethod
    def _image(cls, url: str) -> str:
        inline = data_uri(url)
        if inline is None:
            if not url.startswith(("https://", "http://")) or len(url) > MAX_IMAGE_URL_CHARS:
                raise PydanticCustomError(
                    "invalid_image_url",
                    "an image is an http(s) URL of at most {most} characters, or a data: URI in base64",
                    {"most": MAX_IMAGE_URL_CHARS},
                )
            return url
        if inline.media_type not in IMAGE_TYPES:
            raise PydanticCustomError(
                "unsupported_image_type",
                "an inline image is one of {types}, not {media_type}",
                {"types": ", ".join(IMAGE_TYPES), "media_type": inline.media_type},
            )
        try:
            binascii.a2b_base64(inline.data, strict_mode=True)
        except binascii.Error:
            raise PydanticCustomError("invalid_image_data", "the data of an inline image is not valid base64") from None
        return url


class ImagePart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["image_url"]
    image_url: ImageURL


class _UnsupportedPart(BaseModel):
    """Any other type of part: refused, naming its type."""

    type: Any = Field(default=None, validate_default=True)

    @field_validator("type", mode="before")
    @classmethod
    def _refuse(cls, kind: Any) -> Any:
        raise PydanticCustomError(
            "unsupported_content_part",
            "content parts of type {kind} are not supported: send text and image_url parts",
            {"kind": repr(kind)},
        )


def _part_tag(part: Any) -> str | None:
    if not isinstance(part, dict):
        return None
    return f"<{part['type']}>" if part.get("type") in PART_TYPES else "<unsupported>"


ContentPart = Annotated[
    Annotated[TextPart, Tag("<text>")]
    | Annotated[ImagePart, Tag("<image_url>")]
    | Annotated[SkipJsonSchema[_UnsupportedPart], Tag("<unsupported>")],
    Discriminator(
        _part_tag, custom_error_type="content_part_type", custom_error_message="a content part is an object with a type"
    ),
]


def _content_tag(content: Any) -> str | None:
    if isinstance(content, str):
        return "<string>"
    return "<parts>" if isinstance(content, list) else None


Content = Annotated[
    Annotated[Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)], Tag("<string>")]
    | Annotated[list[ContentPart], Field(min_length=1, max_length=MAX_PARTS), Tag("<parts>")],
    Discriminator(
        _content_tag,
        custom_error_type="content_type",
        custom_error_message="content is a string or a list of content parts",
    ),
]


def text_of(content: str | Sequence[object] | None) -> str:
    """The text of a content: the string, or its text parts joined (without a separator)."""
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(part.text for part in content if isinstance(part, TextPart))


def images_of(content: str | Sequence[object] | None) -> list[ImagePart]:
    return [part for part in content if isinstance(part, ImagePart)] if isinstance(content, list) else []


def digest_images(content: Any) -> Any:
    """A content with each inline image replaced by its digest, for a cache key that stays small."""
    if not isinstance(content, list):
        return content
    parts = []
    for part in content:
        url = part.get("image_url", {}).get("url") if isinstance(part, dict) else None
        if isinstance(url, str) and url.startswith("data:"):
            digest = "sha256:" + hashlib.sha256(url.encode()).hexdigest()
            part = {**part, "image_url": {**part["image_url"], "url": digest}}
        parts.append(part)
    return parts
