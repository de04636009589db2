"""The ui's session and HTTP API, through urllib on 127.0.0.1 (no browser): tokens, the
choose / undo / finish flow, two tabs, a closed browser, resume by replay, the run folder."""

import csv
import http.client
import importlib.util
import io
import json
import threading
import zipfile

import pytest
import torch

from noisealign.budget import Ledger
from noisealign.errors import NoiseAlignError
from noisealign.methods.base import Problem, RunContext
from noisealign.methods.demon import Demon, DemonConfig, DemonSession
from noisealign.models.gmm import GaussianMixture
from noisealign.rewards.dino import DinoSimilarity
from noisealign.rewards.human import HumanChoice
from noisealign.ui import HumanSession, RunSpec, UIServer
from noisealign.ui.server import TOKEN_HEADER, exposure_warning
from noisealign.ui.session import RUN_FILES
from test_ui_support import SMALL, TinyImages, base_url, call, save_reference, tiny_problem


@pytest.fixture
def session(tmp_path):
    return HumanSession.start(tiny_problem(), SMALL, seed=0, out=tmp_path / "run")


@pytest.fixture
def server(session):
    with UIServer(session) as server:
        yield server


def _post(server, path, token=None, **body):
    return call(base_url(server), "POST", path, server.token if token is None else token, body)


def _state(server, token=None):
    return call(base_url(server), "GET", "/api/state", server.token if token is None else token)


def _choose(server, chosen, version=None):
    version = _state(server)[1]["version"] if version is None else version
    return _post(server, "/api/choose", version=version, chosen=chosen)


def test_human_choice_is_plus_one_for_chosen_minus_one_for_others():
    assert HumanChoice.rewards([0, 2], 4).tolist() == [1.0, -1.0, 1.0, -1.0]
    assert HumanChoice.rewards([3], 4).dtype == torch.float32
    for bad in ([], [4], [-1], [1, 1], [True], ["0"], [0.0]):
        with pytest.raises(NoiseAlignError):
            HumanChoice.rewards(bad, 4)
    with pytest.raises(NoiseAlignError, match="needs a person"):
        HumanChoice.from_argument(None)(torch.zeros(2, 1, 8, 8), ["", ""])
    with pytest.raises(NoiseAlignError, match="takes no argument"):
        HumanChoice.from_argument("3")


def test_every_api_call_needs_the_session_token(server):
    base = base_url(server)
    calls = [("GET", "/api/state", None), ("GET", "/api/download", None),
             ("POST", "/api/choose", {"version": 0, "chosen": [0]}), ("POST", "/api/undo", {"version": 0}),
             ("POST", "/api/finish", {"version": 0})]
    wrong = server.token[:-1] + ("A" if server.token[-1] != "A" else "B")  # same length, one character off
    for method, path, body in calls:
        status, answer = call(base, method, path, None, body)
        assert status == 403 and "missing session token" in answer["error"], (path, answer)
        status, answer = call(base, method, path, wrong, body)
        assert status == 403 and "wrong or stale session token" in answer["error"], (path, answer)
    assert _state(server)[1]["version"] == 0 and server.session.choices == []  # nothing was done
    status, page = call(base, "GET", "/", None)
    assert status == 200 and b"noisealign" in page
    assert server.token.encode() not in page and b"data:image" not in page  # the page itself holds no state


def test_stale_token_after_restart(session):
    with UIServer(session) as first:
        old_token = first.token
        assert _choose(first, [1])[0] == 200
    session.close()
    resumed = HumanSession.resume(session.run_dir, model=TinyImages())
    with UIServer(resumed) as second:
        assert second.token != old_token
        status, answer = _state(second, token=old_token)
        assert status == 403 and "was the server restarted?" in answer["error"]
        status, state = _state(second)
        assert status == 200 and state["step"] == 1


