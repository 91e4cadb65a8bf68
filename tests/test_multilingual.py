"""One model for several directions (mt/data/languages.py, mt/data/multilingual.py): the tags,
mixed batches, per-direction scores, and a multilingual checkpoint through every command."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mt.commands import EvaluateConfig
from mt.config import DataConfig, DecodeConfig
from mt.data.languages import Direction, choose_target, directions, epoch_counts
from mt.data.multilingual import MixedTrainData
from mt.data.prepare import prepare_data
from mt.decoding.evaluation import evaluate_checkpoint
from mt.decoding.loading import load_translator
from mt.loggers import ListLogger
from mt.training.trainer import Trainer
from tests.conftest import small_run, synthetic_sentences, write_corpus

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ["xx-yy", "yy-xx", "zz-yy", "yy-zz"]  # yy-centric: xx <-> zz is zero-shot


def three_language_corpus(corpus: Path) -> None:
    """Line-parallel made-up languages xx / yy / zz (plumbing, not translation quality)."""
    for split, n in (("train", 200), ("val", 10), ("test", 10)):
        write_corpus(
            corpus,
            split,
            {
                lang: synthetic_sentences(n, seed=seed)
                for seed, lang in enumerate(["xx", "yy", "zz"])
            },
        )


def multilingual_run(tmp_path: Path, **data):
    cfg = small_run(tmp_path, val_bleu=True, max_steps=6, val_every_steps=3)
    three_language_corpus(tmp_path / "corpus")
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, pairs=PAIRS, **data))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A four-direction model trained a few updates, tested at the end, and what it logged."""
    tmp = tmp_path_factory.mktemp("multi")
    logger = ListLogger()
    Trainer(multilingual_run(tmp), tmp / "run", logger=logger).fit()
    return tmp / "run", logger


def test_directions_come_from_pairs_or_from_langs():
    assert [str(d) for d in directions(DataConfig(pairs=["de-en", "fr-en"]))] == ["de-en", "fr-en"]
    every = directions(DataConfig(langs=["de", "en", "fr"]))
    assert {str(d) for d in every} == {"de-en", "de-fr", "en-de", "en-fr", "fr-de", "fr-en"}
    assert directions(DataConfig(src_lang="de", tgt_lang="en")) == [Direction("de", "en")]


@pytest.mark.parametrize(
    "data, message",
    [
        (dict(pairs=["de_en"]), "'de_en' is not a direction"),
        (dict(pairs=["de-de"]), "into itself"),
        (dict(pairs=["de-en", "de-en"]), "more than once"),
        (dict(langs=["de"]), "at least two distinct"),
        (dict(pairs=["de-en"], langs=["de", "en"]), "not both"),
    ],
)
def test_impossible_directions_are_one_line(data, message):
    with pytest.raises(ValueError, match=message):
        directions(DataConfig(**data))


def test_epoch_shares_follow_the_temperature():
    assert epoch_counts([900, 100], 1.0) == [900, 100]  # by size: every pair once
    flat = epoch_counts([900, 100], 1e6)  # very hot: equal shares
    assert flat == [500, 500]
    lifted = epoch_counts([900, 100], 5.0)
    assert 100 < lifted[1] < 500 and sum(lifted) == 1000


def test_a_mixed_epoch_is_the_same_for_the_same_seed_and_epoch(tmp_path):
    data = prepare_data(multilingual_run(tmp_path).data)
    mixed = MixedTrainData(data.train, [200, 200, 150, 50], temperature=3.0, seed=1)
    assert len(mixed) == 600
    first, again = mixed.rows(0), mixed.rows(0)
    assert np.array_equal(first, again) and not np.array_equal(first, mixed.rows(1))
    per_direction = np.bincount(np.searchsorted(mixed.starts, first, side="right") - 1)
    assert per_direction.tolist() == mixed.counts  # the last (smallest) direction repeats rows
    (window,) = mixed.windows(epoch=0)
    assert len(window) == 600


def test_the_tags_are_reserved_pieces_that_no_text_produces(tmp_path):
    data = prepare_data(multilingual_run(tmp_path).data)
    tags = data.tokenizer.language_tags
    assert sorted(tags) == ["xx", "yy", "zz"] and sorted(tags.values()) == [4, 5, 6]
    typed = data.tokenizer.encode(["<2zz> abc"])[0]
    assert not set(typed) & set(tags.values())  # a typed tag stays text
    assert data.tokenizer.decode([[tags["zz"]]]) == [""]
    # Every training source starts with its direction's tag; targets hold no tag.
    train = data.train
    firsts = {train.src_ids[i][0] for i in range(len(train))}
    assert firsts == set(tags.values())
    assert not any(set(train.tgt_ids[i]) & set(tags.values()) for i in range(len(train)))


