"""What the VLM judge is asked and how its answer is read and turned into rewards.

Images are numbered 1..n in the message (the numbering people and VLMs use). The judge must
answer with one JSON object holding a fixed key:

    pick   {"best": i}                 the one image that suits the scenario best
    rank   {"ranking": [i1, ..., in]}  every image once, best first
    score  {"score": s}                one image, an integer 1..10

Echo-proof parsing: the format example in the instructions uses quoted placeholders
("<number>"), which fail validation, and the reader takes the LAST object in the reply that
passes validation (key present, indices integers in 1..n, a ranking complete and without
repeats, a score in [1, 10]). A judge that repeats the example before answering, or
reasons aloud before its final JSON, is read correctly; a reply with no valid object is an
InvalidReply, which the judge retries; so is a reply whose JSON nests deeper than the parser
goes.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any, Callable

from PIL import Image
from torch import Tensor

from ..errors import NoiseAlignError
from ..imaging import enlarged, to_pil

MODES = ("pick", "rank", "score")

# The four roles of the Demon paper's VLM experiment (Yeh et al., ICLR 2025, Table 5),
# paraphrased: the judge plays a person with a concrete use for the image.
SCENARIOS = {
    "teacher": "You are a teacher who wants illustrations for lesson materials that make the "
               "subject more engaging for pupils.",
    "artist": "You are a concept artist for films or games who needs early concept art of "
              "characters, places and scenes to move pre-production along.",
    "researcher": "You are a scientist who wants to picture complex data or phenomena, such as "
                  "molecules or weather systems, to understand and present them better.",
    "journalist": "You are a journalist looking for an eye-catching teaser image for an article, "
                  "to draw readers on a news site or on social media.",
}
NEUTRAL_SCENARIO = ("You are an expert judge of generated images: you value images that are "
                    "clear, well made and faithful to the text prompt.")

# Examples shown to the judge. Their values are quoted placeholders, never valid answers.
EXAMPLES = {
    "pick": '{"best": "<number>"}',
    "rank": '{"ranking": ["<best number>", "<second best number>", "...", "<worst number>"]}',
    "score": '{"score": "<integer>"}',
}


class InvalidReply(Exception):
    """The reply holds no answer that passes validation; the judge retries the request."""


def scenario_text(scenario: str) -> str:
    """A preset name (teacher, artist, researcher, journalist) or free text; "" is a neutral judge."""
    return SCENARIOS.get(scenario.strip().lower(), scenario.strip()) or NEUTRAL_SCENARIO


@dataclass(frozen=True)
class EncodedImage:
    """One candidate as sent: PNG bytes, and the SHA-256 of its pixels (not of the PNG, so the
    hash does not depend on the zlib that wrote the file)."""

    png: bytes
    sha256: str

    @property
    def data_url(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


def encode_images(outputs: Tensor, min_size: int, max_size: int) -> list[EncodedImage]:
    """Images in [0, 1], B x C x H x W with C in {1, 3}, as PNGs whose longest side lies in
    [min_size, max_size]: tiny images (8 x 8 digits) are enlarged by an integer factor with
    nearest-neighbour (pixels stay crisp squares), large ones reduced with Lanczos."""
    if outputs.ndim != 4 or outputs.shape[1] not in (1, 3):
        raise NoiseAlignError(f"the vlm reward needs images B x C x H x W with 1 or 3 channels, got "
                              f"shape {tuple(outputs.shape)}; use it with an image model")
    return [_encode(to_pil(image), min_size, max_size) for image in outputs]


def _encode(image: Image.Image, min_size: int, max_size: int) -> EncodedImage:
    image = enlarged(image, min_size)
    longest = max(image.size)
    if longest > max_size:
        scale = max_size / longest
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    digest = hashlib.sha256(f"{image.mode}{image.size}".encode() + image.tobytes()).hexdigest()
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return EncodedImage(buffer.getvalue(), digest)


def request_key(mode: str, scenario: str, prompt: str, images: list[EncodedImage]) -> str:
    """Content hash of a judge request: what replay matches a logged answer by."""
    content = json.dumps([mode, scenario, prompt, [image.sha256 for image in images]])
    return hashlib.sha256(content.encode()).hexdigest()


def instructions(mode: str, prompt: str, count: int) -> tuple[str, str]:
    """The text before the images and the text after them (the question and answer format)."""
    about = (f'The images were generated from the text prompt "{prompt}".' if prompt
             else "The images were generated without a text prompt.")
    if mode == "score":
        return (about.replace("images were", "image was"),
                "How well does this image suit your needs, from 1 (not at all) to 10 (perfectly)? "
                f'Answer with one JSON object of the form {EXAMPLES["score"]}, writing the integer '
                "from 1 to 10 without quotes in place of the placeholder.")
    before = f"{about} There are {count} candidate images, numbered 1 to {count}."
    if mode == "pick":
        return (before, "Which one image suits your needs best? Answer with one JSON object of the "
                f'form {EXAMPLES["pick"]}, writing the number of that image (an integer from 1 to '
                f"{count}) without quotes in place of the placeholder.")
    return (before, f"Rank all {count} images from the one that suits your needs best to the one "
            f'that suits them least. Answer with one JSON object of the form {EXAMPLES["rank"]}, '
            f"listing every image number from 1 to {count} exactly once, best first, as integers "
            "without quotes.")


def build_messages(mode: str, scenario: str, prompt: str, images: list[EncodedImage],
                   image_url: Callable[[EncodedImage], str]) -> list[dict[str, Any]]:
    """Chat messages: the scenario as the system message; the prompt, the numbered images and
    the question as the user message. `image_url` renders an image (a data URL to send, a hash
    reference to log)."""
    before, after = instructions(mode, prompt, len(images))
    content: list[dict[str, Any]] = [{"type": "text", "text": before}]
    for number, image in enumerate(images, start=1):
        if mode != "score":
            content.append({"type": "text", "text": f"Image {number}:"})
        content.append({"type": "image_url", "image_url": {"url": image_url(image)}})
    content.append({"type": "text", "text": after})
    return [{"role": "system", "content": scenario}, {"role": "user", "content": content}]


def reply_text(response: dict) -> str:
    """The assistant's text in a chat-completions response (string or list-of-parts content)."""
    try:
        content = response["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise InvalidReply("the response has no choices[0].message.content") from None
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str) or not content.strip():
        raise InvalidReply("the response's message content is empty")
    return content


