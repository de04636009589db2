"""The VLM judge against a scripted OpenAI-compatible server on 127.0.0.1.

Unless a test scripts its replies, the server judges like a VLM that likes bright images: it
decodes the PNGs it receives and answers pick / rank / score by mean brightness. So the
expected rewards follow from the test's own images, and a judge that lost, reordered or
mis-encoded an image would get them wrong.
"""

from __future__ import annotations

import base64
import io
import json
import signal
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image

from noisealign.errors import NoiseAlignError
from noisealign.rewards.registry import parse_reward
from noisealign.rewards.vlm import VlmJudge, VlmJudgeConfig, vlm_options_from_args
from noisealign.rewards.vlm_client import redact, safe_url
from noisealign.rewards.vlm_log import JsonlLog
from noisealign.rewards.vlm_protocol import (EXAMPLES, SCENARIOS, InvalidReply, encode_images,
                                             parse_answer)

KEY = "sk-test-9f8e7d6c5b4a-SECRET"
LEVELS = [0.3, 0.8, 0.1, 0.6, 0.45]  # mean brightness of the test candidates


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict (sent as JSON) or str (sent as is)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False  # close the connection without answering


def chat(content: str | None) -> Reply:
    return Reply(body={"id": "x", "object": "chat.completion",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})


@dataclass
class Seen:
    at: float
    headers: dict[str, str]
    body: dict
    path: str = ""

    def images(self) -> list[np.ndarray]:
        urls = [part["image_url"]["url"] for part in self.body["messages"][1]["content"]
                if part["type"] == "image_url"]
        return [np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))) for url in urls]

    def text(self) -> str:
        parts = self.body["messages"][1]["content"]
        return " ".join(part["text"] for part in parts if part["type"] == "text")


def brightness_judge(seen: Seen) -> Reply:
    """The default answer: a judge that prefers bright images."""
    means = [image.mean() / 255 for image in seen.images()]
    order = sorted(range(len(means)), key=lambda i: -means[i])
    text = seen.text()
    if '"ranking"' in text:
        return chat(json.dumps({"ranking": [i + 1 for i in order]}))
    if '"best"' in text:
        return chat(f'Image {order[0] + 1} is brightest.\n```json\n{{"best": {order[0] + 1}}}\n```')
    return chat(json.dumps({"score": round(1 + 9 * means[0])}))


