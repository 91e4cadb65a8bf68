"""The HTTP API and page (mt/serving/, scripts/serve.py) against real servers on loopback ports."""

import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from mt.checkpoint import model_payload, save_checkpoint
from mt.config import ModelConfig, RunConfig
from mt.model.transformer import build_model
from tests.conftest import INT8_ENGINE

ROOT = Path(__file__).resolve().parents[1]
LINES = ["a b c d", "", "e f g", "h i j k l m", "b a"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer):
    """An untrained small model: the API's plumbing, not translation quality, is under test."""
    cfg = RunConfig(
        model=ModelConfig(
            d_model=32, n_heads=2, d_ff=64, n_encoder_layers=1, n_decoder_layers=2, max_positions=40
        )
    )
    model = build_model(cfg.model, vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id)
    path = tmp_path_factory.mktemp("serve") / "model.pt"
    save_checkpoint(path, model_payload(model, cfg, tokenizer))
    return path


class Server:
    def __init__(self, checkpoint: Path, *options: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "scripts/serve.py", f"checkpoint={checkpoint}", "port=0", *options],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        seen, found = [], None
        for line in self.process.stderr:  # warnings (e.g. int8 without VNNI) may come first
            seen.append(line)
            found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)  # "serving PATH on URL"
            if found:
                break
        if not found:  # the server ended (EOF) without serving; never read a live pipe to EOF
            self.process.kill()
            raise AssertionError("".join(seen) + self.process.stderr.read())
        self.url = f"http://127.0.0.1:{found.group(1)}"
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def post(self, body, **kwargs) -> httpx.Response:
        return self.client.post("/translate", json=body, **kwargs)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def server(checkpoint):
    s = Server(
        checkpoint,
        "beam_size=2",
        "max_lines=8",
        "max_line_chars=400",
        "max_body_bytes=4000",
        "max_beam_size=4",
        "max_wait_ms=20",
    )
    yield s
    assert s.stop() == 0


def test_health_and_info(server, checkpoint):
    assert server.client.get("/health").json() == {"status": "ok"}
    info = server.client.get("/info").json()
    assert info["source_checkpoint"] == str(checkpoint) and info["engine"] == "mt"
    assert (info["src_lang"], info["tgt_lang"]) == ("de", "en")
    assert info["parameters"] > 0 and info["decode"]["beam_size"] == 2
    assert info["limits"]["max_lines"] == 8 and info["limits"]["max_source_tokens"] == 39
    assert info["attention"] is True


def test_translate_keeps_order_empty_lines_and_n_best(server):
    answer = server.post({"text": LINES, "n_best": 2}).json()
    entries = answer["translations"]
    assert len(entries) == len(LINES) and answer["n_best"] == 2
    assert entries[1]["text"] == "" and entries[1]["score"] is None
    for line, entry in zip(LINES, entries):
        alone = server.post({"text": line, "n_best": 2}).json()["translations"][0]
        assert alone["text"] == entry["text"]  # order kept: each entry is its own line's
        assert len(entry["n_best"]) == (2 if line else 1)
        assert entry["n_best"][0]["text"] == entry["text"]
        assert entry["truncated"] is False
    single = server.post({"text": "a b c d", "beam_size": 1}).json()
    assert len(single["translations"]) == 1 and "n_best" not in single["translations"][0]


