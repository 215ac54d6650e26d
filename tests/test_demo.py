"""``demo.py``, the README's first command, on the shipped model (a short run)."""

import re

import imageio.v2 as imageio
import pytest

import demo


def test_demo_generates_both_clips_and_reports_the_cache(tmp_path, capsys):
    out = tmp_path / "demo.gif"
    assert demo.main(["--steps", "12", "--repeats", "1", "--rel-l1-thresh", "0.3", "--teacache-rule", "fitted",
                      "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "rule=fitted" in printed
    computed = int(re.search(r"computed steps \((\d+)/12\)", printed).group(1))
    assert 3 <= computed < 12  # the first and last two always, and some skipped
    assert 20 < float(re.search(r"PSNR ([\d.]+) dB", printed).group(1)) < 200
    frames = imageio.mimread(str(out))
    assert len(frames) == 8 * 3  # 8 frames, looped 3 times
    assert frames[0].shape[:2] == (16 * 8, 2 * 16 * 8 + 16)  # two 16x16 clips upscaled 8x, a 16 px gap


def test_demo_refuses_a_prompt_outside_the_vocabulary(capsys):
    with pytest.raises(SystemExit):
        demo.main(["--prompt", "a purple hexagon dances", "--steps", "2", "--repeats", "1"])
    assert "purple" in capsys.readouterr().err