def test_sampled_subwords_keep_the_tags_under_a_temperature(tmp_path):
    data = prepare_data(multilingual_run(tmp_path, subword_alpha=0.2, pair_temperature=2.0).data)
    assert isinstance(data.train, MixedTrainData)
    (window,) = data.train.windows(epoch=1)
    tags = set(data.tokenizer.language_tags.values())
    assert {window.src_ids[i][0] for i in range(len(window))} == tags
    assert window.src_ids != subset_of_fixed(data.train, epoch=1)  # segmented anew
    data.train.close()


def subset_of_fixed(mixed: MixedTrainData, epoch: int) -> list:
    from mt.data.batching import subset

    fixed = subset(mixed.fixed, mixed.rows(epoch))
    return [fixed.src_ids[i] for i in range(len(fixed))]


def test_batches_mix_the_directions(tmp_path):
    data = prepare_data(multilingual_run(tmp_path).data)
    rng = np.random.default_rng(0)
    tags_per_batch = [set(b.src[:, 0].tolist()) for b in data.train.batches(300, rng)]
    assert max(len(t) for t in tags_per_batch) > 1


def test_each_direction_is_validated_and_tested(trained):
    run, logger = trained
    metrics = json.loads((run / "metrics.json").read_text())
    last = metrics["validation_history"][-1]
    for pair in PAIRS:
        assert {f"val/{pair}/bleu", f"val/{pair}/chrf", f"val/{pair}/loss"} <= set(last)
        assert (run / f"test.{pair}.hyp").is_file()
    mean = sum(last[f"val/{p}/bleu"] for p in PAIRS) / len(PAIRS)
    assert last["val/bleu"] == pytest.approx(mean, abs=0.01)
    test = metrics["test"]
    assert set(test["directions"]) == set(PAIRS)
    assert test["bleu"] == pytest.approx(
        sum(test["directions"][p]["bleu"] for p in PAIRS) / len(PAIRS), abs=0.01
    )
    logged = {k for _, m in logger.records for k in m}  # what TensorBoard received
    assert {"val/xx-yy/bleu", "test/yy-zz/bleu", "test/bleu"} <= logged


def test_translations_into_each_target_start_from_its_tag(trained):
    run, _ = trained
    translator, _ = load_translator(run / "best.pt", DecodeConfig(beam_size=1), "cpu", "zz")
    tags = translator.tokenizer.language_tags
    assert translator.encode(["abc de", ""]) == [
        [tags["zz"], *translator.tokenizer.encode(["abc de"])[0]],
        [],
    ]
    assert translator.translate(["", "abc"])[0] == ""
    with pytest.raises(ValueError, match="translates into yy, xx, zz"):
        load_translator(run / "best.pt", DecodeConfig(beam_size=1), "cpu", "qq")
    with pytest.raises(ValueError, match="choose one with tgt_lang"):
        load_translator(run / "best.pt", DecodeConfig(beam_size=1), "cpu")


def test_a_single_direction_model_refuses_another_target():
    single = DataConfig(src_lang="de", tgt_lang="en")
    assert choose_target(single, None) is None and choose_target(single, "en") is None
    with pytest.raises(ValueError, match="translates de -> en only"):
        choose_target(single, "fr")


def test_every_direction_and_a_zero_shot_one_are_evaluated(trained, tmp_path):
    run, _ = trained
    common = dict(checkpoint=str(run / "best.pt"), split="val", beam_size=1, device="cpu")
    every = evaluate_checkpoint(EvaluateConfig(**common), tmp_path / "every")
    assert set(every["directions"]) == set(PAIRS)
    zero = evaluate_checkpoint(
        EvaluateConfig(**common, src_lang="xx", tgt_lang="zz"), tmp_path / "zero"
    )
    assert (zero["src_lang"], zero["tgt_lang"]) == ("xx", "zz")
    assert Path(zero["translations"]).name == "val.xx-zz.hyp"
    with pytest.raises(ValueError, match="give src_lang and tgt_lang"):
        evaluate_checkpoint(EvaluateConfig(**common, tgt_lang="zz"), tmp_path / "half")


def script(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=300
    )


def test_translate_and_score_through_the_scripts(trained, tmp_path):
    run, _ = trained
    ckpt = f"checkpoint={run / 'best.pt'}"
    done = script("scripts/translate.py", ckpt, "tgt_lang=zz", "src_lang=xx", stdin="abc\n\nde\n")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 3 and "<2" not in done.stdout
    assert "xx-zz was not trained" in done.stderr  # zero-shot, and said so
    wrong = script("scripts/translate.py", ckpt, "tgt_lang=qq", stdin="abc\n")
    assert wrong.returncode != 0
    assert wrong.stderr.strip() == "error: tgt_lang=qq: this model translates into yy, xx, zz only"
    (tmp_path / "s").write_text("abc\nde\n")
    (tmp_path / "t").write_text("fgh\nij\n")
    scored = script(
        "scripts/score.py", ckpt, f"src={tmp_path / 's'}", f"tgt={tmp_path / 't'}", "tgt_lang=yy"
    )
    assert scored.returncode == 0, scored.stderr
    assert len(scored.stdout.splitlines()) == 2