def test_choose_undo_finish_flow_and_run_folder(server, session):
    K = SMALL.K
    assert _choose(server, [0, 2])[0] == 200
    assert _choose(server, [1])[0] == 200
    before_x, before_candidates = session.x.clone(), session.candidates.clone()
    before_counts = session.ledger.snapshot()
    status, state = _choose(server, [3])
    assert status == 200 and state["step"] == 3 and len(state["trajectory"]) == 4
    after_x = session.x.clone()

    status, state = _post(server, "/api/undo", version=state["version"])
    assert status == 200 and state["step"] == 2 and state["undone"] == 1 and len(state["trajectory"]) == 3
    assert torch.equal(session.x, before_x) and torch.equal(session.candidates, before_candidates)
    assert {k: v for k, v in session.ledger.snapshot().items() if k != "seconds"} == \
           {k: v for k, v in before_counts.items() if k != "seconds"}
    assert _choose(server, [3])[0] == 200
    assert torch.equal(session.x, after_x)  # the same choice after an undo: the same bits

    status, state = _post(server, "/api/finish", version=_state(server)[1]["version"])
    assert status == 200 and state["finished"] and state["image"].startswith("data:image/png")
    run = session.run_dir
    assert {p.name for p in run.iterdir()} == set(RUN_FILES)
    result = json.loads((run / "result.json").read_text())
    assert result["reward"] == "human" and result["reward_source"] == "human" and result["status"] == "complete"
    assert result["demon_steps"] == 3 and result["undone"] == 1 and result["reward_queries"] == 3 * K
    assert result["config"]["method"]["K"] == K
    choices = json.loads((run / "choices.json").read_text())
    assert [c["chosen"] for c in choices["choices"]] == [[0, 2], [1], [3]] and choices["finished"]
    rows = list(csv.DictReader(open(run / "trace.csv")))
    assert [float(r["reward_mean"]) for r in rows] == [(2 * c - K) / K for c in (2, 1, 1)]
    noises = torch.load(run / "noise.pt", weights_only=True)
    assert noises["z_star"].shape == (3, 1, *TinyImages.sample_shape)  # one z* (batch 1) per step
    # noise.pt regenerates the kept sample exactly, the way `noisealign regenerate` does
    regenerated = Demon(SMALL).regenerate(RunContext(session.problem, 0, Ledger()), noises)
    assert torch.equal(regenerated.output, session.output)

    status, answer = _choose(server, [0], version=state["version"])
    assert status == 409 and "finished" in answer["error"]


def test_human_session_takes_exactly_demon_sessions_steps(session):
    """The app adds previews and files around DemonSession, never a change to its steps."""
    picks = [[0], [1, 3], [2]]
    for chosen in picks:
        session.choose(chosen)
    reference = DemonSession(RunContext(tiny_problem(), 0, Ledger()), SMALL)
    with torch.inference_mode():
        for chosen in picks:
            reference.propose()
            reference.choose(HumanChoice.rewards(chosen, SMALL.K))
    assert torch.equal(session.x, reference.x)


