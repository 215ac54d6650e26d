"""``demo.py``, the README's first command, on the shipped model (a short run), and its argument checks."""

import re

import imageio.v2 as imageio
import pytest

import demo
from tinyhv import DEFAULT_ASSETS, data
from tinyhv.model import NULL_TOKEN, TinyTextEncoder



def test_demo_generates_both_clips_and_reports_the_cache(tmp_path, capsys):
    out = tmp_path / "demo.gif"
    assert demo.main(["--steps", "12", "--repeats", "1", "--rel-l1-thresh", "0.3", "--teacache-rule", "fitted",
                      "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "rule=fitted" in printed
    computed = int(re.search(r"computed steps \((\d+)/12\)", printed).group(1))
    assert 2 <= computed < 12  # the first and the last step always, and some skipped
    assert 20 < float(re.search(r"PSNR ([\d.]+) dB", printed).group(1)) < 200
    frames = imageio.mimread(str(out))
    assert len(frames) == 8 * 3  # 8 frames, looped 3 times
    assert frames[0].shape[:2] == (16 * 8, 2 * 16 * 8 + 16)  # two 16x16 clips upscaled 8x, a 16 px gap
    assert f"right TeaCache): {out}" in printed  # the path written is printed


# -- bad values: a one-line argparse error (exit code 2) before any model work ------------------------------- #

class ModelWorkStarted(Exception):
    pass


@pytest.fixture
def no_model_work(monkeypatch):
    """Loading or sampling the model raises ModelWorkStarted: a check that came too late fails the test."""
    def refuse(*args, **kwargs):
        raise ModelWorkStarted

    monkeypatch.setattr(demo.TinyHunyuanVideo, "from_pretrained", classmethod(refuse))
    monkeypatch.setattr(demo.TinyHunyuanVideo, "generate", refuse)
    monkeypatch.setattr(demo, "write_video", refuse)


def _error_line(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        demo.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and ": error: " in lines[0], err  # one line, no usage page, no traceback
    return lines[0]


@pytest.mark.parametrize("argv, flag", [
    (["--steps", "0"], "--steps"),
    (["--steps", "-5"], "--steps"),
    (["--steps", "2.5"], "--steps"),
    (["--repeats", "0"], "--repeats"),
    (["--threads", "0"], "--threads"),
    (["--seed", str(2 ** 64)], "--seed"),
    (["--out", "results/x.txt"], "--out"),
    (["--out", "results/x"], "--out"),
    (["--weights", "/nonexistent.safetensors"], "--weights"),
    (["--prompt", "a red circle moves left on a purple background"], "--prompt"),
    (["--prompt", "a red circle does not move left"], "--prompt"),
    (["--prompt", "a red circle"], "--prompt"),
])
def test_demo_refuses_a_bad_value_before_any_model_work(argv, flag, no_model_work, capsys):
    assert f"argument {flag}: " in _error_line(argv, capsys)


def test_the_refusals_above_can_fail(no_model_work):
    """The same checks let good values through, to the (refused) model work."""
    with pytest.raises(ModelWorkStarted):
        demo.main(["--steps", "1", "--repeats", "1", "--threads", "1", "--seed", "-1", "--out", "x.GIF",
                   "--weights", str(DEFAULT_ASSETS), "--prompt", "Small blue square, up; light!"])


def test_demo_names_the_missing_weights_file_or_its_sidecar(tmp_path, no_model_work, capsys):
    missing = tmp_path / "nowhere.safetensors"
    line = _error_line(["--weights", str(missing)], capsys)
    assert str(missing) in line and "nowhere.json" not in line

    weights = tmp_path / "mine.safetensors"
    weights.write_bytes(DEFAULT_ASSETS.read_bytes())
    line = _error_line(["--weights", str(weights)], capsys)
    assert str(tmp_path / "mine.json") in line  # where from_pretrained looks for the config

    (tmp_path / "mine.json").write_text(DEFAULT_ASSETS.with_suffix(".json").read_text())
    with pytest.raises(ModelWorkStarted):
        demo.main(["--weights", str(weights)])


def test_demo_refuses_an_mp4_it_could_not_write(no_model_work, monkeypatch, capsys):
    find_spec = demo.importlib.util.find_spec
    monkeypatch.setattr(demo.importlib.util, "find_spec",
                        lambda name, *a: None if name == "imageio_ffmpeg" else find_spec(name, *a))
    assert "imageio-ffmpeg" in _error_line(["--out", "x.mp4"], capsys)
    with pytest.raises(ModelWorkStarted):
        demo.main(["--out", "x.gif"])


def test_demo_refuses_a_prompt_outside_the_vocabulary(no_model_work, capsys):
    line = _error_line(["--prompt", "a purple hexagon dances"], capsys)
    assert "purple" in line and "hexagon" in line and "dances" in line and "circle" in line


# -- complete_prompt ------------------------------------------------------------------------------------------ #

def test_complete_prompt_completes_valid_prompts():
    assert data.complete_prompt("a red circle moves left") == "a big red circle moves left on a dark background"
    assert data.complete_prompt("Left, circle. RED!") == "a big red circle moves left on a dark background"
    assert data.complete_prompt("small blue square up light") == "a small blue square moves up on a light background"
    for a in data.all_attributes():
        assert data.complete_prompt(a.prompt) == a.prompt


@pytest.mark.parametrize("prompt, unknown", [
    ("a red circle moves left on a purple background", ["purple"]),  # was: silently 'dark'
    ("a red circle does not move left", ["does", "not", "move"]),  # was: silently 'moves left'
    ("a red circle moves leftwards", ["leftwards"]),
    ("<pad> red circle left", ["pad"]),
])
def test_complete_prompt_rejects_words_outside_the_vocabulary(prompt, unknown):
    with pytest.raises(ValueError) as e:
        data.complete_prompt(prompt)
    message = str(e.value)
    assert "\n" not in message and f"{unknown}" in message
    assert message.endswith("known: " + " ".join(w for w in data.VOCAB if not w.startswith("<")))


def test_complete_prompt_words_the_rejection_as_the_text_encoder_does():
    prompt = "a big red circle moves left on a purple background"  # the grammar's shape: the encoder reads it
    encoder = TinyTextEncoder(["<pad>", NULL_TOKEN, *data.VOCAB[1:]])
    with pytest.raises(ValueError) as by_encoder:
        encoder.tokenize([prompt])
    with pytest.raises(ValueError) as by_complete:
        data.complete_prompt(prompt)
    assert str(by_complete.value) == str(by_encoder.value)


# -- threads ------------------------------------------------------------------------------------------------- #

def test_demo_runs_on_one_thread_unless_asked(no_model_work, monkeypatch):
    """One thread by default: no OpenMP worker to spin-wait for when another process is busy on the cores."""
    threads = []
    monkeypatch.setattr(demo.torch, "set_num_threads", threads.append)
    for argv, expected in (([], [1]), (["--threads", "2"], [1, 2])):
        with pytest.raises(ModelWorkStarted):
            demo.main(argv)
        assert threads == expected