class FakeVlm:
    """Scripted replies (Reply, or a function of the request) first, then brightness_judge."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.script: deque[Reply | Callable[[Seen], Reply]] = deque()
        self.seen: list[Seen] = []
        self.active = self.max_active = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                seen = Seen(time.monotonic(), dict(self.headers), body, self.path)
                with fake.lock:
                    fake.seen.append(seen)
                    fake.active += 1
                    fake.max_active = max(fake.max_active, fake.active)
                    step = fake.script.popleft() if fake.script else brightness_judge
                try:
                    reply = step(seen) if callable(step) else step
                    time.sleep(fake.delay + reply.delay)
                    if reply.drop:
                        self.close_connection = True
                        return
                    payload = (reply.body if isinstance(reply.body, str) else json.dumps(reply.body)).encode()
                    self.send_response(reply.status)
                    for name, value in {"Content-Type": "application/json", **reply.headers}.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                finally:
                    with fake.lock:
                        fake.active -= 1

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # the client hung up first (timeout tests)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    server = FakeVlm()
    yield server
    server.stop()


def candidates(levels: list[float] = LEVELS, size: int = 8) -> torch.Tensor:
    noise = torch.rand(len(levels), 1, size, size, generator=torch.Generator().manual_seed(0))
    return (torch.tensor(levels)[:, None, None, None] + 0.1 * (noise - 0.5)).clamp(0, 1)


def sent_means(outputs: torch.Tensor) -> list[float]:
    """Mean brightness of the images as the judge sees them (8-bit)."""
    return [float(v) for v in ((outputs * 255).round() / 255).flatten(1).mean(1)]


def make_judge(fake: FakeVlm, run_dir: Path, **options: Any) -> VlmJudge:
    settings = dict(base_url=fake.url, model="fake-vl", backoff_s=0.01, timeout_s=2.0, max_retries=3)
    judge = VlmJudge(VlmJudgeConfig(**{**settings, **options}), api_key=KEY)
    judge.attach_run_dir(run_dir)
    return judge


def log_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "vlm_log.jsonl").read_text().splitlines()]


# --- rewards per mode -------------------------------------------------------------------------

def test_pick_gives_the_judges_choice_plus_one_and_sends_what_it_should(fake, tmp_path):
    outputs = candidates()
    judge = make_judge(fake, tmp_path, scenario="teacher")
    rewards = judge(outputs, ["3"] * len(outputs))
    best = int(np.argmax(sent_means(outputs)))
    assert rewards.dtype == torch.float32 and rewards.shape == (len(outputs),)
    assert rewards.tolist() == [1.0 if i == best else -1.0 for i in range(len(outputs))]
    (seen,) = fake.seen
    assert seen.headers["Authorization"] == f"Bearer {KEY}"
    assert seen.body["model"] == "fake-vl" and seen.body["temperature"] == 0.0
    assert seen.body["response_format"] == {"type": "json_object"}
    assert seen.body["messages"][0] == {"role": "system", "content": SCENARIOS["teacher"]}
    assert '"3"' in seen.text() and "numbered 1 to 5" in seen.text()
    assert [image.shape for image in seen.images()] == [(128, 128)] * 5  # 8 x 8 digits enlarged
    assert judge.differentiable is False and judge.name == "vlm:pick"


def test_rank_maps_positions_to_evenly_spaced_rewards(fake, tmp_path):
    outputs = candidates()
    rewards = make_judge(fake, tmp_path, mode="rank")(outputs, [""] * 5)
    order = np.argsort(sent_means(outputs))[::-1]
    expected = np.empty(5)
    expected[order] = [1.0, 0.5, 0.0, -0.5, -1.0]
    assert rewards.tolist() == pytest.approx(expected.tolist())
    assert "without a text prompt" in fake.seen[0].text()


def test_score_asks_once_per_image_and_maps_one_to_ten_onto_minus_one_one(fake, tmp_path):
    outputs = candidates()
    rewards = make_judge(fake, tmp_path, mode="score")(outputs, [str(d) for d in range(5)])
    scores = [round(1 + 9 * mean) for mean in sent_means(outputs)]
    assert rewards.tolist() == pytest.approx([(s - 5.5) / 4.5 for s in scores])
    assert len(fake.seen) == 5 and all(len(seen.images()) == 1 for seen in fake.seen)
    prompts = sorted(next(d for d in "01234" if f'"{d}"' in seen.text()) for seen in fake.seen)
    assert prompts == list("01234")


def test_pick_runs_a_tournament_when_the_batch_exceeds_max_images(fake, tmp_path):
    levels = [0.2, 0.5, 0.3, 0.9, 0.1, 0.7, 0.4]
    outputs = candidates(levels)
    rewards = make_judge(fake, tmp_path, max_images_per_request=3)(outputs, [""] * 7)
    assert int(rewards.argmax()) == int(np.argmax(sent_means(outputs)))
    assert sorted(rewards.tolist()) == [-1.0] * 6 + [1.0]
    assert sorted(len(seen.images()) for seen in fake.seen) == [2, 2, 3, 3]  # groups 3, 2, 2; then 3 winners
    brightest = max(image.mean() for seen in fake.seen for image in seen.images())
    assert max(image.mean() for image in fake.seen[-1].images()) == brightest  # the final has the best


def test_rank_splits_into_groups_ranked_on_their_own(fake, tmp_path):
    outputs = candidates([0.2, 0.9, 0.8, 0.1])
    rewards = make_judge(fake, tmp_path, mode="rank", max_images_per_request=2)(outputs, [""] * 4)
    assert rewards.tolist() == [-1.0, 1.0, 1.0, -1.0]
    assert len(fake.seen) == 2


def test_pick_and_rank_refuse_a_batch_of_mixed_prompts(fake, tmp_path):
    with pytest.raises(NoiseAlignError, match="mixes prompts"):
        make_judge(fake, tmp_path)(candidates([0.1, 0.9]), ["cat", "dog"])
    assert fake.seen == []


# --- structured output that an echo cannot fool -----------------------------------------------

@pytest.mark.parametrize("mode", ["pick", "rank", "score"])
def test_the_format_example_is_sent_but_is_never_a_valid_answer(fake, tmp_path, mode):
    outputs = candidates()[:3]
    make_judge(fake, tmp_path, mode=mode)(outputs, ["x"] * 3)
    assert EXAMPLES[mode] in fake.seen[0].text()
    with pytest.raises(InvalidReply):
        parse_answer(mode, f"Sure! {EXAMPLES[mode]}", 3)


def test_an_echoed_example_before_or_after_the_answer_does_not_fool_the_parser(fake, tmp_path):
    outputs = candidates([0.1, 0.2, 0.9, 0.3])
    fake.script.extend([chat(f'You asked for {EXAMPLES["pick"]}. My answer: {{"best": 2}}'),
                        chat(f'{{"best": 4}} (format was {EXAMPLES["pick"]})')])
    judge = make_judge(fake, tmp_path)
    assert judge(outputs, [""] * 4).tolist() == [-1.0, 1.0, -1.0, -1.0]
    assert judge(outputs, [""] * 4).tolist() == [-1.0, -1.0, -1.0, 1.0]
    assert len(fake.seen) == 2  # both read on the first attempt


def test_parser_takes_the_last_valid_object_and_checks_rankings():
    assert parse_answer("pick", '{"best": 1} on reflection {"best": 3}', 3) == 2
    assert parse_answer("pick", '{"best": 3} then {"best": 7}', 3) == 2  # 7 is out of range
    assert parse_answer("rank", '{"ranking": [2, 3, 1]}', 3) == [1, 2, 0]
    assert parse_answer("score", '{"score": 7}', 1) == 7.0
    for mode, reply, count in [("rank", '{"ranking": [1, 1, 2]}', 3), ("rank", '{"ranking": [1, 2]}', 3),
                               ("pick", '{"best": true}', 3), ("pick", '{"best": 0}', 3),
                               ("score", '{"score": NaN}', 1), ("score", '{"score": 11}', 1),
                               ("pick", "the second one", 3)]:
        with pytest.raises(InvalidReply):
            parse_answer(mode, reply, count)


BAD_REPLIES = {
    "out-of-range index": chat('{"best": 9}'),
    "index zero": chat('{"best": 0}'),
    "non-JSON body": Reply(body="<html>502 gateway</html>"),
    "no choices": Reply(body={"choices": []}),
    "null content": chat(None),
    "prose only": chat("I like the third one."),
    "dropped connection": Reply(drop=True),
    "server error": Reply(status=503, body={"error": {"message": "overloaded"}}),
}


@pytest.mark.parametrize("name", list(BAD_REPLIES))
def test_a_bad_reply_is_retried_and_the_retry_answers(fake, tmp_path, name):
    outputs = candidates([0.1, 0.9, 0.3, 0.2])
    fake.script.append(BAD_REPLIES[name])
    rewards = make_judge(fake, tmp_path)(outputs, [""] * 4)
    assert rewards.tolist() == [-1.0, 1.0, -1.0, -1.0]
    records = log_records(tmp_path)
    assert [(r["attempt"], r["outcome"]) for r in records] == [(1, "retry"), (2, "ok")]
    assert records[0]["request_id"] == records[1]["request_id"] and records[0]["error"]


NESTED_REPLIES = {
    "unclosed body": Reply(body="[" * 100000),
    "deep body": Reply(body='{"choices": ' + "[" * 500 + "]" * 500 + "}"),
    "unclosed answer": chat('{"a": ' * 100000),
}


@pytest.mark.parametrize("name", list(NESTED_REPLIES))
def test_deeply_nested_json_is_a_malformed_reply_logged_and_retried(fake, tmp_path, name):
    fake.script.append(NESTED_REPLIES[name])
    rewards = make_judge(fake, tmp_path)(candidates([0.1, 0.9]), [""] * 2)
    assert rewards.tolist() == [-1.0, 1.0]
    records = log_records(tmp_path)
    assert [r["outcome"] for r in records] == ["retry", "ok"] and "nest" in records[0]["error"]


def test_deeply_nested_json_to_the_end_is_one_noisealign_line(fake, tmp_path):
    fake.script.extend([Reply(body="[" * 100000), chat('{"a": ' * 100000)])
    with pytest.raises(NoiseAlignError) as caught:
        make_judge(fake, tmp_path, max_retries=1)(candidates([0.1, 0.9]), [""] * 2)
    assert "\n" not in str(caught.value) and "too deeply" in str(caught.value)
    assert [r["outcome"] for r in log_records(tmp_path)] == ["retry", "failed"]


# --- timeouts, backoff, errors ----------------------------------------------------------------

def test_a_reply_slower_than_the_timeout_is_retried(fake, tmp_path):
    fake.script.append(lambda seen: Reply(delay=1.0, body=brightness_judge(seen).body))
    outputs = candidates([0.9, 0.1])
    started = time.monotonic()
    rewards = make_judge(fake, tmp_path, timeout_s=0.3)(outputs, [""] * 2)
    assert rewards.tolist() == [1.0, -1.0]
    assert time.monotonic() - started < 1.0
    assert "timed out after 0.3 s" in log_records(tmp_path)[0]["error"]


def test_backoff_doubles_between_attempts(fake, tmp_path):
    fake.script.extend([Reply(status=500, body="boom"), Reply(status=502, body="boom")])
    make_judge(fake, tmp_path, backoff_s=0.15)(candidates([0.1, 0.9]), [""] * 2)
    gaps = np.diff([seen.at for seen in fake.seen])
    assert len(fake.seen) == 3 and gaps[0] >= 0.15 and gaps[1] >= 0.3


def test_429_waits_for_retry_after(fake, tmp_path):
    fake.script.append(Reply(status=429, body={"error": "slow down"}, headers={"Retry-After": "0.4"}))
    make_judge(fake, tmp_path, backoff_s=0.01)(candidates([0.1, 0.9]), [""] * 2)
    assert len(fake.seen) == 2 and fake.seen[1].at - fake.seen[0].at >= 0.4
    assert [r["status"] for r in log_records(tmp_path)] == [429, 200]


def test_giving_up_raises_one_line_naming_endpoint_and_error(fake, tmp_path):
    fake.script.extend([Reply(status=500, body="internal\nerror")] * 3)
    with pytest.raises(NoiseAlignError) as caught:
        make_judge(fake, tmp_path, max_retries=2)(candidates([0.1, 0.9]), [""] * 2)
    message = str(caught.value)
    assert "\n" not in message and fake.url in message and "HTTP 500" in message and "3 attempt" in message
    assert len(fake.seen) == 3
    assert [r["outcome"] for r in log_records(tmp_path)] == ["retry", "retry", "failed"]


def test_malformed_replies_to_the_end_raise_instead_of_guessing(fake, tmp_path):
    fake.script.extend([chat(f"Answer: {EXAMPLES['pick']}")] * 2)
    with pytest.raises(NoiseAlignError, match="no valid answer"):
        make_judge(fake, tmp_path, max_retries=1)(candidates([0.1, 0.9]), [""] * 2)


def test_401_fails_at_once_without_leaking_the_key(fake, tmp_path):
    fake.script.append(Reply(status=401, body={"error": {"message": f"Incorrect API key provided: {KEY}"}}))
    with pytest.raises(NoiseAlignError) as caught:
        make_judge(fake, tmp_path, max_retries=3)(candidates([0.1, 0.9]), [""] * 2)
    message = str(caught.value)
    assert len(fake.seen) == 1
    assert "HTTP 401" in message and "NOISEALIGN_VLM_API_KEY" in message and "\n" not in message
    assert KEY not in message


def test_a_fatal_error_stops_the_rest_of_the_batch(fake, tmp_path):
    fake.script.append(Reply(status=404, body={"error": "model not found"}))
    with pytest.raises(NoiseAlignError, match="HTTP 404.*base URL"):
        make_judge(fake, tmp_path, mode="score", max_concurrency=1)(candidates(), [""] * 5)
    assert len(fake.seen) == 1


def test_an_unreachable_endpoint_fails_with_a_clear_line(tmp_path):
    dead = FakeVlm()
    dead.stop()
    judge = VlmJudge(VlmJudgeConfig(base_url=dead.url, model="m", max_retries=1, backoff_s=0.01))
    with pytest.raises(NoiseAlignError, match="2 attempt.*cannot connect"):
        judge(candidates([0.1, 0.9]), [""] * 2)


def test_json_mode_is_dropped_when_the_server_rejects_it(fake, tmp_path):
    fake.script.append(Reply(status=400, body={"error": "response_format is not supported"}))
    rewards = make_judge(fake, tmp_path, max_retries=0)(candidates([0.1, 0.9]), [""] * 2)
    assert rewards.tolist() == [-1.0, 1.0]
    assert "response_format" in fake.seen[0].body and "response_format" not in fake.seen[1].body


# --- the key, the log, replay -----------------------------------------------------------------

def test_the_key_is_never_written_to_the_run_directory(fake, tmp_path):
    fake.script.extend([chat(f"my key is {KEY}, and "), Reply(status=500, body=f"bad key {KEY}")])
    judge = make_judge(fake, tmp_path, max_retries=3)
    judge(candidates([0.1, 0.9]), [""] * 2)
    records = log_records(tmp_path)
    assert [r["outcome"] for r in records] == ["retry", "retry", "ok"]
    assert all(r["headers"]["Authorization"] == "Bearer ***" for r in records)
    assert "***" in records[0]["reply"] and "***" in records[1]["response"]
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in json.dumps(asdict(judge.config))


def test_a_short_key_is_sent_but_never_mangles_replies_or_the_log(fake, tmp_path):
    outputs = candidates([0.1, 0.9])
    config = VlmJudgeConfig(base_url=fake.url, model="fake-vl", max_retries=0)
    judge = VlmJudge(config, api_key="a")
    judge.attach_run_dir(tmp_path)
    assert judge(outputs, [""] * 2).tolist() == [-1.0, 1.0]
    assert fake.seen[0].headers["Authorization"] == "Bearer a"
    (record,) = log_records(tmp_path)
    assert record["images"] == [image.sha256 for image in encode_images(outputs, 128, 512)]
    assert record["response"]["object"] == "chat.completion" and record["headers"]["Authorization"] == "Bearer ***"


def test_redact_hides_keys_of_eight_characters_or_more_and_leaves_shorter_ones_alone():
    assert redact("a banana", "a") == redact("a banana", "ana") == "a banana"
    assert redact(f"sk-{KEY}, {json.dumps(KEY)}", KEY) == 'sk-***, "***"'
    assert redact('echo "quo\\"te-12345"', 'quo"te-12345') == 'echo "***"'


def test_credentials_in_the_base_url_are_used_for_requests_but_never_shown(fake, tmp_path, capfd):
    secrets = {"password": "pw-0123-hidden", "api-key": "k1-hidden", "key": "k2-hidden", "token": "t3-hidden",
               "sig": "s4-hidden"}
    host = fake.url.split("//", 1)[1]  # 127.0.0.1:PORT/v1
    query = "&".join(f"{name}={value}" for name, value in secrets.items() if name != "password")
    url = f"http://me:{secrets['password']}@{host}?{query}&api-version=2024-06-01"
    fake.script.extend([Reply(status=500, body="down")] * 2)
    judge = VlmJudge(VlmJudgeConfig(base_url=url, model="fake-vl", backoff_s=0.01, max_retries=1), api_key="")
    judge.attach_run_dir(tmp_path)
    with pytest.raises(NoiseAlignError) as caught:
        judge(candidates([0.1, 0.9]), [""] * 2)
    sent = fake.seen[0]
    assert sent.path == f"/v1/chat/completions?{query}&api-version=2024-06-01"
    assert sent.headers["Authorization"] == "Basic " + base64.b64encode(f"me:{secrets['password']}".encode()).decode()
    shown = safe_url(url)
    assert shown == f"http://***@{host}?api-key=***&key=***&token=***&sig=***&api-version=2024-06-01"
    message, log = str(caught.value), (tmp_path / "vlm_log.jsonl").read_text()
    assert f"{fake.url}/chat/completions?api-key=***&key=***&token=***&sig=***&api-version=2024-06-01" in message
    assert judge.config.base_url == shown and log_records(tmp_path)[0]["headers"]["Authorization"] == "Basic ***"
    with pytest.raises(NoiseAlignError) as refused:
        VlmJudgeConfig(base_url=f"ftp://me:{secrets['password']}@{host}")
    for text in (message, log, json.dumps(asdict(judge.config)), str(refused.value), capfd.readouterr().err):
        assert not [secret for secret in secrets.values() if secret in text], text


def test_the_log_scrubs_the_key_from_whatever_it_is_given(tmp_path):
    log = JsonlLog(tmp_path / "vlm_log.jsonl", KEY)
    log.write({"reply": f"echo {KEY}", "nested": {"quoted": json.dumps(KEY)}})
    text = (tmp_path / "vlm_log.jsonl").read_text()
    assert KEY not in text and json.loads(text)["reply"] == "echo ***"


def test_log_records_hashes_not_images_and_timing(fake, tmp_path):
    outputs = candidates()
    make_judge(fake, tmp_path)(outputs, ["7"] * 5)
    (record,) = log_records(tmp_path)
    assert record["images"] == [image.sha256 for image in encode_images(outputs, 128, 512)]
    urls = [part["image_url"]["url"] for part in record["request"]["messages"][1]["content"]
            if part["type"] == "image_url"]
    assert urls == [f"sha256:{digest}" for digest in record["images"]]
    assert record["seconds"] >= 0 and record["prompt"] == "7" and record["answer"] in range(5)


def test_replay_reproduces_the_rewards_without_the_endpoint(tmp_path):
    server = FakeVlm()
    outputs = candidates()
    judges = {mode: make_judge(server, tmp_path / mode, mode=mode) for mode in ("pick", "score")}
    first = {mode: judge(outputs, ["5"] * 5) for mode, judge in judges.items()}
    server.stop()
    asked = len(server.seen)
    for mode in ("pick", "score"):
        config = VlmJudgeConfig(base_url=server.url, model="", mode=mode, max_retries=0)
        replay = VlmJudge(config, replay_from=tmp_path / mode / "vlm_log.jsonl")
        replay.attach_run_dir(tmp_path / f"{mode}-again")
        assert torch.equal(replay(outputs, ["5"] * 5), first[mode])
        assert {r["outcome"] for r in log_records(tmp_path / f"{mode}-again")} == {"replayed"}
        with pytest.raises(NoiseAlignError, match="not in"):
            replay(outputs.flip(0) * 0.5, ["5"] * 5)
    assert len(server.seen) == asked


def test_replay_serves_repeated_requests_in_logged_order(fake, tmp_path):
    outputs = candidates([0.1, 0.9, 0.5])
    fake.script.extend([chat('{"best": 1}'), chat('{"best": 3}')])
    judge = make_judge(fake, tmp_path)
    answers = [judge(outputs, [""] * 3).tolist() for _ in range(2)]
    replay = VlmJudge(VlmJudgeConfig(mode="pick"), replay_from=tmp_path)
    assert [replay(outputs, [""] * 3).tolist() for _ in range(2)] == answers
    with pytest.raises(NoiseAlignError, match="more often than logged"):
        replay(outputs, [""] * 3)


# --- concurrency and rate ---------------------------------------------------------------------

def test_concurrent_requests_stay_within_max_concurrency(tmp_path):
    server = FakeVlm(delay=0.15)
    try:
        make_judge(server, tmp_path, mode="score", max_concurrency=3)(candidates(LEVELS * 2), [""] * 10)
    finally:
        server.stop()
    assert len(server.seen) == 10 and server.max_active == 3


def test_ctrl_c_stops_the_batch_at_once_and_no_request_starts_after_it(tmp_path):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("SIGINT reaches the main thread only")
    server = FakeVlm(delay=3.0)  # every answer comes after the attempt timed out
    judge = make_judge(server, tmp_path, mode="score", max_concurrency=2, timeout_s=1.0)
    signalled: list[float] = []

    def ctrl_c() -> None:  # before the two attempts in flight time out
        signalled.append(time.monotonic())
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    interrupt = threading.Timer(0.5, ctrl_c)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)   # even if the runner ignores SIGINT
    interrupt.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            judge(candidates(), [""] * 5)
        latency = time.monotonic() - signalled[0]
        time.sleep(1.5)  # the attempts in flight have timed out by now: no retry may follow
    finally:
        interrupt.cancel()
        signal.signal(signal.SIGINT, previous)
        server.stop()
    print(f"Ctrl-C: the judge returned {latency:.3f} s later; {len(server.seen)} request(s) sent in all")
    assert latency < 1.0 and len(server.seen) == 2


def test_requests_per_minute_spaces_the_requests(fake, tmp_path):
    judge = make_judge(fake, tmp_path, mode="score", max_concurrency=4, requests_per_minute=400)
    judge(candidates()[:4], [""] * 4)
    starts = sorted(seen.at for seen in fake.seen)
    # 0.15 s apart when sent; arrival at the stub server jitters with thread scheduling on a busy
    # machine, so allow 20%: without the limit the four would arrive within milliseconds
    assert min(np.diff(starts)) >= 0.8 * 0.15


# --- configuration ----------------------------------------------------------------------------

def test_config_from_environment_and_overrides():
    env = {"OPENAI_BASE_URL": "http://a:1/v1", "NOISEALIGN_VLM_MODEL": "llava",
           "NOISEALIGN_VLM_SCENARIO": "artist"}
    config = VlmJudgeConfig.from_env(env, timeout_s=5.0, mode=None)
    assert (config.base_url, config.model, config.scenario, config.timeout_s, config.mode) == \
        ("http://a:1/v1", "llava", "artist", 5.0, "pick")
    env["NOISEALIGN_VLM_BASE_URL"] = "http://b:2/v1"
    assert VlmJudgeConfig.from_env(env).base_url == "http://b:2/v1"
    assert VlmJudgeConfig(**json.loads(json.dumps(asdict(config)))) == config
    with pytest.raises(NoiseAlignError, match="unknown VLM judge option"):
        VlmJudgeConfig.from_env(env, colour="red")
    with pytest.raises(NoiseAlignError, match="max_images_per_request"):
        VlmJudgeConfig(max_images_per_request=1)


def test_the_openai_key_goes_only_to_the_openai_endpoint():
    env = {"OPENAI_API_KEY": "sk-openai"}
    assert VlmJudgeConfig().api_key(env) == "sk-openai"
    assert VlmJudgeConfig(base_url="http://127.0.0.1:9/v1").api_key(env) is None
    env["NOISEALIGN_VLM_API_KEY"] = "sk-mine"
    assert VlmJudgeConfig(base_url="http://127.0.0.1:9/v1").api_key(env) == "sk-mine"


def test_reward_spec_and_cli_options(monkeypatch):
    monkeypatch.setenv("NOISEALIGN_VLM_MODEL", "qwen2.5vl")
    monkeypatch.setenv("NOISEALIGN_VLM_BASE_URL", "http://127.0.0.1:9/v1")
    reward = parse_reward("vlm:score")
    assert isinstance(reward, VlmJudge) and reward.config.mode == "score" and not reward.differentiable
    assert parse_reward("vlm").config.mode == "pick"
    with pytest.raises(NoiseAlignError, match="unknown vlm mode"):
        parse_reward("vlm:best")
    monkeypatch.delenv("NOISEALIGN_VLM_MODEL")
    with pytest.raises(NoiseAlignError, match="NOISEALIGN_VLM_MODEL"):
        parse_reward("vlm")

    class Args:
        vlm_timeout_s, vlm_model, vlm_scenario = 9.0, "m", None
    assert vlm_options_from_args(Args()) == {"timeout_s": 9.0, "model": "m"}


def test_images_are_enlarged_crisply_reduced_and_hashed_by_pixels():
    small = candidates()[:2]
    (image, _) = encode_images(small, 128, 512)
    pixels = np.asarray(Image.open(io.BytesIO(image.png)))
    assert pixels.shape == (128, 128)
    assert np.array_equal(pixels[::16, ::16], (small[0, 0] * 255).round().to(torch.uint8).numpy())
    (large,) = encode_images(torch.rand(1, 3, 64, 96), 8, 48)
    assert Image.open(io.BytesIO(large.png)).size == (48, 32)
    again = encode_images(small, 128, 512)
    assert [i.sha256 for i in again] == [i.sha256 for i in encode_images(small, 128, 512)]
    assert again[0].sha256 != again[1].sha256
    with pytest.raises(NoiseAlignError, match="1 or 3 channels"):
        encode_images(torch.rand(1, 2, 8, 8), 8, 48)


# --- the judge as the reward of every query-only method ------------------------------------------

@pytest.mark.parametrize("method", ["demon", "fk", "svdd", "beam", "zo-search", "path-search", "best-of-n"])
def test_every_method_that_only_queries_runs_with_the_judge_as_reward(fake, tmp_path, method):
    """No gradient is needed: each method aligns the digits model with the judge (score mode),
    within its budget, every query one image sent to the endpoint and logged, plus the final
    output's score, measured outside the budget."""
    from noisealign.align import align
    from noisealign.methods.base import Problem
    from noisealign.methods.registry import METHODS
    from noisealign.models.registry import load_model

    judge = make_judge(fake, tmp_path, mode="score", max_concurrency=4)
    assert not judge.differentiable
    outcome = align(Problem(load_model("digits"), judge), METHODS[method].method(), seed=0, budget=24)
    queries = outcome.ledger.reward_queries
    assert 0 < queries <= 24 and outcome.result.output.shape == (1, 1, 8, 8)
    assert len(fake.seen) == queries + 1 and len(log_records(tmp_path)) == queries + 1