def test_attention_has_the_shapes_of_the_pieces(server):
    entry = server.post({"text": "a b c d", "attention": True}).json()["translations"][0]
    s, t = len(entry["source_tokens"]), len(entry["target_tokens"])
    assert entry["source_tokens"][-1] == "</s>" and entry["target_tokens"][-1] == "</s>"
    mean, heads = entry["attention"]["mean"], entry["attention"]["heads"]
    assert len(heads) == 2 and all(len(h) == t and all(len(r) == s for r in h) for h in heads)
    assert len(mean) == t and all(abs(sum(row) - 1) < 1e-2 for row in mean)
    empty = server.post({"text": ["", "a"], "attention": True}).json()["translations"]
    assert "attention" not in empty[0] and "attention" in empty[1]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        ({"text": 5}, 422, "text: must be a string or a list of strings"),
        ({"text": ["a", 3]}, 422, "text: must be a string"),
        ({"text": "a", "beam_size": "5"}, 422, "beam_size: Input should be a valid integer"),
        ({"text": "a", "attention": "yes"}, 422, "attention"),
        ({"text": "a", "checkpoint": "/etc/passwd"}, 422, "checkpoint: Extra inputs"),
        ({}, 422, "text: Field required"),
        ({"text": ["a"] * 9}, 413, "9 lines in one request: at most 8"),
        ({"text": "a " * 201}, 413, "text[0] has 402 characters: at most 400"),
        ({"text": ["a b"] * 8, "pad": "x" * 4000}, 413, "the body has"),
        ({"text": "a", "beam_size": 5}, 422, "beam_size=5 must be between 1 and 4"),
        ({"text": "a", "beam_size": 0}, 422, "beam_size=0"),
        ({"text": "a", "n_best": 3}, 422, "n_best=3 must be between 1 and beam_size=2"),
    ],
)
def test_bad_requests_get_a_json_error_and_a_4xx(server, body, status, message):
    if isinstance(body, bytes):
        response = server.client.post("/translate", content=body)
    else:
        response = server.post(body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_other_mistakes_are_json_too(server):
    wrong_method = server.client.get("/translate")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
    assert server.client.get("/nothing").json() == {"error": "Not Found"}
    assert server.client.get("/static/..%2Fapp.py").status_code == 404
    chunks = iter([b'{"text": "', b"a " * 3000, b'"}'])  # no Content-Length: counted as read
    streamed = server.client.post("/translate", content=chunks)
    assert streamed.status_code == 413 and "over 4000 bytes" in streamed.json()["error"]


def test_overlong_lines_are_cut_and_said_so(server):
    entry = server.post({"text": " ".join("abcdefgh" * 20)}).json()["translations"][0]
    assert entry["truncated"] is True


def test_32_concurrent_requests_equal_the_same_lines_one_by_one(server):
    lines = [" ".join("abcdefghij"[(i * k) % 10] for k in range(1, 2 + i % 7)) for i in range(32)]
    alone = [server.post({"text": line}).json()["translations"][0]["text"] for line in lines]
    before = server.client.get("/info").json()["batches"]
    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(lambda x: server.post({"text": x}).json(), lines))
    assert [a["translations"][0]["text"] for a in together] == alone
    after = server.client.get("/info").json()["batches"]
    assert after["requests"] - before["requests"] == 32
    assert after["run"] - before["run"] < 32  # requests shared batches


def test_worker_processes_serve_the_same_translations(server, checkpoint):
    lines = [" ".join("abcdefghij"[(i * k) % 10] for k in range(1, 2 + i % 7)) for i in range(16)]
    alone = [server.post({"text": line}).json()["translations"][0]["text"] for line in lines]
    s = Server(checkpoint, "beam_size=2", "max_wait_ms=20", "workers=2")
    try:
        with ThreadPoolExecutor(16) as pool:
            together = list(pool.map(lambda x: s.post({"text": x}).json(), lines))
        assert [a["translations"][0]["text"] for a in together] == alone
        assert s.client.get("/info").json()["decode"]["workers"] == 2
    finally:
        assert s.stop() == 0  # the workers end with the server


def test_health_answers_while_the_model_is_busy(server):
    with ThreadPoolExecutor(9) as pool:
        busy = [
            pool.submit(server.post, {"text": ["a b c d e f g h"] * 8, "beam_size": 4})
            for _ in range(8)
        ]
        start = time.monotonic()
        assert server.client.get("/health").status_code == 200
        quick = time.monotonic() - start
        assert all(f.result().status_code == 200 for f in busy)
    assert quick < 5


def test_the_api_key_guards_every_route_but_health(checkpoint):
    keyed = Server(checkpoint, "api_key=sesame")
    try:
        c = keyed.client
        assert c.get("/health").status_code == 200
        assert c.get("/info").status_code == 401 and "API key" in c.get("/info").json()["error"]
        assert c.get("/").status_code == 401
        assert keyed.post({"text": "a"}).status_code == 401
        assert keyed.post({"text": "a"}, headers={"X-API-Key": "wrong"}).status_code == 401
        assert keyed.post({"text": "a"}, headers={"Authorization": "Bearer sesame"}).is_success
        assert keyed.post({"text": "a"}, headers={"X-API-Key": "sesame"}).is_success
        page = c.get("/?key=sesame")  # the page keeps the key as a cookie for its requests
        assert page.status_code == 200 and "<textarea" in page.text
        assert httpx.post(
            f"{keyed.url}/translate", json={"text": "a"}, cookies={"mt_api_key": "sesame"}
        ).is_success
    finally:
        assert keyed.stop() == 0


