"""The caller's messages, prepared as the original design prepared them before a call.

Two things happen to a declarative call's messages (``llm_call``), never to the messages of
``retry_with_validation``:

- ``response_format: {type: json_object}`` adds a system line asking for JSON (the
  original's words), unless a system message already asks for a JSON object;
- image parts (``{"type": "image_url", "image_url": {"url": ...}}``) whose URL is a local
  path become base64 ``data:`` URIs; ``http(s)`` URLs and ``data:`` URIs stay as they are.
  An image over ``max_image_size_kb`` is re-encoded as a smaller JPEG (this needs Pillow).
"""

from __future__ import annotations

import base64
import copy
import io
import mimetypes
from pathlib import Path
from typing import Any

from retrylib.errors import ConfigError, MissingExtraError

JSON_INSTRUCTION = ("You MUST respond with a valid JSON object. Do not include any text outside "
                    "of the JSON structure.")


def wants_json_object(response_format: Any) -> bool:
    """Whether ``response_format`` is ``{"type": "json_object", ...}``."""
    return isinstance(response_format, dict) and response_format.get("type") == "json_object"


def add_json_instruction(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A copy of ``messages`` whose system message asks for a JSON object.

    Args:
        messages: the conversation.

    Returns:
        With no system message, the same messages after a new system message holding
        :data:`JSON_INSTRUCTION`; else the first system message gets the instruction in front
        of its text, unless that text mentions "json object" or "valid json" already.
    """
    out = copy.deepcopy(messages)
    system = next((m for m in out if m.get("role") == "system"), None)
    if system is None:
        return [{"role": "system", "content": JSON_INSTRUCTION}, *out]
    text = system.get("content")
    asks = isinstance(text, str) and ("json object" in text.lower() or "valid json" in text.lower())
    if isinstance(text, str) and not asks:
        system["content"] = f"{JSON_INSTRUCTION} {text}".strip()
    return out


def _url_of(part: dict[str, Any]) -> str | None:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    return url if isinstance(url, str) else None


def has_images(messages: list[dict[str, Any]]) -> bool:
    """Whether any message holds an ``image_url`` content part."""
    return any(isinstance(m.get("content"), list)
               and any(isinstance(p, dict) and p.get("type") == "image_url" for p in m["content"])
               for m in messages)


def _find(path: str, image_directory: str | None) -> Path:
    # The original opened the path as given (relative to the working directory); a path
    # relative to image_directory is what its configs suggest, so that is tried next.
    candidates = [Path(path)]
    if image_directory and not Path(path).is_absolute():
        candidates.append(Path(image_directory) / path)
    for c in candidates:
        if c.is_file():
            return c
    raise ConfigError(f"image {path!r} not found (looked at: {', '.join(map(str, candidates))})")


def _shrink(data: bytes, max_kb: int, where: str) -> bytes:
    """JPEG-encode ``data`` with falling quality, then smaller sizes, until it fits (the
    original's schedule: quality 90, -15 per try down to 10, then 10% smaller per try)."""
    try:
        from PIL import Image
    except ImportError:
        raise MissingExtraError(f"image {where} is over max_image_size_kb ({max_kb}); shrinking "
                                "it needs Pillow: pip install 'retrylib[images]'",
                                extra="images") from None
    img: Any = Image.open(io.BytesIO(data))
    if img.mode in ("RGBA", "LA", "P"):  # JPEG has no alpha channel
        img = img.convert("RGB")
    quality, size = 90, img.size
    out = data
    for _ in range(5):
        buf = io.BytesIO()
        (img if img.size == size else img.resize(size)).save(buf, "JPEG", quality=quality,
                                                               optimize=True)
        out = buf.getvalue()
        if len(out) <= max_kb * 1024:
            break
        if quality > 10:
            quality = max(10, quality - 15)
        elif min(size) * 0.9 >= 50:
            size = (int(size[0] * 0.9), int(size[1] * 0.9))
    return out


def _data_uri(url: str, image_directory: str | None, max_kb: int) -> str:
    if url.startswith(("http://", "https://")):
        return url
    if url.startswith("data:"):
        payload = url.partition(",")[2]
        raw = base64.b64decode(payload)
        if len(raw) <= max_kb * 1024:
            return url
        small = _shrink(raw, max_kb, "data: URI")
        return "data:image/jpeg;base64," + base64.b64encode(small).decode()
    path = _find(url, image_directory)
    raw = path.read_bytes()
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if len(raw) > max_kb * 1024:
        raw, mime = _shrink(raw, max_kb, repr(url)), "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


def inline_images(messages: list[dict[str, Any]], image_directory: str | None = None,
                  max_image_size_kb: int = 500) -> list[dict[str, Any]]:
    """A copy of ``messages`` with every local image path as a base64 ``data:`` URI.

    Args:
        messages: the conversation.
        image_directory: where relative image paths are looked for after the working
            directory.
        max_image_size_kb: a bigger image is re-encoded as a smaller JPEG.

    Returns:
        New message dicts; parts other than images, and their other keys, are kept.

    Raises:
        ConfigError: an image file that does not exist, or an image part without a URL.
        MissingExtraError: an image over the size limit and no Pillow to shrink it.
    """
    out = copy.deepcopy(messages)
    for m in out:
        parts = m.get("content")
        if not isinstance(parts, list):
            continue
        for part in parts:
            if not (isinstance(part, dict) and part.get("type") == "image_url"):
                continue
            url = _url_of(part)
            if not url:
                raise ConfigError(f"an image_url content part has no url: {part!r}")
            image = part["image_url"] if isinstance(part["image_url"], dict) else {}
            part["image_url"] = {**image, "url": _data_uri(url, image_directory, max_image_size_kb)}
    return out