def test_the_export_translates_each_direction_as_the_checkpoint(trained, tmp_path):
    pytest.importorskip("ctranslate2")
    from mt.export.convert import export_checkpoint

    run, _ = trained
    meta = export_checkpoint(run / "best.pt", tmp_path / "ct2", "float32")
    assert meta["directions"] == PAIRS
    sources = synthetic_sentences(8, seed=5)
    for lang in ("xx", "yy", "zz"):
        ours, _ = load_translator(run / "best.pt", DecodeConfig(beam_size=1), "cpu", lang)
        theirs, _ = load_translator(tmp_path / "ct2", DecodeConfig(beam_size=1), "cpu", lang)
        assert theirs.translate(sources) == ours.translate(sources)
    # Prefixes and n-best lists work with a target language, in both engines.
    beam = DecodeConfig(beam_size=3, n_best=3)
    for path in (run / "best.pt", tmp_path / "ct2"):
        translator, _ = load_translator(path, beam, "cpu", "xx")
        prefix = synthetic_sentences(1, seed=0)[0].split()[0]
        nbest = translator.translate_nbest(sources[:2], prefixes=[prefix, ""])
        assert [len(n) for n in nbest] == [3, 3]
        assert all(t.text.startswith(prefix) for t in nbest[0])


@pytest.fixture(scope="module")
def server(trained):
    from tests.test_serving import Server

    s = Server(trained[0] / "best.pt", "max_wait_ms=5")
    yield s
    assert s.stop() == 0


def test_the_server_takes_the_target_language(trained, server):
    info = server.client.get("/info").json()
    assert info["directions"] == PAIRS and info["target_languages"] == ["yy", "xx", "zz"]
    into = {lang: server.post({"text": "abc de", "tgt_lang": lang}) for lang in ("xx", "zz")}
    for lang, response in into.items():
        assert response.status_code == 200 and response.json()["tgt_lang"] == lang
    ours, _ = load_translator(trained[0] / "best.pt", DecodeConfig(beam_size=5), "cpu", "zz")
    assert into["zz"].json()["translations"][0]["text"] == ours.translate(["abc de"])[0]
    unknown = server.post({"text": "abc", "tgt_lang": "qq"})
    assert unknown.status_code == 422 and "translates into yy, xx, zz" in unknown.json()["error"]
    missing = server.post({"text": "abc"})
    assert missing.status_code == 422 and "tgt_lang is required" in missing.json()["error"]


def test_the_page_offers_the_target_languages(server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from tests.test_serving import chromium_driver

    browser = chromium_driver()
    try:
        browser.get(server.url + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: b.find_element(By.ID, "target").is_displayed())
        choice = Select(browser.find_element(By.ID, "tgt_lang"))
        assert [o.text for o in choice.options] == ["yy", "xx", "zz"]
        assert browser.find_element(By.ID, "model").text.startswith(", ".join(PAIRS))
        choice.select_by_visible_text("zz")
        browser.find_element(By.ID, "source").send_keys("abc de")
        browser.find_element(By.ID, "translate").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#heatmap td"))
        expected = server.post({"text": "abc de", "tgt_lang": "zz", "attention": True}).json()
        entry = expected["translations"][0]
        assert browser.find_element(By.ID, "output").text == entry["text"]
        header = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#heatmap thead th")]
        assert header[1:] == entry["source_tokens"] and header[1] == "<2zz>"  # the tag is seen
    finally:
        browser.quit()


def test_a_single_direction_run_stays_untagged(tmp_path):
    data = prepare_data(small_run(tmp_path).data)
    assert data.tokenizer.language_tags == {}
    assert data.val[0].direction is None and data.val[0].tgt_lang is None
    val = data.val[0]
    assert val.ids.src_ids[0] == data.tokenizer.encode([val.sources[0]])[0]  # no tag in front


def test_a_tagged_tokenizer_is_refused_for_one_untagged_direction(tmp_path):
    tagged = prepare_data(multilingual_run(tmp_path / "m").data).tokenizer
    with pytest.raises(ValueError, match=r"data.pairs=\[xx-yy\]"):
        prepare_data(small_run(tmp_path / "s").data, tokenizer=tagged)


def test_an_untagged_tokenizer_is_refused_for_several_directions(tmp_path):
    plain = prepare_data(small_run(tmp_path / "s").data).tokenizer
    with pytest.raises(ValueError, match="no tag for yy, xx, zz"):
        prepare_data(multilingual_run(tmp_path / "m").data, tokenizer=plain)