def test_two_tabs_share_one_session_and_a_stale_tab_gets_409(server):
    _, tab_a = _state(server)
    _, tab_b = _state(server)
    assert tab_a == tab_b
    assert _choose(server, [0], version=tab_a["version"])[0] == 200
    for path, body in [("/api/choose", {"chosen": [1]}), ("/api/undo", {}), ("/api/finish", {})]:
        status, answer = _post(server, path, version=tab_b["version"], **body)
        assert status == 409 and answer["error"] == "this step was already chosen or undone in another tab; reload"
    status, reloaded = call(base_url(server), "GET", f"/api/state?known={tab_b['version']}", server.token)
    assert reloaded["step"] == 1 and reloaded["history"][0]["chosen"] == [0]
    status, same = call(base_url(server), "GET", f"/api/state?known={reloaded['version']}", server.token)
    assert same == {"version": reloaded["version"], "busy": False, "unchanged": True}

    # two tabs clicking at the same moment on the same view: exactly one step is taken
    version, answers = reloaded["version"], []
    threads = [threading.Thread(target=lambda c=c: answers.append(_choose(server, [c], version)[0])) for c in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == [200, 409] and len(server.session.choices) == 2


def test_closed_browser_keeps_the_run_on_disk_and_the_page_reopens(server, session):
    run = session.run_dir
    for step, chosen in enumerate([[0], [1, 2], [3]], start=1):
        assert _choose(server, chosen)[0] == 200
        saved = json.loads((run / "choices.json").read_text())
        assert [c["chosen"] for c in saved["choices"]][-1] == chosen and len(saved["choices"]) == step
        assert len(list(csv.DictReader(open(run / "trace.csv")))) == step
        assert json.loads((run / "result.json").read_text())["status"] == "running"
    # the tab is gone; a new one (same URL) picks the run up where it was
    status, reopened = _state(server)
    assert status == 200 and reopened["step"] == 3 and len(reopened["candidates"]) == SMALL.K


def test_resume_replays_to_the_same_bits(session):
    session.choose([0, 1])
    session.choose([2])
    session.undo()
    session.choose([3])
    session.choose([1, 2])
    session.close()
    resumed = HumanSession.resume(session.run_dir, model=TinyImages())
    assert resumed.replay_diverged_at is None and resumed.undone == 1
    assert torch.equal(resumed.x, session.x) and torch.equal(resumed.candidates, session.candidates)
    assert all(torch.equal(a, b) for a, b in zip(resumed.demon.state.chosen, session.demon.state.chosen))
    assert [g.get_state().tolist() for g in resumed.demon.streams.generators] == \
           [g.get_state().tolist() for g in session.demon.streams.generators]
    assert resumed.previews == session.previews and resumed.trace.rows == session.trace.rows
    for each in (session, resumed):
        each.choose([0])
        each.finish()
    assert torch.equal(resumed.output, session.output)
    resumed.close()
    again = HumanSession.resume(session.run_dir, model=TinyImages())  # a finished run resumes finished
    assert again.finished and torch.equal(again.output, session.output)


def test_resume_notices_a_drifted_replay_and_refuses_an_edited_file(session):
    session.choose([0])
    session.choose([1])
    path = session.run_dir / "choices.json"
    data = json.loads(path.read_text())
    data["choices"][1]["x_sha256"] = "0" * 64
    path.write_text(json.dumps(data))
    session.close()
    assert HumanSession.resume(session.run_dir, model=TinyImages()).replay_diverged_at == data["choices"][1]["step"]
    data["choices"][1]["step"] = 7
    path.write_text(json.dumps(data))
    with pytest.raises(NoiseAlignError, match="edited or is corrupt"):
        HumanSession.resume(session.run_dir, model=TinyImages())
    path.write_text("{not json")
    with pytest.raises(NoiseAlignError, match="not valid JSON"):
        HumanSession.resume(session.run_dir, model=TinyImages())


def test_bad_requests_get_one_clear_line(server):
    version = _state(server)[1]["version"]
    base = base_url(server)
    cases = [
        (_post(server, "/api/choose", version=version, chosen=[9]), 400, "not indices 0..3"),
        (_post(server, "/api/choose", version=version, chosen=[]), 400, "at least one"),
        (_post(server, "/api/choose", version=version), 400, "\"chosen\""),
        (_post(server, "/api/choose", chosen=[0]), 400, "\"version\""),
        (_post(server, "/api/undo", version=version), 409, "nothing to undo"),
        (call(base, "POST", "/api/choose", server.token, raw=b"{oops"), 400, "not JSON"),
        (call(base, "POST", "/api/choose", server.token, raw=b"[" * 60000), 400, "not JSON"),
        (call(base, "POST", "/api/choose", server.token, raw=b"x" * 70000), 413, "limit"),
        (call(base, "GET", "/api/state?known=abc", server.token), 400, "not a state version"),
        (call(base, "GET", "/api/nothing", server.token), 404, "no such page"),
        (call(base, "POST", "/api/nothing", server.token, {}), 404, "no such action"),
        (call(base, "GET", "/api/download", server.token), 409, "finish the run"),
    ]
    for (status, answer), expected_status, text in cases:
        assert status == expected_status and text in answer["error"] and "\n" not in answer["error"], answer
    assert server.session.choices == []


def _raw_post(server, content_length: str, body: bytes) -> tuple[int, dict]:
    """POST /api/choose with a Content-Length of our choosing, whatever the body's real length."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.putrequest("POST", "/api/choose")
        connection.putheader(TOKEN_HEADER, server.token)
        connection.putheader("Content-Length", content_length)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.parametrize("content_length, body, status, text", [
    ("abc", b"{}", 400, "not a byte count"),
    ("-1", b"{}", 400, "not a byte count"),
    ("1e3", b"{}", 400, "not a byte count"),
    ("70000", b"{}", 413, "limit"),
    ("10", b"{}", 400, "ended before"),  # the rest never comes: the socket timeout ends the wait
])
def test_a_bad_content_length_is_one_line_not_a_traceback_or_a_hang(server, capfd, content_length, body, status,
                                                                    text):
    server.httpd.RequestHandlerClass.timeout = 0.5
    answer = _raw_post(server, content_length, body)
    assert answer[0] == status and text in answer[1]["error"] and "\n" not in answer[1]["error"], answer
    assert "Traceback" not in capfd.readouterr().err and server.session.choices == []


def test_the_download_name_cannot_inject_a_header(tmp_path):
    session = HumanSession.start(tiny_problem(), SMALL, seed=0, out=tmp_path / "run\r\nX-Injected: 1 é")
    session.choose([0])
    session.finish()
    with UIServer(session) as server:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        connection.request("GET", "/api/download", headers={TOKEN_HEADER: server.token})
        response = connection.getresponse()
        payload = response.read()
        connection.close()
    assert response.status == 200 and zipfile.ZipFile(io.BytesIO(payload)).namelist()
    assert response.getheader("X-Injected") is None
    assert response.getheader("Content-Disposition") == (
        "attachment; filename=\"run__X-Injected__1__.zip\"; filename*=UTF-8''run%0D%0AX-Injected%3A%201%20%C3%A9.zip")


def test_download_zips_the_finished_run_folder(server, session):
    _choose(server, [1])
    _post(server, "/api/finish", version=_state(server)[1]["version"])
    status, payload = call(base_url(server), "GET", "/api/download", server.token)
    assert status == 200
    archive = zipfile.ZipFile(io.BytesIO(payload))
    assert sorted(archive.namelist()) == sorted(f"{session.run_dir.name}/{name}" for name in RUN_FILES)
    inside = json.loads(archive.read(f"{session.run_dir.name}/choices.json"))
    assert [c["chosen"] for c in inside["choices"]] == [[1]]


def test_every_step_taken_then_finish(session):
    while session.candidates is not None:
        session.choose([0])
    assert session.state()["candidates"] == [] and len(session.choices) == session.steps_total
    with pytest.raises(NoiseAlignError, match="every demon step is taken"):
        session.choose([0])
    session.finish()
    assert session.finished


def test_point_models_are_refused_before_any_folder_is_made(tmp_path):
    with pytest.raises(NoiseAlignError, match="shows images"):
        HumanSession.start(Problem(GaussianMixture.default(), HumanChoice()), SMALL, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_exposure_warning_and_url():
    assert exposure_warning("127.0.0.1") is None and exposure_warning("localhost") is None
    assert "WARNING" in exposure_warning("0.0.0.0")


def test_url_carries_the_token_in_the_fragment(server):
    assert server.url == f"http://127.0.0.1:{server.port}/#token={server.token}" and server.host == "127.0.0.1"


@pytest.mark.skipif(importlib.util.find_spec("noisealign.models.digits") is None,
                    reason="the bundled digits model is not on this branch yet")
def test_bundled_digits_model_offline(tmp_path):
    from noisealign.models.registry import load_model

    model = load_model("digits")
    config = DemonConfig(K=4, grid_points=8, beta=DemonConfig().beta_for(model), lookahead_steps=6)
    session = HumanSession.start(Problem(model, HumanChoice(), prompt="3"), config, seed=0, out=tmp_path / "run",
                                 spec=RunSpec("digits"))
    assert session.candidates.shape == (4, 1, 8, 8)
    session.choose([0, 1])
    session.choose([2])
    session.close()
    resumed = HumanSession.resume(session.run_dir)  # loads "digits" by name, offline
    assert torch.equal(resumed.x, session.x) and resumed.replay_diverged_at is None
    session.finish()
    assert json.loads((session.run_dir / "result.json").read_text())["model"] == "digits"



# ---------------------------------------------------------------- a reference image (DINOv2 similarity)

@pytest.fixture
def referenced(tmp_path):
    """A session with a reference image (a glyph) and a tiny random DINOv2 model."""
    reference, model = save_reference(tmp_path)
    spec = RunSpec("tiny-images", reference=reference, reference_model=model)
    return HumanSession.start(tiny_problem(), SMALL, seed=0, out=tmp_path / "run", spec=spec)


def test_reference_similarity_is_shown_per_state_traced_per_step_and_resumed(referenced):
    spec = referenced.spec
    measure = DinoSimilarity.from_argument(f"{spec.reference},model={spec.reference_model}")

    def similarity(images):
        with torch.inference_mode():
            return measure(images, [""]).item()

    def current():
        return similarity(referenced.problem.model.decode(referenced.context.denoiser(referenced.x, referenced.sigma)))

    with UIServer(referenced) as server:
        status, state = _state(server)
        assert status == 200 and state["reference"].startswith("data:image/png") and state["final_similarity"] is None
        assert state["similarities"] == pytest.approx([current()], abs=1e-6)
        for chosen in ([0], [1, 2], [3]):
            assert _choose(server, chosen)[0] == 200
        status, state = _post(server, "/api/undo", version=_state(server)[1]["version"])
        similarities = state["similarities"]
        assert len(similarities) == len(state["trajectory"]) == 3
        assert similarities[-1] == pytest.approx(current(), abs=1e-6)
        rows = list(csv.DictReader(open(referenced.run_dir / "trace.csv")))
        assert [float(row["reference_similarity"]) for row in rows] == pytest.approx(similarities[1:], abs=1e-5)
        assert referenced.ledger.reward_queries == 2 * SMALL.K  # the person's steps only: measuring is free
        status, state = _post(server, "/api/finish", version=state["version"])
        assert state["final_similarity"] == pytest.approx(similarity(referenced.output), abs=1e-6)
    result = json.loads((referenced.run_dir / "result.json").read_text())
    assert result["reference_image"] == spec.reference and result["reference_model"] == spec.reference_model
    assert result["reference_similarity"] == state["final_similarity"]
    referenced.close()
    resumed = HumanSession.resume(referenced.run_dir, model=TinyImages())   # the reference comes from choices.json
    assert resumed.state()["similarities"] == similarities and resumed.final_similarity == state["final_similarity"]


def test_without_a_reference_nothing_is_measured(server, session):
    status, state = _choose(server, [0])
    assert status == 200 and state["reference"] is None and state["similarities"] is None
    assert "reference_similarity" not in open(session.run_dir / "trace.csv").readline()
    assert "reference_similarity" not in json.loads((session.run_dir / "result.json").read_text())


def test_a_missing_reference_fails_before_the_run_starts(tmp_path):
    spec = RunSpec("tiny-images", reference=str(tmp_path / "absent.png"))
    with pytest.raises(NoiseAlignError, match="no file or folder"):
        HumanSession.start(tiny_problem(), SMALL, seed=0, out=tmp_path / "run", spec=spec)
    assert not (tmp_path / "run").exists()