def parse_answer(mode: str, text: str, count: int) -> Any:
    """The last valid answer in `text`: pick -> 0-based index; rank -> 0-based indices, best
    first; score -> a float in [1, 10]."""
    validate = {"pick": _pick, "rank": _rank, "score": _score}[mode]
    for candidate in reversed(_json_objects(text)):
        try:
            return validate(candidate, count)
        except (KeyError, TypeError, ValueError):
            continue
    raise InvalidReply(f"no valid answer {EXAMPLES[mode]} for {count} image(s) in the reply")


def _json_objects(text: str) -> list[dict]:
    """Every JSON object that starts somewhere in `text` (nested ones included), in order. JSON
    nested deeper than the parser goes makes the whole reply invalid (an InvalidReply)."""
    decoder, found = json.JSONDecoder(), []
    for start, char in enumerate(text):
        if char == "{":
            try:
                value, _ = decoder.raw_decode(text, start)
            except ValueError:
                continue
            except RecursionError:
                raise InvalidReply("the reply nests JSON too deeply to read") from None
            if isinstance(value, dict):
                found.append(value)
    return found


def _integer(value: Any) -> int:
    """A JSON integer, or a string of digits (some models quote numbers); never a bool."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise TypeError(f"not an integer: {value!r}")


def _number(value: int, count: int) -> int:
    if not 1 <= value <= count:
        raise ValueError(f"image number {value} outside 1..{count}")
    return value - 1


def _pick(answer: dict, count: int) -> int:
    return _number(_integer(answer["best"]), count)


def _rank(answer: dict, count: int) -> list[int]:
    ranking = [_number(_integer(value), count) for value in answer["ranking"]]
    if sorted(ranking) != list(range(count)):
        raise ValueError("the ranking does not list every image exactly once")
    return ranking


def _score(answer: dict, count: int) -> float:
    value = answer["score"]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"not a number: {value!r}")
    score = float(value)
    if not 1.0 <= score <= 10.0:  # also rejects NaN
        raise ValueError(f"score {score} outside 1..10")
    return score


def rewards_of(mode: str, answer: Any, count: int) -> list[float]:
    """Rewards in [-1, 1] of the images of one request.

    pick: the chosen +1, the others -1 (Demon's protocol). rank: evenly spaced from +1 (best)
    to -1 (worst), 0 for a lone image. score: s in [1, 10] mapped linearly, (s - 5.5) / 4.5.
    """
    if mode == "pick":
        return [1.0 if index == answer else -1.0 for index in range(count)]
    if mode == "rank":
        values = [0.0] * count
        for position, index in enumerate(answer):
            values[index] = 1.0 - 2.0 * position / (count - 1) if count > 1 else 0.0
        return values
    return [(answer - 5.5) / 4.5]
