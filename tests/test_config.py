"""The configuration contract: Hydra composition, overrides, validation, module layering."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from mt.checks import validate_run_config
from mt.commands import register_configs
from mt.config import from_hydra

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
register_configs()


def compose_run(*overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return from_hydra(compose(config_name="train", overrides=list(overrides)))


def test_defaults_are_multi30k_tiny():
    cfg = compose_run()
    assert (cfg.data.name, cfg.data.src_lang, cfg.data.tgt_lang) == ("multi30k", "de", "en")
    assert cfg.data.test_split == "test_2016_flickr"
    m = cfg.model
    assert (m.n_encoder_layers, m.n_decoder_layers, m.d_model, m.n_heads, m.d_ff) == (
        3,
        3,
        256,
        4,
        1024,
    )
    validate_run_config(cfg)


def test_the_default_run_uses_the_settings_that_won_on_validation():
    """docs/results.md: dropout 0.3, a linear decay to the end of the budget, subword sampling
    and checkpoint averaging each beat the alternative on the validation split."""
    cfg = compose_run()
    assert cfg.model.dropout == 0.3 and cfg.model.kernels == "auto"
    assert (cfg.train.lr_decay, cfg.train.max_minutes, cfg.train.max_epochs) == ("linear", 50, None)
    assert cfg.data.subword_alpha == 0.3
    assert cfg.train.average_last == 5
    recipe = compose_run("experiment=multi30k_de_en")
    assert recipe.train.max_minutes == 110  # the recipe: the same settings, a longer budget
    assert (recipe.model.dropout, recipe.data.subword_alpha) == (0.3, 0.3)


def test_documented_overrides():
    cfg = compose_run(
        "data.dir=/some/where",
        "data.src_lang=en",
        "data.tgt_lang=de",
        "data.max_train_pairs=300",
        "model=tiny",
        "seed=7",
        "train.max_steps=12",
        "train.max_epochs=2",
        "train.max_minutes=1.5",
        "train.batch_tokens=999",
        "train.val_every_steps=5",
    )
    assert cfg.data.dir == "/some/where" and cfg.data.src_lang == "en"
    assert cfg.data.max_train_pairs == 300 and cfg.seed == 7
    t = cfg.train
    assert (t.max_steps, t.max_epochs, t.max_minutes, t.batch_tokens, t.val_every_steps) == (
        12,
        2,
        1.5,
        999,
        5,
    )


@pytest.mark.parametrize(
    "name,sizes",
    [
        ("small", (6, 512, 4, 1024)),
        ("base", (6, 512, 8, 2048)),
        ("big", (6, 1024, 16, 4096)),
    ],
)
def test_model_sizes(name, sizes):
    m = compose_run(f"model={name}").model
    assert (m.n_encoder_layers, m.d_model, m.n_heads, m.d_ff) == sizes


def test_folder_and_hub_groups():
    cfg = compose_run("data=folder", "data.dir=x", "data.src_lang=fr", "data.tgt_lang=en")
    assert cfg.data.test_split == "test" and cfg.data.download_url is None
    hub = compose_run("data=hub", "data.hub_name=org/set", "data.src_lang=fr", "data.tgt_lang=en")
    assert hub.data.hub_name == "org/set" and hub.data.val_split == "validation"


@pytest.mark.parametrize("override", ["train.max_step=5", "model.dmodel=3", "model=huge"])
def test_unknown_keys_and_choices_fail_at_compose_time(override):
    with pytest.raises(ConfigCompositionException):
        compose_run(override)


def test_wrong_type_fails_at_compose_time():
    with pytest.raises(Exception, match="max_steps"):
        compose_run("train.max_steps=many")


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.n_heads=3", "not divisible by model.n_heads=3"),
        ("model.d_ff=0", "model.d_ff=0 must be positive"),
        ("decode.beam_size=0", "beam_size=0 must be at least 1"),
        ("train.max_steps=-1", "train.max_steps=-1 must be positive"),
        ("model.dropout=1.5", "model.dropout=1.5"),
        ("train.lr_decay=step", "train.lr_decay='step' must be one of inverse_sqrt"),
        # Not-a-number and infinity pass a plain "> 0" test in some forms: each is refused.
        ("train.lr=nan", "train.lr=nan must be a positive number"),
        ("train.lr=inf", "train.lr=inf must be a positive number"),
        ("train.clip_norm=-1", "train.clip_norm=-1.0 must be a positive number"),
        ("train.adam_beta2=1.0", "train.adam_beta2=1.0 must be in"),
        ("train.weight_decay=nan", "train.weight_decay=nan must be 0 or more"),
        ("train.label_smoothing=nan", "train.label_smoothing=nan"),
        ("train.max_minutes=nan", "train.max_minutes=nan must be positive"),
        ("train.batch_tokens=0", "train.batch_tokens=0 must be positive"),
        ("decode.length_penalty=nan", "decode.length_penalty=nan must be 0 or more"),
        ("decode.max_len_a=-1", "decode.max_len_a=-1.0 must be 0 or more"),
        ("decode.n_best=6", "decode.n_best=6 must be between 1 and beam_size=5"),
        ("data.subword_alpha=nan", "data.subword_alpha=nan must be 0"),
    ],
)
def test_impossible_values_are_rejected_with_the_option_name(override, message):
    cfg = compose_run(override)
    with pytest.raises(ValueError, match=message):
        validate_run_config(cfg)


@pytest.mark.parametrize(
    "recipe,model,src,tgt",
    [
        ("wmt14_en_de_base", "base", "en", "de"),
        ("wmt14_en_de_big", "big", "en", "de"),
        ("iwslt14_de_en", "small", "de", "en"),
        ("multi30k_de_en", "tiny", "de", "en"),
        ("multi30k_en_de", "tiny", "en", "de"),
    ],
)
def test_recipes_compose_and_validate(recipe, model, src, tgt):
    cfg = compose_run(f"experiment={recipe}")
    validate_run_config(cfg)
    assert (cfg.model.name, cfg.data.src_lang, cfg.data.tgt_lang) == (model, src, tgt)
    assert cfg.train.average_last >= 5
    if recipe.startswith("multi30k"):  # the CPU recipes: 2 hours at most
        assert cfg.train.max_minutes <= 120 and cfg.data.dir == "data/multi30k"
    else:
        assert cfg.data.hub_name and cfg.train.warmup_steps == 4000
        assert cfg.train.precision == "bf16"


def test_the_multilingual_recipe_composes_with_its_directions():
    cfg = compose_run("experiment=multi30k_multilingual")
    validate_run_config(cfg)
    assert cfg.data.pairs == ["de-en", "en-de", "fr-en", "en-fr"]
    assert cfg.model.name == "tiny" and cfg.train.max_minutes == 110
    with pytest.raises(ValueError, match="data.streaming=true reads one direction"):
        validate_run_config(compose_run("experiment=multi30k_multilingual", "data.streaming=true"))


def test_a_missing_mandatory_option_is_one_line(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "scripts/evaluate.py", f"hydra.run.dir={tmp_path}"],
        cwd=CONFIGS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "error: the option checkpoint is required: give checkpoint=..." in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_option_is_said_once_on_the_console_and_kept_in_the_run_log(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "scripts/train.py", "model.n_heads=3", f"hydra.run.dir={tmp_path}"],
        cwd=CONFIGS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    message = "model.d_model=256 is not divisible by model.n_heads=3"
    assert result.stderr.count(message) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert message in (tmp_path / "train.log").read_text()


def test_empty_tuning_lists_are_refused(tmp_path):
    from mt.commands import TuneDecodingConfig
    from mt.decoding.evaluation import tune_decoding

    with pytest.raises(ValueError, match=r"beam_sizes=\[\] is empty"):
        tune_decoding(TuneDecodingConfig(checkpoint="unused.pt", beam_sizes=[]), tmp_path)


def test_translate_refuses_an_empty_batch():
    from mt.checks import check_translate
    from mt.commands import TranslateConfig

    with pytest.raises(ValueError, match="batch_size=0 must be positive"):
        check_translate(TranslateConfig(checkpoint="x.pt", batch_size=0))
    with pytest.raises(ValueError, match="n_best=3 must be between 1 and beam_size=2"):
        check_translate(TranslateConfig(checkpoint="x.pt", beam_size=2, n_best=3))


def one_error_line(script: str, *args: str) -> str:
    """Run ``scripts/SCRIPT args``; it must fail with exit code 2 and one ``error:`` line."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, f"scripts/{script}", *args],
        cwd=CONFIGS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("train.py", ["train.max_steps=abc"], "option train.max_steps: Value 'abc'"),
        ("train.py", ["train.max_step=5"], "unknown option train.max_step"),
        ("train.py", ["+train.max_step=5"], "options cannot be added with '+'"),
        (
            "train.py",
            ["model=nosuch"],
            "model=nosuch: no such choice; the choices: base, big, small, tiny",
        ),
        ("train.py", ["data.src_lang"], "cannot read the option 'data.src_lang'"),
        ("evaluate.py", ["checkpoint=x.pt", "beam_size=[1]"], "option beam_size"),
        ("tune_decoding.py", ["checkpoint=x.pt", "beam_sizes=3"], "option beam_sizes"),
        ("translate.py", ["checkpoint=x.pt", "n_best=two"], "option n_best"),
        ("benchmark.py", ["bench.nothing=1"], "unknown option bench.nothing"),
    ],
)
def test_options_that_do_not_compose_are_one_line_and_exit_2(tmp_path, script, args, message):
    """Hydra's own report (exit 1, several lines) never reaches the user."""
    line = one_error_line(script, *args, f"hydra.run.dir={tmp_path / 'run'}")
    assert message in line and f"python {script} --cfg job" in line
    assert not (tmp_path / "run").exists()  # nothing was started


@pytest.mark.parametrize("where", ["a_file", "a_file/below", "read_only/run"])
def test_a_run_directory_that_cannot_be_written_is_refused_before_any_work(tmp_path, where):
    import os

    (tmp_path / "a_file").write_text("not a folder\n")
    (tmp_path / "read_only").mkdir()
    os.chmod(tmp_path / "read_only", 0o555)
    if where.startswith("read_only") and os.access(tmp_path / "read_only", os.W_OK):
        # root ignores permission bits: make the place unwritable another way
        where = "/proc/mt_run"
    run_dir = where if where.startswith("/") else tmp_path / where
    line = one_error_line("train.py", f"hydra.run.dir={run_dir}")
    assert line.startswith(f"error: hydra.run.dir={run_dir}: ")
    assert "is a file, not a folder" in line or "cannot write in" in line