def test_sigterm_answers_the_requests_in_flight_then_exits_0(checkpoint):
    s = Server(checkpoint, "max_wait_ms=1500")  # requests wait for company: still in flight
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(s.post, {"text": ["a b c"] * 4}) for _ in range(8)]
        time.sleep(0.5)
        s.process.send_signal(signal.SIGTERM)
        answers = [f.result() for f in futures]
    assert [a.status_code for a in answers] == [200] * 8
    assert all(len(a.json()["translations"]) == 4 for a in answers)
    assert s.process.wait(timeout=60) == 0
    with pytest.raises(httpx.TransportError):  # and it no longer accepts
        httpx.get(f"{s.url}/health", timeout=2)


def test_a_port_in_use_is_one_line(checkpoint):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "scripts/serve.py", f"checkpoint={checkpoint}", f"port={port}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: cannot listen on 127.0.0.1:{port} (Address already in use): choose another "
        "port= (0 picks a free one) or host="
    )


def chromium_driver():
    from shutil import which

    chrome = which("chromium") or which("chromium-browser") or which("google-chrome")
    driver = which("chromedriver")
    if not (chrome and driver):
        pytest.skip("Chromium and chromedriver are not installed (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chrome
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1200,900",
        "--disable-dev-shm-usage",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_the_page_translates_and_draws_the_attention_in_a_browser(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = chromium_driver()
    try:
        # Every response comes late, so the click lands before the page has read /info: the
        # page must still translate with the server's beam size (2), not the form's 5.
        browser.execute_cdp_cmd("Network.enable", {})
        slow = dict(offline=False, latency=400, downloadThroughput=-1, uploadThroughput=-1)
        browser.execute_cdp_cmd("Network.emulateNetworkConditions", slow)
        browser.get(server.url + "/")
        browser.find_element(By.ID, "source").send_keys("a b c d")
        browser.find_element(By.ID, "translate").click()
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#heatmap td"))
        expected = server.post(
            {"text": "a b c d", "beam_size": 2, "n_best": 2, "attention": True}
        ).json()["translations"][0]
        assert browser.find_element(By.ID, "output").text == expected["text"]
        assert len(browser.find_elements(By.CSS_SELECTOR, "#alternatives li")) == 2
        cells = browser.find_elements(By.CSS_SELECTOR, "#heatmap td")
        t, s = len(expected["target_tokens"]), len(expected["source_tokens"])
        assert len(cells) == t * s
        first = float(cells[0].get_attribute("data-weight"))
        assert first == pytest.approx(expected["attention"]["mean"][0][0], abs=1e-4)
        assert "→" in cells[0].get_attribute("title")
        heads = browser.find_elements(By.CSS_SELECTOR, "#heads button")
        assert [h.text for h in heads] == ["mean", "head 1", "head 2"]
        heads[2].click()  # head 2's weights replace the mean
        cell = browser.find_elements(By.CSS_SELECTOR, "#heatmap td")[0]
        assert float(cell.get_attribute("data-weight")) == pytest.approx(
            expected["attention"]["heads"][1][0][0], abs=1e-4
        )
        assert browser.find_element(By.ID, "status").text == ""
        browser.save_screenshot(str(tmp_path / "page.png"))
        assert (tmp_path / "page.png").stat().st_size > 10_000
    finally:
        browser.quit()


def test_an_exported_model_is_served_too(checkpoint, tmp_path):
    from mt.export.convert import export_checkpoint

    export_checkpoint(checkpoint, tmp_path / "ct2", "int8")
    s = Server(tmp_path / "ct2")
    try:
        assert s.client.get("/info").json()["engine"] == INT8_ENGINE
        answer = s.post({"text": ["a b c", ""], "n_best": 2}).json()["translations"]
        assert len(answer) == 2 and answer[1]["text"] == "" and len(answer[0]["n_best"]) == 2
        refused = s.post({"text": "a b", "attention": True})
        assert refused.status_code == 422 and "attention needs" in refused.json()["error"]
    finally:
        assert s.stop() == 0


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("max_lines=0", "max_lines=0 must be positive"),
        ("max_beam_size=2", "beam_size=5 is over max_beam_size=2"),
    ],
)
def test_impossible_server_options_are_one_line(checkpoint, option, message):
    done = subprocess.run(
        [sys.executable, "scripts/serve.py", f"checkpoint={checkpoint}", "port=0", option],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: {message}") and len(done.stderr.splitlines()) == 1
